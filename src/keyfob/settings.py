"""One settings object, every field declared once: its type, default, environment variable,
``keyfob serve`` flag and help text live on the field itself (``dataclasses.fields()``
metadata), and the environment reader, the flags, ``keyfob serve --help`` and
docs/SETTINGS.md are all derived from that one declaration.

Why one object: every room reads its configuration from here, so an unsafe combination
(a hosted server on a public address with a default secret, say) is refused in one place,
at start-up, instead of surfacing as a leak later. Why one declaration: a setting mapped
by hand in three places is a setting that is missing from one of them.

Names: the variable is ``KEYFOB_`` + the field's name in capitals, and the flag ``--`` +
the name with dashes, both without a trailing ``_s`` (seconds are said in the help).
Secrets are read from ``KEYFOB_X`` or from a file named by ``KEYFOB_X_FILE`` (one value
per line, for key rings); their flag names a file too (``--master-key-file``), because a
command line is visible to every local user.
"""

from __future__ import annotations

import ipaddress
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import platformdirs

from keyfob.settings_spec import (
    MODES,
    SettingsError,
    Spec,
    mode_error,
    normalise_database_url,
    read_secret_file,
    spec_of,
)

__all__ = [
    "MODES",
    "Settings",
    "SettingsError",
    "Spec",
    "UnsafeSettings",
    "mode_error",
    "normalise_database_url",
    "specs",
]

Mode = Literal["personal", "hosted"]
#: Who may create an account: ``closed`` (an admin adds people), ``invite`` (whoever
#: holds an invite code), ``open`` (anyone). Hosted mode only; personal mode is closed.
SIGNUP_MODES = ("closed", "invite", "open")
LogFormat = Literal["text", "json"]
#: ``db_reservation_durability`` (``store/metering/postgres.py``, ``durability``).
ReservationDurability = Literal["commit", "disk"]

assert typing.get_args(Mode) == MODES


class UnsafeSettings(SettingsError):
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


# --- declaring a setting ---------------------------------------------------------------

GROUPS = ("server", "database", "redis", "secrets", "oauth", "gateway", "sessions", "operations")


