"""One settings object, read from the environment (``KEYFOB_*``) and command-line flags.

Why one object: every room reads its configuration from here, so an unsafe combination
(a hosted server on a public address with a default secret, say) is refused in one place,
at start-up, instead of surfacing as a leak later.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import platformdirs

Mode = Literal["personal", "hosted"]


class UnsafeSettings(ValueError):
    """Raised when the configuration would run the server in an unsafe way."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDRs (the trusted proxies, read by ``guard.py``); raises
    UnsafeSettings naming an entry that is neither."""
    found: list[Network] = []
    for entry in entries:
        try:
            found.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise UnsafeSettings(f"trusted proxy {entry!r} is not an address or CIDR") from None
    return tuple(found)


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("keyfob", appauthor=False))


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _env_list(name: str) -> tuple[str, ...]:
    """A comma-separated list (``KEYFOB_TRUSTED_PROXIES=10.0.0.0/8,192.168.1.5``)."""
    return tuple(p.strip() for p in os.environ.get(name, "").split(",") if p.strip())


@dataclass(frozen=True)
class Settings:
    mode: Mode = "personal"
    host: str = "127.0.0.1"
    port: int = 8787
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None
    redis_url: str | None = None
    #: Base64 (urlsafe) 32-byte key; when unset, a key file in the data dir is used.
    master_key: str | None = None
    #: Public URL of this server (issuer). Defaults to http://{host}:{port}.
    public_url: str | None = None
    access_token_ttl_s: int = 3600
    refresh_token_ttl_s: int = 30 * 24 * 3600
    auth_code_ttl_s: int = 60
    #: Device authorization grant (RFC 8628): lifetime of a device code, polling interval.
    device_code_ttl_s: int = 600
    device_code_interval_s: int = 5
    #: Dynamic client registration (RFC 7591, public clients only) and its limit per address.
    dynamic_registration: bool = True
    registrations_per_hour_per_address: int = 20
    #: Fetch Client ID Metadata Documents from loopback addresses (personal mode only, for
    #: tests and local development; hosted mode always refuses loopback and private ones).
    client_metadata_allow_loopback: bool = False
    #: Largest request body the gateway accepts (bytes).
    max_body_bytes: int = 4 * 1024 * 1024
    #: Largest form body the OAuth and web endpoints accept (bytes).
    max_form_bytes: int = 64 * 1024
    #: Output tokens assumed for the worst case when a call sets no max_tokens.
    default_max_output_tokens: int = 4096
    upstream_connect_timeout_s: float = 10.0
    #: How long an upstream may take to send its first byte (the model "thinking").
    upstream_first_byte_timeout_s: float = 120.0
    upstream_read_timeout_s: float = 300.0
    #: OpenRouter's OAuth PKCE pages (``/auth``) and API (``/auth/keys``), for linking an
    #: OpenRouter account from the dashboard; settings so tests can stand in a fake.
    openrouter_auth_url: str = "https://openrouter.ai"
    openrouter_api_url: str = "https://openrouter.ai/api/v1"
    log_level: str = "info"
    #: Proxies whose ``X-Forwarded-For``/``-Proto`` are believed (addresses or CIDRs).
    #: Hosted mode only; personal mode trusts no proxy, so no header can fake an address.
    trusted_proxies: tuple[str, ...] = ()
    #: Host names this server answers to besides its public URL's host (hosted mode) or
    #: its loopback names (personal mode); anything else is refused (DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    #: The one-time token /setup requires on a server with no owner yet; random per
    #: start when unset (``keyfob serve`` prints the link, as Jupyter does).
    setup_token: str | None = None
    #: Dashboard sessions end after this long without a request, and in any case after
    #: ``session_max_s`` (they live server-side: logout ends them for good).
    session_idle_s: int = 12 * 3600
    session_max_s: int = 14 * 24 * 3600
    #: Password hashes computed at once (each is ~50 ms of one core, off the event loop);
    #: logins beyond this wait, and beyond ``login_queue_max`` waiting are refused (503).
    concurrent_password_hashes: int = 1
    login_queue_max: int = 16

    @property
    def issuer(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'keyfob.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    def with_overrides(self, **changes: object) -> Settings:
        clean = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **clean)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        base = cls()
        return cls(
            mode="hosted" if env.get("KEYFOB_MODE") == "hosted" else "personal",
            host=env.get("KEYFOB_HOST", base.host),
            port=_env_int("KEYFOB_PORT", base.port),
            data_dir=Path(env["KEYFOB_DATA_DIR"]) if env.get("KEYFOB_DATA_DIR") else base.data_dir,
            database_url=env.get("KEYFOB_DATABASE_URL") or None,
            redis_url=env.get("KEYFOB_REDIS_URL") or None,
            master_key=env.get("KEYFOB_MASTER_KEY") or None,
            public_url=env.get("KEYFOB_PUBLIC_URL") or None,
            access_token_ttl_s=_env_int("KEYFOB_ACCESS_TOKEN_TTL", base.access_token_ttl_s),
            max_body_bytes=_env_int("KEYFOB_MAX_BODY_BYTES", base.max_body_bytes),
            default_max_output_tokens=_env_int(
                "KEYFOB_DEFAULT_MAX_OUTPUT_TOKENS", base.default_max_output_tokens
            ),
            log_level=env.get("KEYFOB_LOG_LEVEL", base.log_level),
            trusted_proxies=_env_list("KEYFOB_TRUSTED_PROXIES"),
            allowed_hosts=_env_list("KEYFOB_ALLOWED_HOSTS"),
            setup_token=env.get("KEYFOB_SETUP_TOKEN") or None,
            session_idle_s=_env_int("KEYFOB_SESSION_IDLE", base.session_idle_s),
        )

    def check_safe(self) -> None:
        """Refuse configurations that would expose a person's credentials or money."""
        loopback = self.host in ("127.0.0.1", "::1", "localhost")
        if self.mode == "personal" and self.trusted_proxies:
            raise UnsafeSettings(
                "personal mode trusts no proxy (every local client shares 127.0.0.1, so a "
                "trusted X-Forwarded-For would let any of them pick its address); "
                "KEYFOB_TRUSTED_PROXIES is for hosted mode"
            )
        parse_networks(self.trusted_proxies)  # raises UnsafeSettings on a bad entry
        if self.setup_token is not None and len(self.setup_token) < 16:
            raise UnsafeSettings("KEYFOB_SETUP_TOKEN needs at least 16 characters")
        if self.mode == "personal" and not loopback:
            raise UnsafeSettings(
                "personal mode listens on loopback only; use --mode hosted (with a "
                "database URL, a master key and a public https URL) to serve a network"
            )
        if self.mode == "hosted":
            if not self.database_url or self.database_url.startswith("sqlite"):
                raise UnsafeSettings("hosted mode needs KEYFOB_DATABASE_URL (PostgreSQL)")
            if not self.master_key:
                raise UnsafeSettings("hosted mode needs KEYFOB_MASTER_KEY from a secret store")
            if not loopback and not (self.public_url or "").startswith("https://"):
                raise UnsafeSettings("hosted mode off loopback needs an https KEYFOB_PUBLIC_URL")
