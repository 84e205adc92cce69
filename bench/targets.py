"""The systems under test, each started the same way and described by one ``Target``.

Why one shape for all: the load module only needs a URL, headers and a body per call
kind, and the report only needs a pid to read CPU and memory from, so direct, the bare
proxy, Keyfob and LiteLLM are measured by exactly the same code.

Model names differ per target because each routes differently: nginx and the bare proxy
route by path (``/stream/...`` answers SSE), Keyfob by ``PROVIDER/MODEL`` (two providers,
``nginx`` and ``nginxs``, linked to the two upstream paths), LiteLLM by a model alias.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.upstream import MODEL, Upstream

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
#: Pinned so a run is repeatable; its own venv keeps its pins out of the project's.
#: 1.108.7: the newest 1.108.x whose ``litellm-proxy-extras`` pin resolved when this was
#: written (1.108.8+ pinned extras releases the index did not have).
LITELLM_SPEC = "litellm[proxy]==1.108.7"
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
LITELLM_MASTER_KEY = "sk-bench-master-key"
UPSTREAM_KEY = "sk-bench-upstream-key"
CAP_MICRO_USD = 10**15  # no allowance refusal during a run; the reservation still happens
PRICE_MICRO_USD_PER_MTOK = (150_000, 600_000)  # gpt-4o-mini list price, fixed for the run


@dataclass
class Target:
    """What the load generator needs to call one system, and whom to measure."""

    name: str
    base_url: str
    headers: dict[str, str]
    chat_path: str
    chat_model: str
    stream_path: str
    stream_model: str
    proc: procs.Proc | None = None
    port: int = 0
    #: the process owning the listening socket (the worker we measure)
    worker_pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self, stream: bool) -> bytes:
        payload: dict[str, Any] = {
            "model": self.stream_model if stream else self.chat_model,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
            "max_tokens": 64,
        }
        if stream:
            payload["stream"] = True
        return json.dumps(payload, separators=(",", ":")).encode()

    def url(self, stream: bool) -> str:
        return self.base_url + (self.stream_path if stream else self.chat_path)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def direct(upstream: Upstream) -> Target:
    """The floor: the load generator talks to nginx itself (no process of ours to measure)."""
    return Target(
        "direct",
        upstream.url,
        {},
        "/v1/chat/completions",
        MODEL,
        "/stream/v1/chat/completions",
        MODEL,
    )


def bare(upstream: Upstream, workdir: Path, cpus: set[int]) -> Target:
    port = procs.free_port()
    proc = procs.start(
        "bare",
        [sys.executable, "-m", "bench.bare_proxy", "--port", str(port), "--upstream", upstream.url],
        workdir / "bare.log",
        cwd=REPO_ROOT,
        cpus=cpus,
    )
    t = Target(
        "bare",
        f"http://127.0.0.1:{port}",
        {},
        "/v1/chat/completions",
        MODEL,
        "/stream/v1/chat/completions",
        MODEL,
        proc,
        port,
    )
    procs.wait_http(t.base_url + "/v1/models", proc)
    t.worker_pid = procs.listening_pid(proc.pid, port)
    return t


# --- Keyfob, personal mode on SQLite -------------------------------------------------------


def keyfob_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYFOB_")}
    env.update(KEYFOB_DATA_DIR=str(data_dir), KEYFOB_LOG_LEVEL="warning")
    return env


async def _seed_keyfob(data_dir: Path, upstream: Upstream, refresh_chains: int) -> dict[str, Any]:
    """Link the two upstream paths as providers, price the model, and mint credentials
    straight into the store (as tests/support.py does): an access token for the gateway
    and ``refresh_chains`` refresh tokens, each the head of its own rotation family."""
    from keyfob.context import Keyfob
    from keyfob.providers.linking import link_provider
    from keyfob.settings import Settings
    from keyfob.store.records import Token
    from keyfob.tokens import Kind, hash_token, new_id, new_token

    kf = await Keyfob.open(Settings(data_dir=data_dir))
    try:
        owner = await kf.store.users.owner()
        assert owner is not None, "keyfob init did not create the owner"
        for name, path in (("nginx", "/v1"), ("nginxs", "/stream/v1")):
            p = await link_provider(
                kf,
                user_id=owner.id,
                name=name,
                kind="openai_compatible",
                base_url=upstream.url + path,
                api_key=UPSTREAM_KEY,
                models=[MODEL],
            )
            await kf.store.providers.set_price(
                p.id,
                MODEL,
                input_micro_usd_per_mtok=PRICE_MICRO_USD_PER_MTOK[0],
                output_micro_usd_per_mtok=PRICE_MICRO_USD_PER_MTOK[1],
            )
        client = await kf.store.clients.add(
            name="bench app",
            redirect_uris=["http://127.0.0.1/cb"],
            is_public=True,
            secret_hash=None,
        )
        grant = await kf.store.grants.upsert(
            user_id=owner.id,
            client_id=client.id,
            models=[f"nginx/{MODEL}", f"nginxs/{MODEL}"],
            cap_micro_usd=CAP_MICRO_USD,
            timezone=owner.timezone,
        )
        now = time.time()
        access = new_token(Kind.ACCESS)
        refresh = [new_token(Kind.REFRESH) for _ in range(refresh_chains)]
        await kf.store.tokens.save(
            Token(
                hash_token(access),
                "access",
                grant.id,
                client.id,
                new_id(),
                "",
                None,
                now,
                now + 24 * 3600,
                None,
                None,
            ),
            *(
                Token(
                    hash_token(r),
                    "refresh",
                    grant.id,
                    client.id,
                    new_id(),
                    "",
                    None,
                    now,
                    now + 24 * 3600,
                    None,
                    None,
                )
                for r in refresh
            ),
        )
        return {
            "access_token": access,
            "refresh_tokens": refresh,
            "client_id": client.id,
            "grant_id": grant.id,
        }
    finally:
        await kf.close()


def keyfob(upstream: Upstream, workdir: Path, cpus: set[int], refresh_chains: int) -> Target:
    data_dir = workdir / "keyfob-data"
    data_dir.mkdir()
    env = keyfob_env(data_dir)
    subprocess.run(
        [sys.executable, "-m", "keyfob", "init", "--username", "bench"],
        env={**env, "KEYFOB_PASSWORD": secrets.token_urlsafe(24)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    seeded = asyncio.run(_seed_keyfob(data_dir, upstream, refresh_chains))
    port = procs.free_port()
    proc = procs.start(
        "keyfob",
        [sys.executable, "-m", "keyfob", "serve", "--port", str(port)],
        workdir / "keyfob.log",
        env=env,
        cpus=cpus,
    )
    t = Target(
        "keyfob",
        f"http://127.0.0.1:{port}",
        {"Authorization": f"Bearer {seeded['access_token']}"},
        "/v1/chat/completions",
        f"nginx/{MODEL}",
        "/v1/chat/completions",
        f"nginxs/{MODEL}",
        proc,
        port,
        extra=seeded,
    )
    procs.wait_http(t.base_url + "/healthz", proc)
    t.worker_pid = procs.listening_pid(proc.pid, port)
    return t


# Hosted mode (PostgreSQL + Redis) does not exist yet. When it does, add
# ``keyfob_hosted(upstream, workdir, cpus)`` here: same seeding with KEYFOB_MODE=hosted,
# KEYFOB_DATABASE_URL and KEYFOB_REDIS_URL (see `make services`), and list it in
# bench.__main__.TARGETS. The report already prints a row for it.
HOSTED_SLOT = "keyfob-hosted (PostgreSQL + Redis): not measured, hosted mode does not exist yet"


# --- LiteLLM proxy, no database --------------------------------------------------------------


def ensure_litellm() -> Path:
    """Create bench/.venv-litellm with the pinned LiteLLM on first use; returns its CLI."""
    cli = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / "bench-spec.txt"
    if cli.exists() and stamp.exists() and stamp.read_text().strip() == LITELLM_SPEC:
        return cli
    print(
        f"creating {LITELLM_VENV.relative_to(REPO_ROOT)} with {LITELLM_SPEC} (first use only)...",
        flush=True,
    )
    if not (LITELLM_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run(
        [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", LITELLM_SPEC],
        check=True,
    )
    stamp.write_text(LITELLM_SPEC + "\n")
    return cli


def litellm_config(upstream: Upstream) -> str:
    entries = []
    for alias, path in ((MODEL, "/v1"), (MODEL + "-stream", "/stream/v1")):
        entries.append(f"""\
  - model_name: {alias}
    litellm_params:
      model: openai/{MODEL}
      api_base: {upstream.url}{path}
      api_key: {UPSTREAM_KEY}""")
    return (
        "model_list:\n"
        + "\n".join(entries)
        + f"""
general_settings:
  master_key: {LITELLM_MASTER_KEY}
litellm_settings:
  drop_params: true
  set_verbose: false
  json_logs: false
"""
    )


def litellm(upstream: Upstream, workdir: Path, cpus: set[int]) -> Target:
    cli = ensure_litellm()
    config = workdir / "litellm.yaml"
    config.write_text(litellm_config(upstream))
    port = procs.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM", "DATABASE_URL"))}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        DISABLE_ADMIN_UI="True",
        VIRTUAL_ENV=str(LITELLM_VENV),
        PATH=f"{cli.parent}:{env.get('PATH', '')}",
    )
    proc = procs.start(
        "litellm",
        [
            str(cli),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        workdir / "litellm.log",
        env=env,
        cwd=workdir,
        cpus=cpus,
    )
    t = Target(
        "litellm",
        f"http://127.0.0.1:{port}",
        {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"},
        "/v1/chat/completions",
        MODEL,
        "/v1/chat/completions",
        MODEL + "-stream",
        proc,
        port,
    )
    procs.wait_http(t.base_url + "/health/liveliness", proc, timeout_s=180)
    t.worker_pid = procs.listening_pid(proc.pid, port)
    return t
