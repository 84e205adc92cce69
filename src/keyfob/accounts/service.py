"""Creating the owner and checking a login, shared by the CLI and the setup/login pages."""

from __future__ import annotations

import re

from keyfob.accounts.passwords import DUMMY_HASH, hash_password, verify_password
from keyfob.allowance.windows import zone
from keyfob.store import Store
from keyfob.store.records import User

USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class AccountError(ValueError):
    pass


async def create_owner(store: Store, username: str, password: str, timezone: str = "UTC") -> User:
    if not USERNAME.match(username):
        raise AccountError("a username is 1-64 letters, digits or . _ @ -")
    if await store.users.owner() is not None:
        raise AccountError("this Keyfob already has an owner")
    if zone(timezone).key != timezone:
        raise AccountError(f"unknown time zone {timezone!r}")
    return await store.users.create(
        username, hash_password(password), timezone=timezone, is_owner=True
    )


async def authenticate(store: Store, username: str, password: str) -> User | None:
    user = await store.users.by_username(username) if USERNAME.match(username) else None
    if user is None:
        verify_password(DUMMY_HASH, password)
        return None
    return user if verify_password(user.password_hash, password) else None
