"""Creating the owner, checking a login, changing a password: shared by the CLI and the
pages. With a ``HashLimiter`` (the server's) the argon2 work runs off the event loop;
the CLI, which has no loop to protect, hashes inline."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from keyfob.accounts import sessions
from keyfob.accounts.hashing import HashLimiter
from keyfob.accounts.passwords import DUMMY_HASH, check_strength, hash_password, verify_password
from keyfob.allowance.windows import zone
from keyfob.store import Store
from keyfob.store.records import User

USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

T = TypeVar("T")


class AccountError(ValueError):
    pass


async def _run(limiter: HashLimiter | None, fn: Callable[..., T], *args: object) -> T:
    return fn(*args) if limiter is None else await limiter.run(fn, *args)


async def create_owner(
    store: Store,
    username: str,
    password: str,
    timezone: str = "UTC",
    limiter: HashLimiter | None = None,
) -> User:
    if not USERNAME.match(username):
        raise AccountError("a username is 1-64 letters, digits or . _ @ -")
    if await store.users.owner() is not None:
        raise AccountError("this Keyfob already has an owner")
    if zone(timezone).key != timezone:
        raise AccountError(f"unknown time zone {timezone!r}")
    check_strength(password)
    password_hash = await _run(limiter, hash_password, password)
    from sqlalchemy.exc import IntegrityError

    try:
        return await store.users.create(username, password_hash, timezone=timezone, is_owner=True)
    except IntegrityError:  # two first runs at once, or the name is taken
        raise AccountError("this Keyfob already has an owner, or the name is taken") from None


async def authenticate(
    store: Store, username: str, password: str, limiter: HashLimiter | None = None
) -> User | None:
    """The user when the password matches (a disabled person too: the caller says so, to
    whoever knows the password only). An unknown name costs a hash too (timing)."""
    user = await store.users.by_username(username) if USERNAME.match(username) else None
    if user is None:
        await _run(limiter, verify_password, DUMMY_HASH, password)
        return None
    ok = await _run(limiter, verify_password, user.password_hash, password)
    return user if ok else None


async def change_password(
    store: Store,
    user: User,
    current: str,
    new: str,
    limiter: HashLimiter | None = None,
) -> int:
    """Check the current password, store the new one's hash and end every session of the
    person (a thief holding a session cookie is out too). Returns the sessions ended;
    the caller starts a fresh one for the browser that made the change."""
    check_strength(new)
    if not await _run(limiter, verify_password, user.password_hash, current):
        raise AccountError("the current password is wrong")
    if new == current:
        raise AccountError("the new password is the same as the current one")
    await store.users.set_password_hash(user.id, await _run(limiter, hash_password, new))
    return await sessions.end_all(store, user.id)
