"""Starting, watching and stopping the processes a benchmark run owns.

Why its own module: every process is started in a new session (its own process group) so
that stopping it also stops anything it forked, and its CPU time and memory are read from
/proc, the one source that works the same for nginx, uvicorn and LiteLLM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_split() -> tuple[set[int], set[int]]:
    """(CPUs for load generator + upstream, CPUs for the server under test).

    On two or more cores the server gets a core of its own, so "per core" means one core
    and the load generator never steals the server's time slice. On one core, no pinning.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return set(cpus[:-1]), {cpus[-1]}


@dataclass
class Proc:
    """One started process (the leader of its own process group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the whole group, then SIGKILL what is left."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        # children that outlived the leader (a forked worker) share the group id
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def start(
    name: str,
    argv: list[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    cpus: Iterable[int] | None = None,
) -> Proc:
    cpu_set = set(cpus) if cpus else None

    def pin() -> None:
        if cpu_set:
            os.sched_setaffinity(0, cpu_set)

    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        popen = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env or os.environ),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=pin,
        )
    finally:
        log.close()
    return Proc(name, popen, log_path)


def wait_http(url: str, proc: Proc, timeout_s: float = 60.0) -> None:
    """Wait until ``url`` answers anything below 500 (or fail with the process's log)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited ({proc.popen.returncode}) before {url} "
                f"answered:\n{proc.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = str(exc)
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(
        f"{proc.name}: {url} did not answer in {timeout_s}s ({last}):\n{proc.log_tail()}"
    )


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tasks:
        with contextlib.suppress(OSError):
            kids += [int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return kids


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def listening_pid(root_pid: int, port: int) -> int:
    """The process in ``root_pid``'s tree that owns the listening socket on ``port``:
    the worker whose memory and CPU we report (LiteLLM's CLI may fork one)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f[9])
    for pid in tree(root_pid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return pid
    return root_pid


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS")


def peak_rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmHWM")


def wait_idle(pid: int, timeout_s: float = 60.0, interval_s: float = 0.3) -> float:
    """Wait until ``pid`` uses under 10% of a core (a server still draining calls a client
    gave up on would otherwise steal the next measurement's time); returns seconds waited."""
    if not pid:
        return 0.0
    start = time.monotonic()
    try:
        before = cpu_seconds(pid)
        while time.monotonic() - start < timeout_s:
            time.sleep(interval_s)
            now = cpu_seconds(pid)
            if now - before < 0.1 * interval_s:
                break
            before = now
    except OSError:
        pass
    return time.monotonic() - start


def cpu_seconds_of(pids: Iterable[int]) -> float:
    """CPU seconds of several processes (one that exited meanwhile counts as 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(pid)
    return total


def wait_workers(root_pid: int, workers: int, timeout_s: float = 120.0) -> None:
    """Wait until ``root_pid`` (a supervisor) has at least ``workers`` children."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(_children(root_pid)) >= workers:
            time.sleep(2.0)  # each worker opens its pools and runs its checks at start
            return
        time.sleep(0.2)
    raise TimeoutError(f"{workers} workers of {root_pid} did not start in {timeout_s}s")


def postgres_pids(db_name: str) -> list[int]:
    """PostgreSQL's processes that work for ``db_name``: its backends and the server's
    own background processes (WAL writer, checkpointer...), not other databases'
    backends. Found by their process titles (``postgres: 15/main: USER DB ADDR STATE``),
    so this needs the server on this machine and /proc readable (root, or its user)."""
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        if not title.startswith("postgres: "):
            continue
        words = title.split(": ", 2)[-1].split()
        is_backend = len(words) >= 3 and "(" in words[2]
        if not is_backend or words[1] == db_name:
            pids.append(int(entry))
    return pids


def cpu_snapshot(pids: Iterable[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            out[pid] = cpu_seconds(pid)
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots; a process born in between counts whole (one that
    died in between is lost: pools keep their connections, so that is rare)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())
