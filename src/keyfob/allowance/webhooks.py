"""Threshold webhooks: tell the person's endpoint when a grant passes 50, 80 and 100
percent of a window (and when a call is refused by one), once per window and threshold.
Every refusal is also kept (``store.refusals``) for the dashboard's "refused calls".

Delivery is fire-and-forget from the request path (a task; the call never waits for
it), recorded in ``webhook_events`` so a threshold is announced once, whatever the number
of processes. Each POST carries ``X-Keyfob-Signature: sha256=<hex>``, an HMAC of the
body under the grant's id-derived key, so the receiver can tell it came from Keyfob.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from keyfob.allowance.policy import Policy, PolicyError
from keyfob.allowance.windows import Window
from keyfob.money import format_usd
from keyfob.store.metering.reads import mark_webhook, webhook_delivered
from keyfob.store.records import Grant, WindowState

if TYPE_CHECKING:
    from keyfob.store import Store

log = logging.getLogger("keyfob.webhooks")

THRESHOLDS = (50, 80, 100)
#: A client hammering a closed allowance writes one refusal update per this many seconds
#: per (grant, limit, model); the calls in between are counted in it.
REFUSAL_WRITE_EVERY_S = 2.0
TIMEOUT_S = 5.0


class AllowanceExhausted(Protocol):
    """What a refusal notice reads of ``service.AllowanceExhausted`` (a protocol: the
    service, which owns the notifier, is not imported back)."""

    @property
    def window(self) -> Window: ...
    @property
    def state(self) -> WindowState: ...
    @property
    def label(self) -> str: ...
    @property
    def needed_micro_usd(self) -> int: ...
    @property
    def retry_at(self) -> float | None: ...


def webhook_url(grant: Grant) -> str | None:
    """The grant's webhook, if its policy names one. Parsed here rather than through the
    service's policy cache: a notice is rare, and a policy without JSON has no webhook
    (a stored policy that no longer parses has none either, as the service reads it)."""
    if not grant.policy_json:
        return None
    try:
        return Policy.from_json(grant.policy_json).webhook_url
    except PolicyError:
        return None


def crossed(state: WindowState) -> list[int]:
    """The thresholds a window's settled spend has reached."""
    if state.cap_micro_usd <= 0:
        return []
    pct = state.spent_micro_usd * 100 // state.cap_micro_usd
    return [t for t in THRESHOLDS if pct >= t]


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Notifier:
    def __init__(self, store: Store, signing_key: bytes = b"") -> None:
        self.store = store
        self.signing_key = signing_key
        self._seen: set[tuple[str, str, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Refusals not yet written, per (grant, limit, model), while a task writes them.
        self._refusals: dict[tuple[str, str, str], int] = {}

    def grant_secret(self, grant_id: str) -> bytes:
        return hmac.new(self.signing_key, grant_id.encode(), hashlib.sha256).digest()

    def settled(self, grant_id: str, states: tuple[WindowState, ...]) -> None:
        due = [
            (s, t)
            for s in states
            if s.window_key != "wallet"
            for t in crossed(s)
            if (grant_id, s.window_key, t) not in self._seen
        ]
        if due:
            self._spawn(self._announce(grant_id, due, refused=False))

    def refused(
        self, grant: Grant, policy: Policy, exc: AllowanceExhausted, model: str = ""
    ) -> None:
        key = (grant.id, exc.window.key, model)
        if key in self._refusals:
            self._refusals[key] += 1  # written by the task already on it
        elif len(self._refusals) < 10_000:
            self._refusals[key] = 1
            self._spawn(self._remember_refusal(key, grant, exc, model))
        if not policy.webhook_url or exc.window.key in ("per_call_ceiling", "wallet"):
            return
        if (grant.id, exc.window.key, 100) in self._seen:
            return
        st = exc.state
        full = WindowState(st.window_key, st.cap_micro_usd, st.cap_micro_usd, 0)
        self._spawn(self._announce(grant.id, [(full, 100)], refused=True))

    async def _remember_refusal(
        self, key: tuple[str, str, str], grant: Grant, exc: AllowanceExhausted, model: str
    ) -> None:
        """Keep refusals for the person's dashboard, off the request path: one write now,
        then at most one per ``REFUSAL_WRITE_EVERY_S`` with the count of those since, so a
        client hammering a closed allowance costs a counter, not a write per call."""
        try:
            while count := self._refusals.get(key, 0):
                self._refusals[key] = 0
                await self.store.refusals.record(
                    user_id=grant.user_id,
                    grant_id=grant.id,
                    client_id=grant.client_id,
                    model=model,
                    limit_label=exc.label,
                    window_key=exc.window.key,
                    needed_micro_usd=exc.needed_micro_usd,
                    left_micro_usd=exc.state.left_micro_usd,
                    retry_at=exc.retry_at,
                    count=count,
                )
                await asyncio.sleep(REFUSAL_WRITE_EVERY_S)
        except Exception as error:  # a full disk must not fail calls refused anyway
            log.warning("could not record a refused call: %s", type(error).__name__)
        finally:
            self._refusals.pop(key, None)

    async def overrun(
        self,
        grant_id: str,
        *,
        entry_id: str,
        model: str,
        kind: str,
        reserved_micro_usd: int,
        cost_micro_usd: int,
        output_limit_tokens: int,
        output_tokens: int | None,
    ) -> None:
        """Tell the person that a call cost more than its reservation: its upstream
        ignored the output limit Keyfob sent (``allowance.overrun``, once per call).
        Awaited by the overrun's own task (``gateway/overrun.py``)."""
        payload = {
            "event": "allowance.overrun",
            "grant_id": grant_id,
            "ledger_id": entry_id,
            "model": model,
            "kind": kind,
            "reserved_usd": format_usd(reserved_micro_usd),
            "cost_usd": format_usd(cost_micro_usd),
            "output_limit_tokens": output_limit_tokens,
            "output_tokens": output_tokens,
        }
        await self._announce_event(grant_id, payload)

    async def _announce_event(self, grant_id: str, payload: dict[str, Any]) -> None:
        grant = await self.store.grants.get(grant_id)
        if grant is None:
            return
        url = webhook_url(grant)
        if not url:
            return
        body = json.dumps(
            {**payload, "client_id": grant.client_id, "at": time.time()}, sort_keys=True
        ).encode()
        await self._post(url, body, self.grant_secret(grant_id))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for deliveries in flight (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _announce(
        self, grant_id: str, due: list[tuple[WindowState, int]], refused: bool
    ) -> None:
        now = time.time()
        grant = None
        for state, threshold in due:
            self._seen.add((grant_id, state.window_key, threshold))
            if not await mark_webhook(
                self.store.engine, grant_id, state.window_key, threshold, now
            ):
                continue
            if grant is None:
                grant = await self.store.grants.get(grant_id)
            if grant is None:
                return
            url = webhook_url(grant)
            if not url:
                continue
            body = json.dumps(
                {
                    "event": "allowance.threshold",
                    "grant_id": grant_id,
                    "client_id": grant.client_id,
                    "window": state.window_key,
                    "threshold_percent": threshold,
                    "refused_call": refused,
                    "cap_usd": format_usd(state.cap_micro_usd),
                    "spent_usd": format_usd(state.spent_micro_usd),
                    "at": now,
                },
                sort_keys=True,
            ).encode()
            error = await self._post(url, body, self.grant_secret(grant_id))
            await webhook_delivered(self.store.engine, grant_id, state.window_key, threshold, error)

    async def _post(self, url: str, body: bytes, secret: bytes) -> str | None:
        headers = {
            "Content-Type": "application/json",
            "X-Keyfob-Signature": signature(secret, body),
            "User-Agent": "keyfob-webhook/1",
        }
        try:
            timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, data=body, headers=headers, allow_redirects=False) as response,
            ):
                if response.status >= 300:
                    return f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("webhook to %s failed: %s", url.split("?")[0], type(exc).__name__)
            return type(exc).__name__
        return None
