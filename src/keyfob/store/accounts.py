"""People and their linked providers."""

from __future__ import annotations

import builtins
import json
import time
from typing import Any

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from keyfob.store import schema as t
from keyfob.store.records import Catalog, LimitOverride, PriceOverride, Provider, User
from keyfob.tokens import new_id


class UsersRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self,
        username: str,
        password_hash: str,
        *,
        timezone: str = "UTC",
        is_owner: bool = False,
        role: str | None = None,
    ) -> User:
        """A new person; the owner is always an admin. Raises ``IntegrityError`` when the
        username is taken or a second owner is attempted (one-owner index)."""
        values = dict(
            id=new_id(),
            username=username,
            password_hash=password_hash,
            timezone=timezone,
            is_owner=is_owner,
            created_at=time.time(),
            role="admin" if is_owner else (role or "member"),
        )
        async with self.engine.begin() as conn:
            await conn.execute(insert(t.users).values(**values))
        return User(**values)  # type: ignore[arg-type]

    async def list(self) -> builtins.list[User]:
        """Everyone, oldest first (admin pages and ``keyfob users list``)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(t.users).order_by(t.users.c.created_at))).all()
        return [User.of(r) for r in rows]

    async def active_admins(self) -> int:
        c = t.users.c
        q = select(func.count()).where(c.role == "admin", c.disabled_at.is_(None))
        async with self.engine.connect() as conn:
            return int((await conn.execute(q)).scalar_one())

    async def set_role(self, user_id: str, role: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(t.users).where(t.users.c.id == user_id).values(role=role))

    async def enable(self, user_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.users).where(t.users.c.id == user_id).values(disabled_at=None)
            )

    async def get(self, user_id: str) -> User | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.users).where(t.users.c.id == user_id))).first()
        return User.of(row) if row else None

    async def by_username(self, username: str) -> User | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(t.users).where(t.users.c.username == username))
            ).first()
        return User.of(row) if row else None

    async def owner(self) -> User | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(t.users)
                    .where(t.users.c.is_owner.is_(True))
                    .order_by(t.users.c.created_at)
                    .limit(1)
                )
            ).first()
        return User.of(row) if row else None

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(t.users))).scalar_one())

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.users).where(t.users.c.id == user_id).values(password_hash=password_hash)
            )

    async def set_preferences(
        self, user_id: str, *, timezone: str, default_cap_micro_usd: int | None
    ) -> None:
        """The person's time zone (new grants and reports) and default consent cap."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.users)
                .where(t.users.c.id == user_id)
                .values(timezone=timezone, default_cap_micro_usd=default_cap_micro_usd)
            )


def _ordered(user_id: str) -> Select[Any]:
    """Preference order: chosen positions first, then the rest oldest first."""
    p = t.providers.c
    return (
        select(t.providers)
        .where(p.user_id == user_id)
        .order_by(p.position.is_(None), p.position, p.created_at)
    )


class ProvidersRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(
        self,
        *,
        user_id: str,
        name: str,
        kind: str,
        base_url: str,
        credential_envelope: str | None,
        credential_kind: str = "api_key",
        is_local: bool = False,
        models: list[str] | None = None,
        provider_id: str | None = None,
    ) -> Provider:
        values = dict(
            id=provider_id or new_id(),
            user_id=user_id,
            name=name,
            kind=kind,
            base_url=base_url,
            credential_envelope=credential_envelope,
            credential_kind=credential_kind,
            is_local=is_local,
            models_json=json.dumps(sorted(set(models or []))),
            created_at=time.time(),
        )
        async with self.engine.begin() as conn:
            await conn.execute(insert(t.providers).values(**values))
        row = await self.get(str(values["id"]))
        assert row is not None
        return row

    async def get(self, provider_id: str) -> Provider | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(t.providers).where(t.providers.c.id == provider_id))
            ).first()
        return Provider.of(row) if row else None

    async def by_name(self, user_id: str, name: str) -> Provider | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(t.providers).where(
                        t.providers.c.user_id == user_id, t.providers.c.name == name
                    )
                )
            ).first()
        return Provider.of(row) if row else None

    async def list(self, user_id: str) -> list[Provider]:
        """The person's providers in their preference order (``set_order``)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(_ordered(user_id))).all()
        return [Provider.of(r) for r in rows]

    async def catalog(self, user_id: str) -> Catalog:
        """Providers in preference order and the person's aliases, read together."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(_ordered(user_id))).all()
            aliases = (
                await conn.execute(
                    select(t.model_aliases.c.name, t.model_aliases.c.target).where(
                        t.model_aliases.c.user_id == user_id
                    )
                )
            ).all()
        return Catalog((Provider.of(r) for r in rows), {a.name: a.target for a in aliases})

    async def set_order(self, user_id: str, names: builtins.list[str]) -> builtins.list[str]:
        """Put the named providers first, in this order; the others keep their order
        after them. Returns every provider's name in the new order."""
        current = await self.list(user_id)
        by_name = {p.name: p for p in current}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise KeyError(f"no provider named {unknown[0]!r}")
        first = list(dict.fromkeys(names))
        order = first + [p.name for p in current if p.name not in first]
        async with self.engine.begin() as conn:
            for position, name in enumerate(order):
                await conn.execute(
                    update(t.providers)
                    .where(t.providers.c.id == by_name[name].id)
                    .values(position=position)
                )
        return order

    async def aliases(self, user_id: str) -> dict[str, str]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(t.model_aliases.c.name, t.model_aliases.c.target)
                    .where(t.model_aliases.c.user_id == user_id)
                    .order_by(t.model_aliases.c.name)
                )
            ).all()
        return {r.name: r.target for r in rows}

    async def set_alias(self, user_id: str, name: str, target: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(t.model_aliases).where(
                    t.model_aliases.c.user_id == user_id, t.model_aliases.c.name == name
                )
            )
            await conn.execute(
                insert(t.model_aliases).values(
                    user_id=user_id, name=name, target=target, created_at=time.time()
                )
            )

    async def remove_alias(self, user_id: str, name: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(t.model_aliases).where(
                    t.model_aliases.c.user_id == user_id, t.model_aliases.c.name == name
                )
            )
        return bool(result.rowcount)

    async def list_all(self) -> builtins.list[Provider]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(t.providers).order_by(t.providers.c.created_at))
            ).all()
        return [Provider.of(r) for r in rows]

    async def set_models(self, provider_id: str, models: builtins.list[str]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.providers)
                .where(t.providers.c.id == provider_id)
                .values(models_json=json.dumps(sorted(set(models))))
            )

    async def set_credential(self, provider_id: str, envelope: str | None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.providers)
                .where(t.providers.c.id == provider_id)
                .values(credential_envelope=envelope)
            )

    async def replace_credential(self, provider_id: str, old: str, new: str) -> bool:
        """Swap an envelope for its re-encryption, unless the credential changed since it
        was read (a person saving a new key meanwhile wins): key rotation while serving."""
        c = t.providers.c
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(t.providers)
                .where(c.id == provider_id, c.credential_envelope == old)
                .values(credential_envelope=new)
            )
        return bool(result.rowcount)

    async def remove(self, provider_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(t.price_overrides).where(t.price_overrides.c.provider_id == provider_id)
            )
            await conn.execute(
                delete(t.model_limit_overrides).where(
                    t.model_limit_overrides.c.provider_id == provider_id
                )
            )
            await conn.execute(delete(t.providers).where(t.providers.c.id == provider_id))

    async def set_price(
        self,
        provider_id: str,
        model: str,
        *,
        input_micro_usd_per_mtok: int,
        output_micro_usd_per_mtok: int,
        cached_input_micro_usd_per_mtok: int | None = None,
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(t.price_overrides).where(
                    t.price_overrides.c.provider_id == provider_id,
                    t.price_overrides.c.model == model,
                )
            )
            await conn.execute(
                insert(t.price_overrides).values(
                    provider_id=provider_id,
                    model=model,
                    input_micro_usd_per_mtok=input_micro_usd_per_mtok,
                    output_micro_usd_per_mtok=output_micro_usd_per_mtok,
                    cached_input_micro_usd_per_mtok=cached_input_micro_usd_per_mtok,
                )
            )

    async def set_limits(self, provider_id: str, model: str, limits: LimitOverride) -> None:
        """Set (or, with every field None, remove) a person's limits for a model."""
        lo = t.model_limit_overrides
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(lo).where(lo.c.provider_id == provider_id, lo.c.model == model)
            )
            if limits == LimitOverride():
                return
            await conn.execute(
                insert(lo).values(
                    provider_id=provider_id,
                    model=model,
                    context_window_tokens=limits.context_window_tokens,
                    max_output_tokens=limits.max_output_tokens,
                    image_rule=limits.image_rule,
                    tool_prices_json=(
                        json.dumps(dict(limits.tool_prices)) if limits.tool_prices else None
                    ),
                    updated_at=time.time(),
                )
            )

    async def limits(self, provider_id: str) -> dict[str, LimitOverride]:
        """The person's limit overrides for a provider's models, by model name."""
        lo = t.model_limit_overrides
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(lo).where(lo.c.provider_id == provider_id))).all()
        return {
            r.model: LimitOverride(
                r.context_window_tokens,
                r.max_output_tokens,
                r.image_rule,
                tuple(sorted(json.loads(r.tool_prices_json).items())) if r.tool_prices_json else (),
            )
            for r in rows
        }

    async def remove_price(self, provider_id: str, model: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(t.price_overrides).where(
                    t.price_overrides.c.provider_id == provider_id,
                    t.price_overrides.c.model == model,
                )
            )
        return bool(result.rowcount)

    async def set_base_url(self, provider_id: str, base_url: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t.providers).where(t.providers.c.id == provider_id).values(base_url=base_url)
            )

    async def prices(self, provider_id: str) -> dict[str, PriceOverride]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(t.price_overrides).where(t.price_overrides.c.provider_id == provider_id)
                )
            ).all()
        return {
            r.model: PriceOverride(
                r.input_micro_usd_per_mtok,
                r.output_micro_usd_per_mtok,
                r.cached_input_micro_usd_per_mtok,
            )
            for r in rows
        }
