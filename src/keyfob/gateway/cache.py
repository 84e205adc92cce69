"""Small per-process caches for the hot path (grants, providers, keys, prices, adapters).

Each entry lives a short time so changes made by another process (the CLI, another
gateway) show up quickly. Caching is safe for money and revocation because the store
re-checks the token and grant atomically inside every reservation.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class TTLCache(Generic[V]):
    """A dict with per-entry expiry (monotonic clock) and a size bound."""

    def __init__(self, ttl_s: float, max_items: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._items: dict[Hashable, tuple[float, V]] = {}

    def get(self, key: Hashable) -> V | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            self._items.pop(key, None)
            return None
        return hit[1]

    def put(self, key: Hashable, value: V) -> None:
        if len(self._items) >= self.max_items:
            now = time.monotonic()
            self._items = {k: v for k, v in self._items.items() if v[0] >= now}
            if len(self._items) >= self.max_items:
                self._items.clear()
        self._items[key] = (time.monotonic() + self.ttl_s, value)

    def pop(self, key: Hashable) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()
