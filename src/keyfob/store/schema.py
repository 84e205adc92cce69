"""Tables of record, as SQLAlchemy Core metadata shared by SQLite and PostgreSQL.

Conventions: ids are text (random hex or client ids); times are float epoch seconds
(UTC); money is BigInteger micro-USD with the unit in the column name; JSON lists are
stored as text so both engines read them the same way.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("timezone", String(64), nullable=False, server_default="UTC"),
    Column("is_owner", Boolean, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    #: What consent pre-fills when an app suggests no cap (NULL: Keyfob's default).
    Column("default_cap_micro_usd", BigInteger, nullable=True),
    #: Unused since sessions live in ``web_sessions`` (migration 0009), which also ends
    #: a single session at logout; kept so the column's migration stays reversible.
    Column("session_epoch", Integer, nullable=False, server_default="0"),
    #: admin | member (migration 0018; the owner of a personal Keyfob is an admin).
    Column("role", String(16), nullable=False, server_default="member"),
    #: Set while an admin has disabled the person: no login, no session, no live grant.
    Column("disabled_at", Float, nullable=True),
)
#: At most one owner (the first admin: the CLI's default person, the end of /setup).
Index(
    "uq_users_one_owner",
    users.c.is_owner,
    unique=True,
    sqlite_where=text("is_owner = 1"),
    postgresql_where=text("is_owner"),
)

providers = Table(
    "providers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("base_url", Text, nullable=False),
    #: AES-GCM envelope (vault.py); NULL for keyless local servers.
    Column("credential_envelope", Text, nullable=True),
    Column("credential_kind", String(64), nullable=False, server_default="api_key"),
    Column("is_local", Boolean, nullable=False, server_default="0"),
    #: JSON list of model ids this provider serves (as the owner listed or discovered).
    Column("models_json", Text, nullable=False, server_default="[]"),
    Column("created_at", Float, nullable=False),
    #: The person's preference order for bare model names (lowest first); NULL: after
    #: the ordered ones, oldest first.
    Column("position", Integer, nullable=True),
    UniqueConstraint("user_id", "name", name="uq_providers_user_name"),
)

#: A person's own names for models: ``fast`` -> ``local/gemma-3-270m``.
model_aliases = Table(
    "model_aliases",
    metadata,
    Column("user_id", String(32), ForeignKey("users.id"), primary_key=True),
    #: No ``/``: canonical ids always mean what they say.
    Column("name", String(255), primary_key=True),
    #: A canonical ``PROVIDER/MODEL`` or a bare model name.
    Column("target", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
)

price_overrides = Table(
    "price_overrides",
    metadata,
    Column("provider_id", String(32), ForeignKey("providers.id"), primary_key=True),
    Column("model", String(255), primary_key=True),
    Column("input_micro_usd_per_mtok", BigInteger, nullable=False),
    Column("output_micro_usd_per_mtok", BigInteger, nullable=False),
    Column("cached_input_micro_usd_per_mtok", BigInteger, nullable=True),
)

#: A person's own limits for a model (``keyfob providers limits``): they win over the
#: shipped model data (``pricing/model_limits.toml``) field by field; NULL keeps it.
model_limit_overrides = Table(
    "model_limit_overrides",
    metadata,
    Column("provider_id", String(32), ForeignKey("providers.id"), primary_key=True),
    Column("model", String(255), primary_key=True),
    Column("context_window_tokens", BigInteger, nullable=True),
    Column("max_output_tokens", BigInteger, nullable=True),
    Column("image_rule", String(64), nullable=True),
    #: {tool name: micro-USD per use} (migration 0016); NULL keeps the shipped prices.
    Column("tool_prices_json", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
)

clients = Table(
    "clients",
    metadata,
    #: An opaque ``kfapp_...`` id, or an https URL (Client ID Metadata Document).
    Column("id", String(255), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("redirect_uris_json", Text, nullable=False),
    Column("is_public", Boolean, nullable=False),
    Column("secret_hash", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    #: registered (by the owner) | dynamic (RFC 7591) | metadata_document (fetched)
    Column("kind", String(32), nullable=False, server_default="registered"),
    #: Extra registration metadata (client_uri, software_id...), JSON; never secrets.
    Column("metadata_json", Text, nullable=True),
    #: When a metadata document was last fetched.
    Column("fetched_at", Float, nullable=True),
    #: The person who registered the app (web page or CLI); NULL for apps that registered
    #: themselves (RFC 7591) or describe themselves (metadata documents).
    Column("registered_by", String(32), nullable=True),
    #: When an admin vouched for the app's name (consent shows it as verified); apps an
    #: admin registers are verified from the start.
    Column("verified_at", Float, nullable=True),
)
Index("ix_clients_registered_by", clients.c.registered_by)

grants = Table(
    "grants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False),
    Column("client_id", String(255), ForeignKey("clients.id"), nullable=False),
    Column("models_json", Text, nullable=False),
    Column("cap_micro_usd", BigInteger, nullable=False),
    Column("window", String(32), nullable=False, server_default="month"),
    Column("timezone", String(64), nullable=False, server_default="UTC"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    #: allowance/policy.py as JSON; NULL means "cap_micro_usd per calendar ``window``".
    Column("policy_json", Text, nullable=True),
    #: When the grant ends by itself (``keyfob_expires_in``, the consent page, the CLI);
    #: NULL: never. Its tokens never outlive it (``GrantsRepo.set_expiry``).
    Column("expires_at", Float, nullable=True),
)
Index("ix_grants_user_client", grants.c.user_id, grants.c.client_id)

auth_codes = Table(
    "auth_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(255), nullable=False),
    Column("user_id", String(32), nullable=False),
    Column("grant_id", String(32), ForeignKey("grants.id"), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("code_challenge", String(128), nullable=False),
    Column("scope", Text, nullable=False, server_default=""),
    Column("resource", Text, nullable=True),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("grant_id", String(32), ForeignKey("grants.id"), nullable=False),
    Column("client_id", String(255), nullable=False),
    #: Every token descended from one authorization code shares a family (RFC 9700 4.14).
    Column("family_id", String(64), nullable=False),
    Column("scope", Text, nullable=False, server_default=""),
    Column("resource", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)
Index("ix_tokens_family", tokens.c.family_id)

#: Device authorization grant (RFC 8628): codes waiting for a person on another screen.
device_codes = Table(
    "device_codes",
    metadata,
    Column("device_code_hash", String(64), primary_key=True),
    #: SHA-256 of the normalised user code (letters only, upper case).
    Column("user_code_hash", String(64), nullable=False),
    Column("client_id", String(255), nullable=False),
    Column("scope", Text, nullable=False, server_default=""),
    Column("resource", Text, nullable=True),
    #: The app's suggestions for the consent page (cap, window, models), JSON.
    Column("request_json", Text, nullable=False, server_default="{}"),
    #: pending -> approved -> used | denied
    Column("status", String(16), nullable=False),
    Column("interval_s", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("last_polled_at", Float, nullable=True),
    Column("user_id", String(32), nullable=True),
    Column("grant_id", String(32), nullable=True),
    Column("decided_at", Float, nullable=True),
    UniqueConstraint("user_code_hash", name="uq_device_codes_user_code"),
)
Index("ix_tokens_grant", tokens.c.grant_id)

#: Every limit's counters (metering/): ``scope`` is a grant id, or ``wallet:<user id>`` for
#: the person's wallet; ``key`` names the period or bucket ("month:2026-12",
#: "roll:18000:1953", "rpm:98765", "wallet"). Caps live in the policy, not here.
counters = Table(
    "counters",
    metadata,
    Column("scope", String(64), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("spent", BigInteger, nullable=False, server_default="0"),
    Column("reserved", BigInteger, nullable=False, server_default="0"),
    #: The grant's ``updated_at`` this counter was computed from the ledger for: a grant
    #: edit (cap, window kind, time zone, per-model caps) makes every counter of the grant
    #: be computed again from the ledger before its next reservation.
    Column("seeded_for", Float, nullable=True),
    #: Time buckets: when the bucket has left every window it belongs to (then deleted).
    Column("expires_at", Float, nullable=True),
)
Index("ix_counters_expires", counters.c.expires_at)

ledger = Table(
    "ledger",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("grant_id", String(32), ForeignKey("grants.id"), nullable=False),
    Column("user_id", String(32), nullable=False),
    Column("client_id", String(255), nullable=False),
    Column("provider_id", String(32), nullable=True),
    Column("model", String(255), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("streamed", Boolean, nullable=False),
    #: reserved -> settled | estimated | charged_reservation | failed
    Column("status", String(32), nullable=False),
    Column("reserved_micro_usd", BigInteger, nullable=False),
    Column("cost_micro_usd", BigInteger, nullable=True),
    Column("input_tokens", Integer, nullable=True),
    Column("output_tokens", Integer, nullable=True),
    Column("cached_input_tokens", Integer, nullable=True),
    Column("reasoning_tokens", Integer, nullable=True),
    #: upstream | estimated | reservation | none
    Column("usage_source", String(16), nullable=True),
    Column("needs_reconciliation", Boolean, nullable=False, server_default="0"),
    #: The counters this call holds (JSON list of keys: each key's prefix says what it
    #: counts, ``metering.rules.measure_of``; ``wallet`` is the person's wallet).
    Column("window_keys_json", Text, nullable=False),
    Column("upstream_status", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("settled_at", Float, nullable=True),
    #: Worst-case tokens held for tokens-per-minute limits until the call settles.
    Column("tokens_reserved", Integer, nullable=True),
    #: The reservation is also held on the person's wallet.
    Column("from_wallet", Boolean, nullable=False, server_default="0"),
    #: The model the app asked for, when the policy served a fallback instead.
    Column("downgraded_from", String(255), nullable=True),
    #: The serving process that reserved it (its dead reservations are released by id).
    Column("instance_id", String(64), nullable=True),
)
Index("ix_ledger_grant_created", ledger.c.grant_id, ledger.c.created_at)
#: Open reservations only (migration 0005): the start-up reconciliation's query.
Index(
    "ix_ledger_reserved",
    ledger.c.created_at,
    sqlite_where=text("status = 'reserved'"),
    postgresql_where=text("status = 'reserved'"),
)

#: Serving processes (hosted mode): a heartbeat each, so a dead one's reservations are
#: released by the others (``keyfob.instances``).
instances = Table(
    "instances",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)
Index(
    "ix_ledger_reserved_instance",
    ledger.c.instance_id,
    sqlite_where=text("status = 'reserved'"),
    postgresql_where=text("status = 'reserved'"),
)

wallets = Table(
    "wallets",
    metadata,
    Column("user_id", String(32), ForeignKey("users.id"), primary_key=True),
    # the balance and holds are the ``wallet`` counter of scope ``wallet:<user id>``
    #: Each calendar month (person's zone) the balance is topped up *to* this amount.
    Column("monthly_refill_micro_usd", BigInteger, nullable=True),
    Column("refilled_for", String(16), nullable=True),
)

wallet_transactions = Table(
    "wallet_transactions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False),
    #: topup | refill | charge
    Column("kind", String(16), nullable=False),
    Column("amount_micro_usd", BigInteger, nullable=False),
    Column("balance_after_micro_usd", BigInteger, nullable=False),
    Column("ledger_id", String(32), nullable=True),
    Column("note", Text, nullable=True),
    Column("created_at", Float, nullable=False),
)
Index(
    "ix_wallet_transactions_user", wallet_transactions.c.user_id, wallet_transactions.c.created_at
)

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("grant_id", String(32), ForeignKey("grants.id"), primary_key=True),
    Column("window_key", String(64), primary_key=True),
    Column("threshold", Integer, primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("delivered_at", Float, nullable=True),
    Column("last_error", Text, nullable=True),
)

#: Calls an allowance refused (no ledger row: no money moved), for the dashboard.
#: Coalesced: repeats of one grant and limit within a minute bump ``count``/``last_at``.
refusals = Table(
    "refusals",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), nullable=False),
    Column("grant_id", String(32), nullable=False),
    Column("client_id", String(255), nullable=False),
    Column("model", String(255), nullable=False),
    Column("limit_label", String(255), nullable=False),
    Column("window_key", String(255), nullable=False),
    Column("needed_micro_usd", BigInteger, nullable=False),
    Column("left_micro_usd", BigInteger, nullable=False),
    Column("retry_at", Float, nullable=True),
    Column("count", Integer, nullable=False, server_default="1"),
    Column("created_at", Float, nullable=False),
    Column("last_at", Float, nullable=False),
)
Index("ix_refusals_user_last", refusals.c.user_id, refusals.c.last_at)

#: Dashboard sessions, server-side: the cookie carries a random id, this table its
#: SHA-256, so logout, a password change or "log out everywhere" ends a session for
#: good (a signed cookie alone stays valid until it expires).
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=False),
)
Index("ix_web_sessions_user", web_sessions.c.user_id)
#: Calls whose upstream billed past the bound Keyfob reserved and sent (it ignored the
#: output limit): the provider is marked by them, and the person is shown each one until
#: they have seen it.
limit_overruns = Table(
    "limit_overruns",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False),
    Column("grant_id", String(32), nullable=True),
    Column("provider_id", String(32), nullable=True),
    Column("model", String(255), nullable=False),
    Column("ledger_id", String(32), nullable=False),
    #: usage_reported (the upstream's own usage was above the bound) | stream_cut
    Column("kind", String(32), nullable=False),
    Column("reserved_micro_usd", BigInteger, nullable=False),
    Column("cost_micro_usd", BigInteger, nullable=False),
    Column("output_limit_tokens", Integer, nullable=True),
    Column("output_tokens", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("seen_at", Float, nullable=True),
)
Index("ix_limit_overruns_user", limit_overruns.c.user_id, limit_overruns.c.created_at)

#: Invite codes (signup mode ``invite``): created by admins, stored as SHA-256, usable
#: ``max_uses`` times until ``expires_at``.
invites = Table(
    "invites",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("code_hash", String(64), nullable=False, unique=True),
    Column("created_by", String(32), nullable=True),
    Column("note", String(200), nullable=True),
    Column("max_uses", Integer, nullable=False, server_default="1"),
    Column("uses", Integer, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)

#: One-time password links an admin makes (a reset, or the first password of a person
#: an admin added): only the SHA-256 of the code is kept, and a new link voids the older.
password_resets = Table(
    "password_resets",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False),
    Column("created_by", String(32), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
)
Index("ix_password_resets_user", password_resets.c.user_id)

#: One-time setup tokens for a hosted server with no owner yet (``keyfob setup-link``,
#: printed by ``keyfob serve``): stored as SHA-256, valid for an hour, used once. In the
#: database because any process behind the load balancer may answer the link.
setup_tokens = Table(
    "setup_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
)
