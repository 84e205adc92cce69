"""Test helpers for hosted mode: a fresh PostgreSQL database, the shared secrets, and
``keyfob serve --mode hosted`` processes on free loopback ports."""

from __future__ import annotations

import asyncio
import base64
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from tests.support import free_port, keyfob_env, wait_http

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def new_master_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_database(prefix: str = "keyfob_hosted") -> Iterator[str]:
    """A new, empty PostgreSQL database (a plain postgresql:// URL), dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(5)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Deployment:
    """What every process of one hosted deployment shares."""

    database_url: str
    public_url: str
    master_key: str = field(default_factory=new_master_key)
    session_keys: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    extra: dict[str, str] = field(default_factory=dict)

    def env(self, data_dir: Path, **more: str) -> dict[str, str]:
        return keyfob_env(
            data_dir,
            KEYFOB_MODE="hosted",
            KEYFOB_DATABASE_URL=self.database_url,
            KEYFOB_MASTER_KEY=self.master_key,
            KEYFOB_SESSION_KEYS=self.session_keys,
            KEYFOB_PUBLIC_URL=self.public_url,
            # the test upstreams listen on loopback: a deliberately private upstream
            **{"KEYFOB_UPSTREAM_ALLOW_PRIVATE": "127.0.0.0/8", **self.extra, **more},
        )

    def cli(self, data_dir: Path, *args: str, check: bool = True, **more: str) -> str:
        data_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "keyfob", *args],
            capture_output=True,
            text=True,
            env=self.env(data_dir, COLUMNS="200", **more),
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"keyfob {args} failed: {result.stdout}\n{result.stderr}")
        return result.stdout + result.stderr


@dataclass
class HostedProcess:
    deployment: Deployment
    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    more: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"serve-{self.port}.log"

    def launch(self) -> HostedProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "keyfob", "serve", "--port", str(self.port)],
                env=self.deployment.env(self.data_dir, **self.more),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait(self, timeout: float = 60.0) -> HostedProcess:
        wait_http(f"{self.url}/livez", timeout=timeout, proc=self.proc)
        return self

    def start(self) -> HostedProcess:
        return self.launch().wait()

    def exit_code(self, timeout: float = 60.0) -> int:
        """For a process expected to refuse to start: its exit code (killed, and the
        test failed, if it keeps running)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running after {timeout} s:\n{self.log()}") from None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
