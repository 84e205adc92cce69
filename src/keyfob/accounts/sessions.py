"""Server-side dashboard sessions: start, resolve, end (one, or all of a person's).

The browser's cookie holds only a random session id (signed by the session middleware);
the store holds its SHA-256, so a copied cookie stops working the moment its row is
gone: logout ends one session, a password change or "log out everywhere" all of a
person's. A session also ends after ``idle_s`` without a request and ``max_s`` after it
began. A new id is made at every login (no fixation). Framework-free: ``web/`` calls
these with the id from the cookie.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from keyfob.store import Store
from keyfob.store.records import User

#: last_seen_at is written at most this often (a page view is not worth a write each).
TOUCH_EVERY_S = 60.0


@dataclass(frozen=True)
class SessionRules:
    idle_s: float = 12 * 3600
    max_s: float = 14 * 24 * 3600


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


async def start(store: Store, user: User, now: float | None = None) -> str:
    """A new session for ``user``; returns the id to put in the cookie (never stored)."""
    session_id = secrets.token_urlsafe(32)
    await store.sessions.create(_hash(session_id), user.id, time.time() if now is None else now)
    return session_id


async def resolve(
    store: Store, session_id: str, rules: SessionRules, now: float | None = None
) -> User | None:
    """The person a live session belongs to; an expired session is deleted on sight."""
    if not session_id or len(session_id) > 128:
        return None
    now = time.time() if now is None else now
    id_hash = _hash(session_id)
    found = await store.sessions.get(id_hash)
    if found is None:
        return None
    if now - found.last_seen_at > rules.idle_s or now - found.created_at > rules.max_s:
        await store.sessions.delete(id_hash)
        return None
    user = await store.users.get(found.user_id)
    if user is None or not user.active:  # disabling ends sessions; this is the backstop
        await store.sessions.delete(id_hash)
        return None
    if now - found.last_seen_at > TOUCH_EVERY_S:
        await store.sessions.touch(id_hash, now)
    return user


async def end(store: Store, session_id: str) -> None:
    """Logout: this session is over, wherever its cookie was copied to."""
    if session_id:
        await store.sessions.delete(_hash(session_id))


async def end_all(store: Store, user_id: str) -> int:
    """Log out everywhere (and what a password change does): every session of the person."""
    return await store.sessions.delete_for_user(user_id)


async def forget_stale(store: Store, rules: SessionRules, now: float | None = None) -> int:
    """Housekeeping at start-up: rows of sessions that can no longer be used."""
    now = time.time() if now is None else now
    return await store.sessions.delete_stale(now - rules.idle_s, now - rules.max_s)
