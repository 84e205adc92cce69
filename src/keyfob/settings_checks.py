"""``Settings.check_safe``: the combinations Keyfob refuses to start with.

Why refuse rather than warn: each of these runs the server in a way that exposes a
person's credentials or money (a master key on a shared disk, cookies signed with a key
each process invents, a setup page anyone can claim), and a warning in a log nobody reads
is how such a deployment stays up. Modelled on full-stack-fastapi-template's
``_enforce_non_default_secrets``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from urllib.parse import urlsplit

from keyfob.settings import MODES, SIGNUP_MODES, Settings, UnsafeSettings, mode_error

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
#: Words of the placeholders people copy from examples.
PLACEHOLDER_WORDS = ("changeme", "change-me", "change_me", "example", "placeholder", "secret")
LOG_LEVELS = frozenset({"critical", "error", "warning", "info", "debug", "trace"})


def _placeholder(value: str) -> bool:
    lowered = value.lower()
    return len(set(value)) < 10 or any(w in lowered for w in PLACEHOLDER_WORDS)


def _ring(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def check_master_keys(value: str) -> None:
    for i, part in enumerate(_ring(value), 1):
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise UnsafeSettings(
                f"KEYFOB_MASTER_KEY: key {i} is not a base64url 32-byte key "
                "(make one with `keyfob vault keygen`)"
            )
        if _placeholder(part):
            raise UnsafeSettings(f"KEYFOB_MASTER_KEY: key {i} looks like a placeholder")


def check_session_keys(value: str) -> None:
    for i, part in enumerate(_ring(value), 1):
        if len(part) < 32:
            raise UnsafeSettings(f"KEYFOB_SESSION_KEYS: key {i} has fewer than 32 characters")
        if _placeholder(part):
            raise UnsafeSettings(f"KEYFOB_SESSION_KEYS: key {i} looks like a placeholder")


def check_safe(s: Settings) -> None:
    if s.mode not in MODES:  # __post_init__ refuses it too; never let a typo skip the rest
        raise UnsafeSettings(mode_error(s.mode))
    loopback = s.host in LOOPBACK
    if s.mode == "personal" and s.trusted_proxies:
        raise UnsafeSettings(
            "personal mode trusts no proxy (every local client shares 127.0.0.1, so a "
            "trusted X-Forwarded-For would let any of them pick its address); "
            "KEYFOB_TRUSTED_PROXIES is for hosted mode"
        )
    from keyfob.settings import parse_networks

    parse_networks(s.trusted_proxies)  # raises UnsafeSettings on a bad entry
    if s.signup not in SIGNUP_MODES:
        raise UnsafeSettings(f"KEYFOB_SIGNUP is one of {', '.join(SIGNUP_MODES)}, not {s.signup!r}")
    if s.mode == "personal" and s.signup != "closed":
        raise UnsafeSettings(
            "signup is for hosted mode; a personal Keyfob has one owner, who may add "
            "people with `keyfob users add`"
        )
    for entry in s.upstream_allow_private:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise UnsafeSettings(
                f"KEYFOB_UPSTREAM_ALLOW_PRIVATE entry {entry!r} is not an address or CIDR"
            ) from None
    if s.setup_token is not None and len(s.setup_token) < 16:
        raise UnsafeSettings("KEYFOB_SETUP_TOKEN needs at least 16 characters")
    if s.metrics_token is not None and (len(s.metrics_token) < 32 or _placeholder(s.metrics_token)):
        raise UnsafeSettings("KEYFOB_METRICS_TOKEN needs at least 32 random characters")
    if s.log_level.lower() not in LOG_LEVELS:
        raise UnsafeSettings(f"KEYFOB_LOG_LEVEL {s.log_level!r} is not one of debug, info, ...")
    if s.workers < 1 or s.db_pool_size < 1:
        raise UnsafeSettings("KEYFOB_WORKERS and KEYFOB_DB_POOL_SIZE are at least 1")
    if s.redis_url is not None and urlsplit(s.redis_url).scheme not in ("redis", "rediss", "unix"):
        raise UnsafeSettings("KEYFOB_REDIS_URL must be redis://, rediss:// or unix://")
    if s.master_key:
        check_master_keys(s.master_key)
    if s.session_keys:
        check_session_keys(s.session_keys)
    if s.mode == "personal":
        if not loopback:
            raise UnsafeSettings(
                "personal mode listens on loopback only; use --mode hosted (with a "
                "database URL, a master key and a public https URL) to serve a network"
            )
        if s.workers != 1:
            raise UnsafeSettings(
                "personal mode is one process (it meters calls in memory); --workers is "
                "for hosted mode"
            )
        return
    if not s.database_url or s.database_url.startswith("sqlite"):
        raise UnsafeSettings("hosted mode needs KEYFOB_DATABASE_URL (PostgreSQL)")
    if not s.master_key:
        raise UnsafeSettings(
            "hosted mode needs KEYFOB_MASTER_KEY (or KEYFOB_MASTER_KEY_FILE) from a secret "
            "store: a key file in one process's data dir is not shared"
        )
    if not s.session_keys:
        raise UnsafeSettings(
            "hosted mode needs KEYFOB_SESSION_KEYS (or KEYFOB_SESSION_KEYS_FILE), the same "
            "for every process: otherwise each signs cookies with its own key and logins "
            "fail behind a load balancer"
        )
    if set(_ring(s.session_keys)) & set(_ring(s.master_key)):
        raise UnsafeSettings("KEYFOB_SESSION_KEYS must not reuse a master key")
    public = urlsplit(s.public_url or "")
    if not s.public_url:
        raise UnsafeSettings("hosted mode needs KEYFOB_PUBLIC_URL (the issuer apps see)")
    if public.scheme != "https" and (public.hostname or "") not in LOOPBACK:
        raise UnsafeSettings("hosted mode needs an https KEYFOB_PUBLIC_URL")
    if not loopback and public.scheme != "https":
        raise UnsafeSettings("hosted mode off loopback needs an https KEYFOB_PUBLIC_URL")
