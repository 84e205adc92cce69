"""The upstream every target talks to: nginx answering fixed OpenAI-shaped bodies.

Why nginx: it answers in tens of microseconds, so whatever a proxy adds is visible, and
it is the same process for every target in a run. The config is generated into the run's
temp dir and nginx runs in the foreground with its own pid and log files there.

Two paths, because nginx cannot branch on a JSON body: ``/v1/chat/completions`` answers a
chat completion; ``/stream/v1/chat/completions`` answers an SSE stream (role chunk, content
chunks, finish chunk, usage chunk, ``[DONE]``). Each target is pointed at one or the other.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs

MODEL = "gpt-4o-mini"
CREATED = 1_750_000_000
USAGE = {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}
WORDS = ["Hello", " from", " the", " benchmark", " upstream", "."]

CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": CREATED,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "".join(WORDS)},
        }
    ],
    "usage": USAGE,
}
MODELS = {
    "object": "list",
    "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}],
}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def sse_body() -> str:
    events: list[dict[str, Any]] = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": w}) for w in WORDS]
    events.append(_chunk({}, "stop"))
    events.append(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [],
            "usage": USAGE,
        }
    )
    lines = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events]
    return "".join(lines) + "data: [DONE]\n\n"


def _nginx_string(text: str) -> str:
    """A single-quoted nginx string (nginx turns \\n back into a newline)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_conf(workdir: Path, port: int) -> str:
    chat = json.dumps(CHAT_COMPLETION, separators=(",", ":"))
    models = json.dumps(MODELS, separators=(",", ":"))
    temp = "\n".join(
        f"    {k}_temp_path {workdir / ('nginx-' + k)};"
        for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx-error.log"} warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{temp}
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 {_nginx_string(chat)};
        }}
        location = /stream/v1/chat/completions {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            return 200 {_nginx_string(sse_body())};
        }}
        location ~ /v1/models$ {{
            default_type application/json;
            return 200 {_nginx_string(models)};
        }}
    }}
}}
"""


@dataclass
class Upstream:
    port: int
    proc: procs.Proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.stop()


def start_nginx(workdir: Path, cpus: set[int]) -> Upstream:
    # Debian installs nginx in sbin, which is not on every user's PATH
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        raise SystemExit("nginx not found: apt-get install -y nginx")
    port = procs.free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port))
    proc = procs.start(
        "nginx",
        [
            binary,
            "-p",
            str(workdir),
            "-c",
            str(conf),
            "-e",
            str(workdir / "nginx-error.log"),
            "-g",
            "daemon off; master_process on;",
        ],
        workdir / "nginx.out",
        cpus=cpus,
    )
    procs.wait_http(f"http://127.0.0.1:{port}/v1/models", proc, timeout_s=15)
    return Upstream(port, proc)
