"""The CLI shows money as the pages do and labels every cap with its own window."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.support import cli, mint_token


def _set_policy(data_dir: Path, grant_id: str, policy: dict[str, object]) -> None:
    async def go() -> None:
        from keyfob.settings import Settings
        from keyfob.store import Store

        store = await Store.open(Settings(data_dir=data_dir).effective_database_url)
        try:
            await store.grants.set_policy(
                grant_id, policy_json=json.dumps(policy), cap_micro_usd=3_000_000
            )
        finally:
            await store.close()

    asyncio.run(go())


def test_apps_list_labels_each_cap_with_its_window(owned_data_dir: Path) -> None:
    minted = mint_token(owned_data_dir, ["p/m"], 3_000_000, client_name="Weekly Writer")
    _set_policy(
        owned_data_dir,
        minted["grant_id"],
        {
            "limits": [
                {"period": "week", "cap_micro_usd": 3_000_000},
                {"period": "rolling", "seconds": 18_000, "cap_micro_usd": 500_000},
            ]
        },
    )
    out = cli(owned_data_dir, "apps", "list").stdout
    assert "$3.00 / week" in out
    assert "$0.50 / rolling 5h" in out
    assert "/ month" not in out
    assert "3.000000" not in out


def test_wallet_amounts_read_as_money(owned_data_dir: Path) -> None:
    assert "Wallet balance: $2.50" in cli(owned_data_dir, "wallet", "topup", "2.5").stdout
    shown = cli(owned_data_dir, "wallet", "show").stdout
    assert "balance $2.50" in shown


def test_providers_add_warns_about_a_dead_address_and_unpriced_models(
    owned_data_dir: Path,
) -> None:
    from tests.support import free_port

    added = cli(
        owned_data_dir,
        "providers",
        "add",
        "offline",
        "--base-url",
        f"http://127.0.0.1:{free_port()}/v1",
        "--model",
        "mystery-model-9000",
        "--no-key",
    )
    assert "Linked offline" in added.stdout
    assert "Connection test failed: nothing answers at 127.0.0.1" in added.stderr
    assert "No price is known for mystery-model-9000" in added.stderr
