"""People on a Keyfob that serves many: adding them, signup by mode and invite code,
roles, disabling, and one-time password links. Shared by ``keyfob users`` and the admin
pages; framework-free.

Why links rather than passwords: an admin who resets a password never learns it and
never types one into a terminal or a log. The link is shown once (stdout or the admin's
page), only its SHA-256 is stored, it works once and for ``PASSWORD_LINK_TTL_S``, and a
newer link for the same person voids it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from keyfob.accounts import sessions
from keyfob.accounts.hashing import HashLimiter
from keyfob.accounts.passwords import check_strength, hash_password
from keyfob.accounts.service import USERNAME, AccountError
from keyfob.allowance.windows import zone
from keyfob.store import Store
from keyfob.store.people import CodeRefused, Invite, NameTaken
from keyfob.store.records import User
from keyfob.tokens import Kind, hash_token, new_token

ROLES = ("admin", "member")
PASSWORD_LINK_TTL_S = 24 * 3600
PASSWORD_LINK_PATH = "/password"  # noqa: S105 - a path, not a secret
MAX_INVITE_USES = 10_000
MAX_INVITE_TTL_S = 365 * 86400

T = TypeVar("T")


async def _run(limiter: HashLimiter | None, fn: Callable[..., T], *args: object) -> T:
    return fn(*args) if limiter is None else await limiter.run(fn, *args)


def check_username(username: str) -> str:
    if not USERNAME.match(username):
        raise AccountError("a username is 1-64 letters, digits or . _ @ -")
    return username


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"a role is {' or '.join(ROLES)}")
    return role


async def add_person(
    store: Store,
    username: str,
    password: str | None,
    *,
    role: str = "member",
    timezone: str = "UTC",
    limiter: HashLimiter | None = None,
) -> User:
    """An admin adds someone. Without a password the account cannot log in until its
    person sets one through a password link (``password_link``). The first admin of a
    Keyfob without an owner becomes its owner (the hosted bootstrap: ``keyfob users add
    NAME --admin`` closes /setup)."""
    check_username(username)
    check_role(role)
    if zone(timezone).key != timezone:
        raise AccountError(f"unknown time zone {timezone!r}")
    if password is not None:
        check_strength(password)
    if await store.users.by_username(username) is not None:
        raise AccountError(f"the username {username!r} is taken")
    # No password: a hash of 256 random bits nobody knows, so no password matches.
    secret = password if password is not None else new_token(Kind.PASSWORD_LINK)
    password_hash = await _run(limiter, hash_password, secret)
    if role == "admin" and await store.users.owner() is None:
        from sqlalchemy.exc import IntegrityError

        try:
            return await store.users.create(
                username, password_hash, timezone=timezone, is_owner=True
            )
        except IntegrityError:
            pass  # another process made the owner just now: this admin is an admin
    try:
        return await store.people.create_person(
            username, password_hash, timezone=timezone, role=role
        )
    except NameTaken as exc:
        raise AccountError(str(exc)) from None


def effective_signup(mode: str, signup: str) -> str:
    """Personal mode is always closed (``Settings.check_safe`` refuses anything else)."""
    return signup if mode == "hosted" else "closed"


async def sign_up(
    store: Store,
    signup: str,
    username: str,
    password: str,
    invite_code: str | None,
    limiter: HashLimiter | None = None,
    *,
    timezone: str = "UTC",
) -> User:
    """A person creates their own account as the signup mode allows: ``open`` (anyone),
    ``invite`` (with a usable code; one use taken atomically with the account)."""
    if signup not in ("open", "invite"):
        raise AccountError("sign-up is closed here: an admin adds people")
    check_username(username)
    invite_hash = None
    if signup == "invite":
        code = (invite_code or "").strip()
        if not code or len(code) > 128:
            raise CodeRefused("enter the invite code you were given")
        invite_hash = hash_token(code)
        if not await store.people.invite_usable(invite_hash, time.time()):
            raise CodeRefused("this invite code is not valid (used up, expired or revoked)")
    check_strength(password)
    if await store.users.by_username(username) is not None:
        raise AccountError(f"the username {username!r} is taken")
    password_hash = await _run(limiter, hash_password, password)
    try:
        return await store.people.create_person(
            username, password_hash, timezone=timezone, invite_hash=invite_hash
        )
    except NameTaken as exc:
        raise AccountError(str(exc)) from None


async def new_invite(
    store: Store, by: User | None, *, uses: int = 1, ttl_s: int | None = 7 * 86400, note: str = ""
) -> tuple[Invite, str]:
    """An invite code usable ``uses`` times for ``ttl_s`` seconds (None: no expiry).
    Returns the invite and its code, shown once."""
    if not 1 <= uses <= MAX_INVITE_USES:
        raise AccountError(f"an invite is usable 1 to {MAX_INVITE_USES} times")
    if ttl_s is not None and not 60 <= ttl_s <= MAX_INVITE_TTL_S:
        raise AccountError("an invite lasts from one minute to a year")
    clean = " ".join(note.split())[:200]
    if clean and not clean.isprintable():
        raise AccountError("a note may not contain control characters")
    code = new_token(Kind.INVITE)
    invite = await store.people.add_invite(
        hash_token(code),
        created_by=by.id if by else None,
        max_uses=uses,
        expires_at=time.time() + ttl_s if ttl_s is not None else None,
        note=clean or None,
    )
    return invite, code


@dataclass(frozen=True)
class PasswordLink:
    url: str
    expires_at: float


async def password_link(store: Store, issuer: str, person: User, by: User | None) -> PasswordLink:
    """A one-time link for ``person`` to set a new password (an admin's reset, or the
    first password of someone an admin added). Shown once; never logged."""
    code = new_token(Kind.PASSWORD_LINK)
    expires_at = await store.people.add_password_link(
        hash_token(code), person.id, created_by=by.id if by else None, ttl_s=PASSWORD_LINK_TTL_S
    )
    return PasswordLink(f"{issuer}{PASSWORD_LINK_PATH}?code={code}", expires_at)


async def link_holder(store: Store, code: str) -> User | None:
    """The active person a live password link is for (None otherwise)."""
    if not code or len(code) > 128:
        return None
    user_id = await store.people.password_link_user(hash_token(code), time.time())
    user = await store.users.get(user_id) if user_id else None
    return user if user is not None and user.active else None


async def set_password_by_link(
    store: Store, code: str, new: str, limiter: HashLimiter | None = None
) -> User:
    """Use a link once: the new password's hash is stored and every session of the
    person ends (in one transaction)."""
    person = await link_holder(store, code)
    if person is None:
        raise CodeRefused("this link is not valid (used, replaced or expired); ask an admin")
    check_strength(new)
    password_hash = await _run(limiter, hash_password, new)
    user_id = await store.people.use_password_link(hash_token(code), password_hash, time.time())
    user = await store.users.get(user_id)
    assert user is not None
    return user


async def _keeps_an_admin(store: Store, person: User) -> None:
    if person.is_admin and person.active and await store.users.active_admins() <= 1:
        raise AccountError(f"{person.username} is the last active admin; make another admin first")


async def disable(store: Store, person: User) -> int:
    """Disable a person: their grants and tokens are revoked (refused on the next call
    of every endpoint), their sessions end, they cannot log in. Returns grants revoked.
    Enabling them again does not bring the grants back: they allow their apps again."""
    await _keeps_an_admin(store, person)
    return await store.people.disable(person.id)


async def enable(store: Store, person: User) -> None:
    await store.users.enable(person.id)


async def set_role(store: Store, person: User, role: str) -> None:
    check_role(role)
    if role == person.role:
        return
    if role == "member":
        await _keeps_an_admin(store, person)
    await store.users.set_role(person.id, role)


async def log_out_everywhere(store: Store, person: User) -> int:
    """Every session of the person ends (an admin's action, or the person's own)."""
    return await sessions.end_all(store, person.id)


__all__ = [
    "ROLES",
    "AccountError",
    "CodeRefused",
    "PasswordLink",
    "add_person",
    "disable",
    "effective_signup",
    "enable",
    "link_holder",
    "new_invite",
    "password_link",
    "set_password_by_link",
    "set_role",
    "sign_up",
]
