"""The services one running Keyfob shares between its rooms, built once at start-up."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keyfob.allowance.service import AllowanceService
from keyfob.settings import Settings
from keyfob.store import Store
from keyfob.vault import Vault

if TYPE_CHECKING:
    import aiohttp

    from keyfob.providers import ProviderRegistry
    from keyfob.providers.egress import Resolve


@dataclass
class Keyfob:
    settings: Settings
    store: Store
    vault: Vault
    allowance: AllowanceService
    providers: ProviderRegistry
    #: One pooled client session for every upstream call (created in the lifespan).
    http: aiohttp.ClientSession | None = None
    #: How upstream host names are resolved (hosted mode checks every answer, see
    #: ``providers/egress.py``); None: the system's resolver. Tests inject one.
    resolve: Resolve | None = None
    #: Redis (``redis.asyncio.Redis``) when ``KEYFOB_REDIS_URL`` is set and the process
    #: serves: shared login throttles and registration limits (``shared.py``).
    redis: Any = None
    started_at: float = field(default_factory=time.time)

    @classmethod
    async def open(cls, settings: Settings, *, serving: bool = False) -> Keyfob:
        from keyfob.providers import ProviderRegistry

        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        from keyfob.store.engine import PoolOptions

        store = await Store.open(
            settings.effective_database_url,
            serving=serving,
            migrate=settings.migrate_on_start,
            pool=PoolOptions.of(settings),
        )
        vault = Vault.load(settings.data_dir, settings.master_key)
        instance_id = None
        if serving and settings.mode == "hosted":
            from keyfob.instances import new_instance_id

            instance_id = settings.instance_id or new_instance_id()
        allowance = AllowanceService(
            store, signing_key=vault.derive(b"keyfob-webhooks"), instance_id=instance_id
        )
        return cls(settings, store, vault, allowance, ProviderRegistry.load())

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.store.close()
