"""Plain records the store hands out: no ORM objects cross the storage boundary."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from keyfob.metering.types import WindowState as WindowState


def _models(raw: str) -> tuple[str, ...]:
    return tuple(json.loads(raw or "[]"))


@dataclass(frozen=True)
class User:
    id: str
    username: str
    password_hash: str
    timezone: str
    is_owner: bool
    created_at: float
    default_cap_micro_usd: int | None = None
    #: admin | member
    role: str = "member"
    #: When an admin disabled the person (None: active).
    disabled_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def active(self) -> bool:
        return self.disabled_at is None

    @classmethod
    def of(cls, row: Any) -> User:
        m = row._mapping
        return cls(
            m["id"],
            m["username"],
            m["password_hash"],
            m["timezone"],
            bool(m["is_owner"]),
            m["created_at"],
            m["default_cap_micro_usd"],
            m["role"],
            m["disabled_at"],
        )

    def __repr__(self) -> str:  # keep the hash out of logs
        return f"User(id={self.id!r}, username={self.username!r})"


@dataclass(frozen=True)
class Provider:
    id: str
    user_id: str
    name: str
    kind: str
    base_url: str
    credential_envelope: str | None
    credential_kind: str
    is_local: bool
    models: tuple[str, ...]
    created_at: float

    @classmethod
    def of(cls, row: Any) -> Provider:
        m = row._mapping
        return cls(
            m["id"],
            m["user_id"],
            m["name"],
            m["kind"],
            m["base_url"],
            m["credential_envelope"],
            m["credential_kind"],
            bool(m["is_local"]),
            _models(m["models_json"]),
            m["created_at"],
        )

    def __repr__(self) -> str:
        return f"Provider(id={self.id!r}, name={self.name!r}, base_url={self.base_url!r})"


class Catalog(list[Provider]):
    """A person's providers in preference order, with their model aliases: one snapshot,
    cached as a whole by the gateway so resolving a model never reads the database."""

    def __init__(self, providers: Iterable[Provider] = (), aliases: dict[str, str] | None = None):
        super().__init__(providers)
        #: alias -> target (a canonical ``PROVIDER/MODEL`` or a bare model name).
        self.aliases: dict[str, str] = dict(aliases or {})


@dataclass(frozen=True)
class PriceOverride:
    input_micro_usd_per_mtok: int
    output_micro_usd_per_mtok: int
    cached_input_micro_usd_per_mtok: int | None


@dataclass(frozen=True, slots=True)
class LimitOverride:
    """A person's own limits for one model of one provider (None: keep the shipped one)."""

    context_window_tokens: int | None = None
    max_output_tokens: int | None = None
    image_rule: str | None = None
    #: Per-use server-tool prices, ((tool name, micro-USD per use), ...), sorted by name.
    tool_prices: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Client:
    id: str
    name: str
    redirect_uris: tuple[str, ...]
    is_public: bool
    secret_hash: str | None
    created_at: float
    #: registered (by the owner) | dynamic (RFC 7591) | metadata_document (fetched URL)
    kind: str = "registered"
    metadata_json: str | None = None
    fetched_at: float | None = None
    #: Who registered it (None: it registered or describes itself).
    registered_by: str | None = None
    #: When an admin vouched for it (None: not verified).
    verified_at: float | None = None

    @property
    def verified(self) -> bool:
        return self.verified_at is not None

    @classmethod
    def of(cls, row: Any) -> Client:
        m = row._mapping
        return cls(
            m["id"],
            m["name"],
            _models(m["redirect_uris_json"]),
            bool(m["is_public"]),
            m["secret_hash"],
            m["created_at"],
            m["kind"],
            m["metadata_json"],
            m["fetched_at"],
            m["registered_by"],
            m["verified_at"],
        )

    def __repr__(self) -> str:  # keep the secret's hash out of logs
        return f"Client(id={self.id!r}, name={self.name!r}, kind={self.kind!r})"


