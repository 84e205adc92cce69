"""Test helpers: real processes on free loopback ports (Keyfob, fakellm) and seeding."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

#: Runs a test on the personal SQLite store and on PostgreSQL, a database of its own
#: (the ``database_url`` fixture of conftest.py: None for SQLite, else the URL).
both_databases = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

#: ~300 words: fakellm streams them 10 ms apart, about three seconds in all.
LONG_STORY = "Once upon a time " + " ".join(f"w{i}" for i in range(300))

FAKELLM_YAML = """\
version: 1
defaults:
  fallback: deterministic_echo
rules:
  - name: weather_tool
    when:
      messages_contain: "weather in paris"
    respond:
      tool_calls:
        - name: get_weather
          arguments: {city: "Paris"}
  - name: long_story
    when:
      messages_contain: "tell a long story"
    respond:
      content: "{LONG_STORY}"
  - name: greeting
    when:
      messages_contain: "hello"
    respond:
      content: "Hi there! This is a mock response from fakellm."
  - name: upstream_500
    when:
      header.x-test-scenario: server_error
    respond:
      status: 500
      error: "Internal error (mock)"
  - name: rate_limit_scenario
    when:
      header.x-test-scenario: rate_limit
    respond:
      status: 429
      error: "Rate limit exceeded (mock)"
"""
FAKELLM_YAML = FAKELLM_YAML.replace("{LONG_STORY}", LONG_STORY)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout}s: {last}")


@dataclass
class FakeLLM:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def request_count(self) -> int:
        stats = httpx.get(f"http://127.0.0.1:{self.port}/_fakellm/stats", timeout=5).json()
        return int(stats["total_requests"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_fakellm(workdir: Path, yaml_text: str = FAKELLM_YAML) -> FakeLLM:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "fakellm.yaml"
    config.write_text(yaml_text)
    port = free_port()
    with open(workdir / "fakellm.log", "wb") as log:  # the child keeps its own handle
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fakellm.cli",
                "serve",
                "--port",
                str(port),
                "--config",
                str(config),
            ],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FAKELLM_CONFIG": str(config)},
        )
    wait_http(f"http://127.0.0.1:{port}/_fakellm/stats", proc=proc)
    return FakeLLM(port, proc, workdir)


def keyfob_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYFOB_")}
    env.update({"KEYFOB_DATA_DIR": str(data_dir), "KEYFOB_LOG_LEVEL": "warning"}, **extra)
    return env


def cli(
    data_dir: Path, *args: str, input_text: str | None = None, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``keyfob ARGS`` as a person would, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-m", "keyfob", *args],
        input=input_text,
        capture_output=True,
        text=True,
        env=keyfob_env(data_dir, COLUMNS="200", **env),
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"keyfob {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


@dataclass
class KeyfobServer:
    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> KeyfobServer:
        with open(self.data_dir / f"server-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "keyfob", "serve", "--port", str(self.port)],
                env=keyfob_env(self.data_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_http(f"{self.url}/healthz", proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return (self.data_dir / f"server-{self.port}.log").read_text(errors="replace")


async def grant_token(
    store: Any,
    *,
    user_id: str,
    models: list[str],
    cap_micro_usd: int,
    policy_json: str | None = None,
    client_name: str = "test app",
    timezone: str = "UTC",
) -> dict[str, Any]:
    """An app, its grant and an access token, straight in the store (for tests of the
    gateway that need no OAuth flow). One place, so every test mints the same way."""
    from keyfob.store.records import Token
    from keyfob.tokens import Kind, hash_token, new_id, new_token

    client = await store.clients.add(
        name=client_name, redirect_uris=["http://127.0.0.1/cb"], is_public=True, secret_hash=None
    )
    grant = await store.grants.upsert(
        user_id=user_id,
        client_id=client.id,
        models=models,
        cap_micro_usd=cap_micro_usd,
        timezone=timezone,
        policy_json=policy_json,
    )
    token = new_token(Kind.ACCESS)
    now = time.time()
    await store.tokens.save(
        Token(
            hash_token(token),
            "access",
            grant.id,
            client.id,
            new_id(),
            "",
            None,
            now,
            now + 3600,
            None,
            None,
        )
    )
    return {"token": token, "grant_id": grant.id, "client_id": client.id}


async def _mint(
    data_dir: Path, models: list[str], cap_micro_usd: int, client_name: str
) -> dict[str, Any]:
    """Owner's app + grant + access token in the data dir's store."""
    from keyfob.settings import Settings
    from keyfob.store import Store

    store = await Store.open(Settings(data_dir=data_dir).effective_database_url)
    try:
        owner = await store.users.owner()
        assert owner is not None, "run `keyfob init` first"
        return await grant_token(
            store,
            user_id=owner.id,
            models=models,
            cap_micro_usd=cap_micro_usd,
            client_name=client_name,
            timezone=owner.timezone,
        )
    finally:
        await store.close()


def mint_token(
    data_dir: Path, models: list[str], cap_micro_usd: int, client_name: str = "test app"
) -> dict[str, Any]:
    return asyncio.run(_mint(data_dir, models, cap_micro_usd, client_name))


async def _ledger(data_dir: Path) -> list[dict[str, Any]]:
    from keyfob.settings import Settings
    from keyfob.store import Store

    store = await Store.open(Settings(data_dir=data_dir).effective_database_url)
    try:
        return [e.__dict__ for e in await store.ledger.entries(limit=100000)]
    finally:
        await store.close()


def ledger_rows(data_dir: Path, settle_within_s: float = 1.0) -> list[dict[str, Any]]:
    """The ledger as another process (the CLI) reads it.

    The server writes its rows in batches (``store/metering/writeback.py``): another process
    sees a call's row up to a batch interval (10 ms) after the call was decided, and its
    final state up to an interval after the call ended. So this reads until two reads in a
    row agree and no row is ``reserved``, for at most ``settle_within_s``; a row that stays
    reserved (a call in flight, a dead one) is returned as it is."""
    deadline = time.monotonic() + settle_within_s
    previous: list[dict[str, Any]] | None = None
    time.sleep(0.03)
    while True:
        rows = asyncio.run(_ledger(data_dir))
        settled = all(r["status"] != "reserved" for r in rows)
        if (settled and rows == previous) or time.monotonic() > deadline:
            return rows
        previous = rows
        time.sleep(0.03)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
