"""A PostgreSQL server of a test's own (initdb into a temporary folder, on a free loopback
port), so that a test can crash it with kill -9 and start it again without touching the
machine's shared server. PostgreSQL refuses to run as root: as root, it runs as the
``postgres`` user."""

from __future__ import annotations

import contextlib
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


def _state(pid: int) -> str:
    """A process's state letter from /proc ("" when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2 :].split()[0]


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

    def pause_wal_writer(self) -> None:
        """Stop the WAL writer (SIGSTOP): asynchronous commits from now on stay in shared
        memory (until the WAL buffers fill), so that a crash is certain to undo them.
        Without it the writer writes out every completed page, and a crash only loses the
        last partial page, which may hold no reservation at all."""
        for pid, cmdline in self._children():
            if b"walwriter" in cmdline:
                os.kill(pid, signal.SIGSTOP)
                return
        raise AssertionError("no WAL writer found")

    def _children(self) -> list[tuple[int, bytes]]:
        """The server's processes but the postmaster: (pid, command line). Each is a
        session of its own (PostgreSQL calls setsid), so no process group holds them."""
        assert self.proc is not None
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
                cmdline = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == self.proc.pid:
                found.append((int(d.name), cmdline))
        return found

    def crash(self) -> None:
        """kill -9 of every PostgreSQL process at once: what is in its shared memory (the
        WAL not yet written out) is gone; the next start recovers from the WAL on disk."""
        assert self.proc is not None
        children = self._children()
        os.kill(self.proc.pid, signal.SIGKILL)
        for pid, _ in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None
        for pid, _ in children:  # gone (their parent, init, reaps them) before a restart
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X", ""):
                assert time.monotonic() < deadline, f"server process {pid} survived SIGKILL"
                time.sleep(0.01)

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