@dataclass(frozen=True)
class Grant:
    id: str
    user_id: str
    client_id: str
    models: tuple[str, ...]
    cap_micro_usd: int
    window: str
    timezone: str
    created_at: float
    updated_at: float
    revoked_at: float | None
    policy_json: str | None = None
    #: When the grant ends by itself (None: never); its tokens expire by then too.
    expires_at: float | None = None

    @classmethod
    def of(cls, row: Any) -> Grant:
        m = row._mapping
        return cls(
            m["id"],
            m["user_id"],
            m["client_id"],
            _models(m["models_json"]),
            m["cap_micro_usd"],
            m["window"],
            m["timezone"],
            m["created_at"],
            m["updated_at"],
            m["revoked_at"],
            m["policy_json"],
            m["expires_at"],
        )

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def live(self, now: float) -> bool:
        """Neither revoked nor expired: what every endpoint requires."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class AuthCode:
    code_hash: str
    client_id: str
    user_id: str
    grant_id: str
    redirect_uri: str
    code_challenge: str
    scope: str
    resource: str | None
    expires_at: float
    used_at: float | None

    @classmethod
    def of(cls, row: Any) -> AuthCode:
        m = row._mapping
        return cls(
            m["code_hash"],
            m["client_id"],
            m["user_id"],
            m["grant_id"],
            m["redirect_uri"],
            m["code_challenge"],
            m["scope"],
            m["resource"],
            m["expires_at"],
            m["used_at"],
        )


@dataclass(frozen=True)
class DeviceCode:
    """A device authorization request (RFC 8628) waiting for, or holding, a decision."""

    device_code_hash: str
    user_code_hash: str
    client_id: str
    scope: str
    resource: str | None
    request_json: str
    status: str
    interval_s: int
    created_at: float
    expires_at: float
    last_polled_at: float | None = None
    user_id: str | None = None
    grant_id: str | None = None
    decided_at: float | None = None

    @classmethod
    def of(cls, row: Any) -> DeviceCode:
        m = row._mapping
        return cls(**{f: m[f] for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Token:
    token_hash: str
    kind: str
    grant_id: str
    client_id: str
    family_id: str
    scope: str
    resource: str | None
    created_at: float
    expires_at: float
    used_at: float | None
    revoked_at: float | None

    @classmethod
    def of(cls, row: Any) -> Token:
        m = row._mapping
        return cls(
            m["token_hash"],
            m["kind"],
            m["grant_id"],
            m["client_id"],
            m["family_id"],
            m["scope"],
            m["resource"],
            m["created_at"],
            m["expires_at"],
            m["used_at"],
            m["revoked_at"],
        )


@dataclass(frozen=True)
class LedgerEntry:
    id: str
    grant_id: str
    user_id: str
    client_id: str
    provider_id: str | None
    model: str
    endpoint: str
    streamed: bool
    status: str
    reserved_micro_usd: int
    cost_micro_usd: int | None
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None
    reasoning_tokens: int | None
    usage_source: str | None
    needs_reconciliation: bool
    window_keys: tuple[str, ...]
    upstream_status: int | None
    error: str | None
    created_at: float
    settled_at: float | None
    tokens_reserved: int | None = None
    from_wallet: bool = False
    downgraded_from: str | None = None

    @classmethod
    def of(cls, row: Any) -> LedgerEntry:
        m = row._mapping
        return cls(
            m["id"],
            m["grant_id"],
            m["user_id"],
            m["client_id"],
            m["provider_id"],
            m["model"],
            m["endpoint"],
            bool(m["streamed"]),
            m["status"],
            m["reserved_micro_usd"],
            m["cost_micro_usd"],
            m["input_tokens"],
            m["output_tokens"],
            m["cached_input_tokens"],
            m["reasoning_tokens"],
            m["usage_source"],
            bool(m["needs_reconciliation"]),
            _models(m["window_keys_json"]),
            m["upstream_status"],
            m["error"],
            m["created_at"],
            m["settled_at"],
            m["tokens_reserved"],
            bool(m["from_wallet"]),
            m["downgraded_from"],
        )


@dataclass(frozen=True)
class Wallet:
    user_id: str
    balance_micro_usd: int
    reserved_micro_usd: int
    monthly_refill_micro_usd: int | None
    refilled_for: str | None

    @property
    def available_micro_usd(self) -> int:
        return max(0, self.balance_micro_usd - self.reserved_micro_usd)


@dataclass(frozen=True)
class WalletTransaction:
    id: str
    user_id: str
    kind: str
    amount_micro_usd: int
    balance_after_micro_usd: int
    ledger_id: str | None
    note: str | None
    created_at: float


@dataclass(frozen=True)
class Refusal:
    """Calls an allowance refused: one row per grant, limit and minute, with a count."""

    id: str
    user_id: str
    grant_id: str
    client_id: str
    model: str
    limit_label: str
    window_key: str
    needed_micro_usd: int
    left_micro_usd: int
    retry_at: float | None
    count: int
    created_at: float
    last_at: float

    @classmethod
    def of(cls, row: Any) -> Refusal:
        m = row._mapping
        return cls(**{f: m[f] for f in cls.__dataclass_fields__})
