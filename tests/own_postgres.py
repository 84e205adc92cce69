"""A PostgreSQL server of a test's own (initdb into a temporary folder, on a free loopback
port), so that a test can crash it with kill -9 and start it again without touching the
machine's shared server. PostgreSQL refuses to run as root: as root, it runs as the
``postgres`` user."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg

from tests.support import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
#: initdb without syncing its files (a test's throwaway cluster).
FAST = ("--no-sync", "--no-instructions")


def available() -> bool:
    if not (BIN / "initdb").exists():
        return False
    if os.geteuid() != 0:
        return True
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return True


def _user() -> str | None:
    """Whom the server runs as: ``postgres`` when this is root (the server's own rule)."""
    return "postgres" if os.geteuid() == 0 else None


class OwnPostgres:
    """Its folder is made outside pytest's temporary folders, which only root may enter
    (the server runs as ``postgres``)."""

    def __init__(self, settings: dict[str, str]) -> None:
        root = Path(tempfile.mkdtemp(prefix="keyfob-own-pg-"))
        self.root = root
        self.dir = root / "pgdata"
        self.port = free_port()
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        subprocess.run(
            [str(BIN / "initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres", *FAST],
            user=_user(),
            check=True,
            capture_output=True,
            timeout=120,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = {"listen_addresses": "127.0.0.1", "port": str(self.port)} | self.settings
        opts["unix_socket_directories"] = str(self.dir)
        args = [a for k, v in opts.items() for a in ("-c", f"{k}={v}")]
        with (self.root / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "postgres"), "-D", str(self.dir), *args],
                user=_user(),  # a child of this process: reaped here, never a zombie
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # its own process group: a crash takes every process
            )
        deadline = time.monotonic() + 60
        while True:
            where = ("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q")
            ready = subprocess.run(
                [str(BIN / "pg_isready"), *where],
                check=False,
            )
            if ready.returncode == 0:
                return
            if self.proc.poll() is not None:
                log = (self.root / "server.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"PostgreSQL did not start: {log}")
            assert time.monotonic() < deadline, "PostgreSQL not ready in 60 s"
            time.sleep(0.05)

    def crash(self) -> None:
        """kill -9 of every PostgreSQL process at once: what is in its shared memory (the
        WAL not yet written out) is gone; the next start recovers from the WAL on disk."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        """Stop it (as a crash: nothing of it is kept) and remove its folder."""
        if self.proc is not None:
            self.crash()
        shutil.rmtree(self.root, ignore_errors=True)

    async def create_database(self, name: str) -> str:
        """A new database: its SQLAlchemy URL."""
        admin = await asyncpg.connect(self.url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"