def setting(
    default: Any = None,
    help: str = "",
    *,
    group: str,
    env: str | None = None,
    flag: str | None = None,
    secret: bool = False,
    factory: Any = None,
    default_text: str | None = None,
) -> Any:
    """A settings field with its metadata (``env``, ``flag``, ``help``, ``group``; a
    ``secret`` is read from a file too, and hidden from ``repr``)."""
    assert group in GROUPS, group
    meta = {
        "help": help,
        "group": group,
        "env": env,
        "flag": flag,
        "secret": secret,
        "default_text": default_text,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class Settings:
    # server
    mode: Mode = setting(
        "personal",
        "personal (one person, loopback, SQLite) or hosted (many people, PostgreSQL); "
        "anything else is refused.",
        group="server",
    )
    host: str = setting("127.0.0.1", "Address to listen on.", group="server")
    port: int = setting(8787, "Port to listen on.", group="server")
    public_url: str | None = setting(
        None,
        "Public URL of this server (the OAuth issuer); https in hosted mode. Default: "
        "http://HOST:PORT.",
        group="server",
    )
    data_dir: Path = setting(
        help="Where Keyfob keeps its files (SQLite database, key files in personal mode).",
        group="server",
        factory=default_data_dir,
        default_text="the user data directory",
    )
    workers: int = setting(
        1,
        "Server processes `keyfob serve` starts on one port (hosted mode; personal mode "
        "is one process).",
        group="server",
    )
    allowed_hosts: tuple[str, ...] = setting(
        (),
        "Host names answered besides the public URL's host (hosted) or loopback names "
        "(personal), comma-separated; any other Host is refused (DNS rebinding).",
        group="server",
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        "Proxies (addresses or CIDRs, comma-separated) whose X-Forwarded-For/-Proto are "
        "believed; hosted mode only.",
        group="server",
    )
    log_level: str = setting("info", "debug, info, warning or error.", group="server")
    log_format: LogFormat = setting(
        "text", "text, or json (one object per line, with the request id).", group="server"
    )
    instance_id: str | None = setting(
        None,
        "This serving process's id on its reservations (hosted mode); stable across restarts "
        "(a systemd unit, a stateful set) so a restart releases its own dead reservations at "
        "once. Default: unique to each start (its peers release them within seconds).",
        group="server",
    )
    signup: str = setting(
        "closed",
        "Who may create an account (hosted mode): closed (an admin adds people), invite "
        "(whoever holds an invite code) or open.",
        group="server",
    )
    # database
    database_url: str | None = setting(
        None,
        "postgresql://user@host/db (hosted) or sqlite:///path; default: keyfob.db in the data dir.",
        group="database",
    )
    migrate_on_start: bool = setting(
        True,
        "Apply migrations at start (under a PostgreSQL advisory lock, so processes starting "
        "together never race); off when a separate `keyfob migrate` job runs them.",
        group="database",
    )
    db_pool_size: int = setting(5, "PostgreSQL connections each process keeps.", group="database")
    db_max_overflow: int = setting(
        5, "Extra PostgreSQL connections a process may open under load.", group="database"
    )
    db_pool_timeout_s: float = setting(
        10.0, "Seconds a request waits for a pooled connection.", group="database"
    )
    db_processes: int | None = setting(
        None,
        "How many Keyfob processes share the database (for the connection budget); "
        "default: --workers.",
        group="database",
    )
    db_connection_budget: int | None = setting(
        None,
        "Connections Keyfob may use in all (processes x (pool + overflow) + 2 for the "
        "CLI must fit); default: the server's max_connections minus its reserved ones.",
        group="database",
    )
    db_statement_cache_size: int = setting(
        100,
        "asyncpg prepared-statement cache per connection; 0 behind PgBouncer in "
        "transaction pooling mode.",
        group="database",
    )
    db_reservation_durability: ReservationDurability = setting(
        "commit",
        "What a reservation under one calendar cap waits for before its call goes "
        "upstream: commit (visible to every process at once, on disk within three "
        "wal_writer_delay; survives a kill -9 of any gateway, and a crash of PostgreSQL "
        "is repaired by the gateways' replay) or disk (the WAL flush: also survives a "
        "crash of PostgreSQL and of the gateway together, one disk sync per call). "
        "Other reservations always wait for the disk.",
        group="database",
    )
    # redis
    redis_url: str | None = setting(
        None,
        "redis://host:6379/0: login throttles and registration limits shared by every "
        "process (hosted mode; checked at start).",
        group="redis",
    )
    redis_prefix: str = setting(
        "keyfob:",
        "Prefix of every Redis key Keyfob writes (to share one Redis between deployments).",
        group="redis",
    )
    # secrets
    master_key: str | None = setting(
        None,
        "Vault key ring: base64url 32-byte keys, comma-separated (or one per line in the "
        "file), newest last; required in hosted mode (personal: master.key in the data dir).",
        group="secrets",
        secret=True,
    )
    session_keys: str | None = setting(
        None,
        "Cookie-signing key ring (at least 32 characters each), newest last: the newest "
        "signs, all verify; required in hosted mode (personal: session.key in the data dir).",
        group="secrets",
        secret=True,
    )
    setup_token: str | None = setting(
        None,
        "The token /setup requires while no owner exists (personal mode; random per start "
        "when unset). Hosted mode uses one-time tokens from `keyfob setup-link`.",
        group="secrets",
        secret=True,
    )
    metrics_token: str | None = setting(
        None,
        "Bearer token /metrics requires (at least 32 characters); without it /metrics "
        "answers 404 (its labels name people's providers and models).",
        group="secrets",
        secret=True,
    )
    # oauth
    access_token_ttl_s: int = setting(3600, "Access token lifetime, seconds.", group="oauth")
    refresh_token_ttl_s: int = setting(
        30 * 24 * 3600, "Refresh token lifetime, seconds.", group="oauth"
    )
    auth_code_ttl_s: int = setting(60, "Authorization code lifetime, seconds.", group="oauth")
    device_code_ttl_s: int = setting(
        600, "Device flow (RFC 8628): device code lifetime, seconds.", group="oauth"
    )
    device_code_interval_s: int = setting(
        5, "Device flow: polling interval, seconds.", group="oauth"
    )
    dynamic_registration: bool = setting(
        True, "Dynamic client registration (RFC 7591, public clients only).", group="oauth"
    )
    registrations_per_hour_per_address: int = setting(
        20, "Dynamic registrations allowed per client address per hour.", group="oauth"
    )
    client_metadata_allow_loopback: bool = setting(
        False,
        "Fetch Client ID Metadata Documents from loopback (personal mode only, for local "
        "development; hosted mode always refuses loopback and private addresses).",
        group="oauth",
    )
    # gateway
    max_body_bytes: int = setting(
        4 * 1024 * 1024, "Largest gateway request body, bytes.", group="gateway"
    )
    max_form_bytes: int = setting(
        64 * 1024, "Largest form body (OAuth and web pages), bytes.", group="gateway"
    )
    default_max_output_tokens: int = setting(
        4096,
        "Output tokens reserved for a call that sets no limit, when the model's maximum "
        "is unknown.",
        group="gateway",
    )
    upstream_connect_timeout_s: float = setting(
        10.0, "Seconds to connect to an upstream.", group="gateway"
    )
    upstream_first_byte_timeout_s: float = setting(
        120.0, "Seconds an upstream may take to send its first byte.", group="gateway"
    )
    upstream_read_timeout_s: float = setting(
        300.0, "Seconds an upstream may stay silent mid-answer.", group="gateway"
    )
    openrouter_auth_url: str = setting(
        "https://openrouter.ai", "OpenRouter's OAuth PKCE pages.", group="gateway"
    )
    openrouter_api_url: str = setting(
        "https://openrouter.ai/api/v1", "OpenRouter's API (key exchange).", group="gateway"
    )
    upstream_allow_private: tuple[str, ...] = setting(
        (),
        "Hosted mode: private addresses (CIDRs, comma-separated) upstreams may be served "
        "from on purpose; every other upstream address must be public, checked at each "
        "connection (DNS rebinding).",
        group="gateway",
    )
    # sessions
    session_idle_s: int = setting(
        12 * 3600, "A dashboard session ends after this many idle seconds.", group="sessions"
    )
    session_max_s: int = setting(
        14 * 24 * 3600, "A dashboard session ends this many seconds after login.", group="sessions"
    )
    concurrent_password_hashes: int = setting(
        1, "Password hashes (~50 ms of a core each) computed at once.", group="sessions"
    )
    login_queue_max: int = setting(
        16, "Logins waiting for a hash beyond which a login gets 503.", group="sessions"
    )
    # operations
    drain_timeout_s: float = setting(
        30.0,
        "On SIGTERM: stop accepting, let streams run this many seconds, then cut and settle "
        "them (keep it below the orchestrator's termination grace).",
        group="operations",
    )
    metrics: bool = setting(
        True, "Serve Prometheus metrics at /metrics (see --metrics-token).", group="operations"
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SettingsError(mode_error(self.mode))
        if self.database_url:
            object.__setattr__(self, "database_url", normalise_database_url(self.database_url))
        object.__setattr__(self, "signup", self.signup.strip().lower() or "closed")

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

    @property
    def processes(self) -> int:
        """Processes of this deployment sharing the database (the connection budget's)."""
        return self.db_processes if self.db_processes is not None else self.workers

    def with_overrides(self, **changes: object) -> Settings:
        clean = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **clean)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every setting from ``KEYFOB_*`` (secrets also from ``KEYFOB_*_FILE``)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in specs():
            raw = spec.read_env(env)
            if raw is not None:
                values[spec.name] = spec.parse(raw, spec.env)
        return cls(**values)

    @classmethod
    def load(
        cls, flags: Mapping[str, str | bool | None], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """The environment, then the flags given (raw text, parsed as the variable is)."""
        base = cls.from_env(environ)
        changes: dict[str, Any] = {}
        by_name = {s.name: s for s in specs()}
        for name, raw in flags.items():
            if raw is None:
                continue
            spec = by_name[name]
            if isinstance(raw, bool):
                changes[name] = raw
            elif spec.secret:
                changes[name] = read_secret_file(raw, spec.flag)
            else:
                changes[name] = spec.parse(raw, spec.flag)
        return replace(base, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment that makes ``from_env`` give these settings back (for worker
        processes started by ``keyfob serve --workers``)."""
        out: dict[str, str] = {}
        base = Settings()
        for spec in specs():
            value = getattr(self, spec.name)
            if value != getattr(base, spec.name) or spec.name == "data_dir":
                out[spec.env] = spec.render(value)
        return out


_SPECS: list[Spec] = []


def specs() -> list[Spec]:
    """Every setting, in declaration order."""
    if not _SPECS:
        hints = typing.get_type_hints(Settings)
        _SPECS.extend(spec_of(f, hints) for f in fields(Settings))
    return _SPECS
