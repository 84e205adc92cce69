"""Provider credentials at rest: AES-GCM envelopes, key ids, rotation, a 0600 key file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from keyfob.vault import Vault, VaultError, key_id_of


def test_roundtrip_and_context_binding(tmp_path: Path) -> None:
    vault = Vault.load(tmp_path)
    env = vault.encrypt("sk-secret-value", context="provider-1")
    assert "sk-secret-value" not in env
    assert env.startswith("v1." + vault.current + ".")
    assert vault.decrypt(env, context="provider-1") == "sk-secret-value"
    with pytest.raises(VaultError):
        vault.decrypt(env, context="provider-2")  # an envelope moved to another row


def test_same_secret_encrypts_differently(tmp_path: Path) -> None:
    vault = Vault.load(tmp_path)
    assert vault.encrypt("k", "c") != vault.encrypt("k", "c")


@pytest.mark.parametrize("part", [2, 3, 4])
def test_tampering_is_detected(tmp_path: Path, part: int) -> None:
    vault = Vault.load(tmp_path)
    parts = vault.encrypt("sk-secret-value", "ctx").split(".")
    raw = bytearray(parts[part].encode())
    raw[5] = ord("A") if raw[5] != ord("A") else ord("B")
    parts[part] = raw.decode()
    with pytest.raises(VaultError) as info:
        vault.decrypt(".".join(parts), "ctx")
    assert "sk-secret-value" not in str(info.value)


def test_malformed_and_unknown_key(tmp_path: Path) -> None:
    vault = Vault.load(tmp_path)
    with pytest.raises(VaultError):
        vault.decrypt("garbage", "")
    env = vault.encrypt("x", "")
    other = Vault.load(tmp_path / "other")
    with pytest.raises(VaultError, match="unknown key id"):
        other.decrypt(env, "")


def test_master_key_file_is_0600(tmp_path: Path) -> None:
    Vault.load(tmp_path)
    mode = stat.S_IMODE((tmp_path / "master.key").stat().st_mode)
    assert mode == 0o600
    Vault.rotate_file(tmp_path)
    assert stat.S_IMODE((tmp_path / "master.key").stat().st_mode) == 0o600


def test_rotation_rewraps_and_keeps_old_envelopes_readable(tmp_path: Path) -> None:
    old = Vault.load(tmp_path)
    env = old.encrypt("sk-rotate-me", "p1")
    new_id = Vault.rotate_file(tmp_path)
    ring = Vault.load(tmp_path)
    assert ring.current == new_id != old.current
    assert ring.decrypt(env, "p1") == "sk-rotate-me"
    rewrapped = ring.rewrap(env, "p1")
    assert rewrapped.split(".")[1] == new_id
    assert ring.decrypt(rewrapped, "p1") == "sk-rotate-me"
    assert len(json.loads((tmp_path / "master.key").read_text())["keys"]) == 2


def test_env_key_ring_and_repr_hides_keys(tmp_path: Path) -> None:
    import base64

    k1, k2 = b"\x01" * 32, b"\x02" * 32
    text = ",".join(base64.urlsafe_b64encode(k).decode().rstrip("=") for k in (k1, k2))
    vault = Vault.load(tmp_path, text)
    assert vault.current == key_id_of(k2)
    assert not (tmp_path / "master.key").exists()
    assert base64.urlsafe_b64encode(k1).decode().rstrip("=") not in repr(vault)
    with pytest.raises(VaultError):
        Vault.from_keys([b"short"])


def test_data_dir_files_holding_secrets_are_private(tmp_path: Path) -> None:
    """The database, key file and session key are 0600 and the data dir 0700 from the
    first start (checked on a brand-new data dir)."""
    import asyncio
    import stat

    from keyfob.context import Keyfob
    from keyfob.server import create_app
    from keyfob.settings import Settings

    data = tmp_path / "fresh"
    settings = Settings(data_dir=data)
    create_app(settings)

    async def open_close() -> None:
        kf = await Keyfob.open(settings)
        await kf.close()

    asyncio.run(open_close())
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("keyfob.db", "master.key", "session.key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
