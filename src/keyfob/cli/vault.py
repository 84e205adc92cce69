"""``keyfob vault ...``: the master keys of the credential vault."""

from __future__ import annotations

import typer

from keyfob.cli.common import (
    DatabaseUrl,
    DataDir,
    console,
    fail,
    settings_for,
    with_kf,
)
from keyfob.context import Keyfob

app = typer.Typer(help="Master keys of the credential vault.", no_args_is_help=True)


@app.command("rotate")
def vault_rotate(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Add a new master key and re-encrypt every stored credential under it."""
    from keyfob.vault import Vault

    settings = settings_for(data_dir, database_url)
    if settings.master_key:
        raise fail(
            "the master key comes from KEYFOB_MASTER_KEY: append a new key there "
            "(comma-separated, newest last) and run this again"
        )
    key_id = Vault.rotate_file(settings.data_dir)

    async def body(kf: Keyfob) -> int:
        count = 0
        for p in await kf.store.providers.list_all():
            if p.credential_envelope:
                await kf.store.providers.set_credential(
                    p.id, kf.vault.rewrap(p.credential_envelope, p.id)
                )
                count += 1
        return count

    count = with_kf(data_dir, database_url, body)
    console.print(f"New master key {key_id}; {count} credential(s) re-encrypted.")
