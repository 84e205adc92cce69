"""Tokens on disk for CLIs: one JSON file in the user's config directory, 0600.

Why a lock: refresh tokens rotate, and Keyfob revokes the whole family when a used one
comes back. Two runs of the same CLI refreshing at once would do exactly that, so a
refresh holds an exclusive lock on a sibling file, re-reads the cache (the other run may
have refreshed already) and only then asks Keyfob.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import platformdirs

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one process at a time is assumed
    fcntl = None  # type: ignore[assignment]


@dataclass
class Tokens:
    access_token: str
    refresh_token: str | None
    #: Seconds since the epoch.
    expires_at: float
    scope: str = ""

    def __repr__(self) -> str:  # never print a token by accident
        return f"Tokens(expires_at={self.expires_at!r}, scope={self.scope!r})"


def default_path() -> Path:
    return Path(platformdirs.user_config_dir("keyfob", appauthor=False)) / "tokens.json"


class TokenCache:
    """Tokens per (issuer, client_id) in one file, created 0600 from its first byte."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # a damaged cache means signing in again, not a crash
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Tokens | None:
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            return Tokens(**entry)
        except TypeError:
            return None

    def set(self, key: str, tokens: Tokens | None) -> None:
        data = self._read()
        if tokens is None:
            data.pop(key, None)
        else:
            data[key] = asdict(tokens)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=self.path.parent)  # 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock across processes (held while refreshing)."""
        if fcntl is None:
            yield
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class MemoryCache(TokenCache):
    """Tokens in memory only (servers, tests): nothing written anywhere."""

    def __init__(self) -> None:
        self._data: dict[str, Tokens] = {}

    def get(self, key: str) -> Tokens | None:
        return self._data.get(key)

    def set(self, key: str, tokens: Tokens | None) -> None:
        if tokens is None:
            self._data.pop(key, None)
        else:
            self._data[key] = tokens

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        yield
