"""``keyfob vault ...``: the master keys of the credential vault.

Two custodies, one rotation. Personal mode keeps the ring in ``master.key`` in the data
dir: ``rotate`` appends a fresh key to it and re-encrypts. Hosted mode gets the ring from
``KEYFOB_MASTER_KEY`` (or ``_FILE``), which Keyfob cannot write: the operator appends a
key made by ``keyfob vault keygen``, rolls the processes so every one holds both keys,
then runs ``rotate``, which re-encrypts every credential under the newest key while the
servers keep serving (each row is swapped only if it did not change meanwhile), and says
when the old key is no longer used and may be dropped.
"""

from __future__ import annotations

from collections import Counter

import typer

from keyfob.cli.common import DatabaseUrl, DataDir, console, fail, settings_for, with_kf
from keyfob.context import Keyfob

app = typer.Typer(help="Master keys of the credential vault.", no_args_is_help=True)


@app.command("keygen")
def vault_keygen() -> None:
    """Print a new master key (base64url, 32 bytes) to append to KEYFOB_MASTER_KEY."""
    from keyfob.vault import Vault

    print(Vault.new_key())  # stdout alone, for a secret store's CLI


@app.command("rotate")
def vault_rotate(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Re-encrypt every stored credential under the newest master key (personal mode:
    a new key is added to master.key first)."""
    from keyfob.vault import Vault

    settings = settings_for(data_dir, database_url)
    new_id: str | None = None
    if not settings.master_key:
        new_id = Vault.rotate_file(settings.data_dir)

    async def body(kf: Keyfob) -> tuple[int, int, Counter[str], str]:
        rewrapped = changed = 0
        for p in await kf.store.providers.list_all():
            envelope = p.credential_envelope
            if not envelope or Vault.key_id_in(envelope) == kf.vault.current:
                continue
            if await kf.store.providers.replace_credential(
                p.id, envelope, kf.vault.rewrap(envelope, p.id)
            ):
                rewrapped += 1
            else:
                changed += 1  # saved again meanwhile, so already under the current key
        in_use: Counter[str] = Counter()
        for p in await kf.store.providers.list_all():
            key_id = Vault.key_id_in(p.credential_envelope or "")
            if key_id is not None:
                in_use[key_id] += 1
        return rewrapped, changed, in_use, kf.vault.current

    rewrapped, changed, in_use, current = with_kf(data_dir, database_url, body)
    if new_id is not None:
        console.print(f"New master key {new_id} in master.key.")
    console.print(
        f"{rewrapped} credential(s) re-encrypted under key {current}"
        + (f"; {changed} changed meanwhile (already current)" if changed else "")
        + "."
    )
    stale = {k: n for k, n in in_use.items() if k != current}
    if stale:
        raise fail(f"credentials still under older keys: {stale}; run this again")
    if settings.master_key:
        console.print(
            "No credential uses an older key: you may drop every key but the newest from "
            "KEYFOB_MASTER_KEY (keep a backup of the old ones for backups taken before now)."
        )
