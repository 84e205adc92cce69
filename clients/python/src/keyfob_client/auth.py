"""Auth for httpx clients (sync and async; ``requests_auth.py`` for requests): the bearer
token on every request, refreshed before expiry, and once more after a 401 (revoked or
expired meanwhile). Any ``Authorization`` or ``x-api-key`` a caller set (an SDK's
placeholder key) is replaced.

Why a class per module: recent ``openai`` and ``anthropic`` SDKs ship on ``httpx2``, a
separate package whose ``Client`` accepts only its own ``Auth`` subclasses; the same flow
is built for whichever module an SDK's client class comes from.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import AsyncGenerator, Generator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from keyfob_client.client import Keyfob


def _set(headers: Any, token: str) -> None:
    headers["Authorization"] = f"Bearer {token}"
    if "x-api-key" in headers:
        del headers["x-api-key"]


@functools.cache
def auth_class(module: ModuleType) -> type[Any]:
    """A ``module.Auth`` subclass carrying Keyfob's token (``module``: httpx or httpx2)."""

    class KeyfobAuth(module.Auth):  # type: ignore[name-defined,misc]
        def __init__(self, keyfob: Keyfob) -> None:
            self.keyfob = keyfob

        def sync_auth_flow(self, request: Any) -> Generator[Any, Any]:
            _set(request.headers, self.keyfob.access_token())
            response = yield request
            if response.status_code == 401:
                _set(request.headers, self.keyfob.access_token(force_refresh=True))
                yield request

        async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
            # The token logic is synchronous (file lock, one refresh at a time): off the loop.
            _set(request.headers, await asyncio.to_thread(self.keyfob.access_token))
            response = yield request
            if response.status_code == 401:
                token = await asyncio.to_thread(self.keyfob.access_token, force_refresh=True)
                _set(request.headers, token)
                yield request

    KeyfobAuth.__module__ = __name__
    return KeyfobAuth


def auth_for_client(client_class: type, keyfob: Keyfob) -> Any:
    """The auth object an SDK's ``DefaultHttpxClient`` (or any httpx-like client) takes."""
    for cls in client_class.__mro__:
        root = cls.__module__.split(".")[0]
        if cls.__name__ in ("Client", "AsyncClient") and root.startswith("httpx"):
            return auth_class(importlib.import_module(root))(keyfob)
    return auth_class(httpx)(keyfob)


#: For ``httpx.Client(auth=KeyfobAuth(kf))`` and ``httpx.AsyncClient``.
KeyfobAuth = auth_class(httpx)
