"""Encryption of provider credentials at rest: AES-256-GCM envelopes with key ids.

Each secret gets a fresh 256-bit data key; the data key is wrapped by the master key
(AES-GCM too) and stored beside the ciphertext with the master key's id. Rotation adds a
new master key and re-wraps data keys; old keys stay readable until every envelope is
re-wrapped (``keyfob vault rotate``). The master key lives in a file created 0600 in the
data dir, or comes from ``KEYFOB_MASTER_KEY`` (hosted mode requires the latter).

The envelope is one string, ``v1.<key_id>.<wrapped_dek>.<nonce>.<ciphertext>`` (base64url
parts), so storage needs a single text column and never sees the plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class VaultError(Exception):
    """A credential could not be decrypted (wrong key, tampered envelope)."""


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id_of(key: bytes) -> str:
    """A short public id of a master key (a hash prefix, never the key)."""
    return hashlib.sha256(b"keyfob-key-id" + key).hexdigest()[:12]


def write_secret_file(path: Path, data: str) -> None:
    """Create ``path`` with mode 0600 from the first byte (no window where it is readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data.encode("utf-8"))
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


@dataclass
class Vault:
    #: key id -> key; ``current`` encrypts, every key decrypts.
    keys: dict[str, bytes]
    current: str
    #: The key file this ring came from (personal mode), read again when an envelope
    #: names a key this process has not seen: ``keyfob vault rotate`` run beside a
    #: running server appends one.
    path: Path | None = None

    @classmethod
    def from_keys(cls, keys: list[bytes]) -> Vault:
        if not keys:
            raise VaultError("no master key")
        for key in keys:
            if len(key) != 32:
                raise VaultError("master keys are 32 bytes")
        ids = {key_id_of(k): k for k in keys}
        return cls(keys=ids, current=key_id_of(keys[-1]))

    @classmethod
    def load(cls, data_dir: Path, env_key: str | None = None) -> Vault:
        """Load the key ring: ``KEYFOB_MASTER_KEY`` (comma-separated, newest last) or the file."""
        if env_key:
            return cls.from_keys([_b64d(part.strip()) for part in env_key.split(",") if part])
        path = data_dir / "master.key"
        if not path.exists():
            write_secret_file(path, json.dumps({"keys": [_b64e(secrets.token_bytes(32))]}))
        ring = json.loads(path.read_text("utf-8"))
        vault = cls.from_keys([_b64d(k) for k in ring["keys"]])
        vault.path = path
        return vault

    def _reload(self) -> None:
        if self.path is not None and self.path.exists():
            ring = json.loads(self.path.read_text("utf-8"))
            fresh = Vault.from_keys([_b64d(k) for k in ring["keys"]])
            self.keys, self.current = fresh.keys, fresh.current

    @staticmethod
    def rotate_file(data_dir: Path) -> str:
        """Append a fresh master key to the key file; returns its id."""
        path = data_dir / "master.key"
        ring = json.loads(path.read_text("utf-8")) if path.exists() else {"keys": []}
        key = secrets.token_bytes(32)
        ring["keys"].append(_b64e(key))
        write_secret_file(path, json.dumps(ring))
        return key_id_of(key)

    def encrypt(self, plaintext: str, context: str = "") -> str:
        """Seal ``plaintext``; ``context`` (a row id, say) is bound as associated data."""
        dek = AESGCM.generate_key(bit_length=256)
        wrap_nonce = secrets.token_bytes(12)
        wrapped = wrap_nonce + AESGCM(self.keys[self.current]).encrypt(
            wrap_nonce, dek, self.current.encode()
        )
        nonce = secrets.token_bytes(12)
        ct = AESGCM(dek).encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return ".".join(["v1", self.current, _b64e(wrapped), _b64e(nonce), _b64e(ct)])

    def decrypt(self, envelope: str, context: str = "") -> str:
        try:
            version, key_id, wrapped_b64, nonce_b64, ct_b64 = envelope.split(".")
        except ValueError:
            raise VaultError("malformed envelope") from None
        if version == "v1" and key_id not in self.keys:
            self._reload()
        if version != "v1" or key_id not in self.keys:
            raise VaultError(f"unknown key id {key_id!r}")
        try:
            wrapped = _b64d(wrapped_b64)
            dek = AESGCM(self.keys[key_id]).decrypt(wrapped[:12], wrapped[12:], key_id.encode())
            plain = AESGCM(dek).decrypt(_b64d(nonce_b64), _b64d(ct_b64), context.encode())
        except (InvalidTag, ValueError):
            raise VaultError("credential cannot be decrypted with this key ring") from None
        return plain.decode("utf-8")

    @staticmethod
    def key_id_in(envelope: str) -> str | None:
        """The id of the master key that sealed ``envelope`` (None when malformed)."""
        parts = envelope.split(".")
        return parts[1] if len(parts) == 5 and parts[0] == "v1" else None

    @staticmethod
    def new_key() -> str:
        """A fresh master key, base64url (for ``KEYFOB_MASTER_KEY``)."""
        return _b64e(secrets.token_bytes(32))

    def rewrap(self, envelope: str, context: str = "") -> str:
        """Re-seal an envelope under the current key (for rotation)."""
        return self.encrypt(self.decrypt(envelope, context), context)

    def derive(self, purpose: bytes) -> bytes:
        """A stable 32-byte key for ``purpose`` (webhook signing...), from the oldest master
        key so that rotation does not change what receivers verify against."""
        oldest = next(iter(self.keys.values()))
        return hashlib.sha256(b"keyfob-derive:" + purpose + b":" + oldest).digest()

    def __repr__(self) -> str:  # never show key material
        return f"Vault(key_ids={sorted(self.keys)}, current={self.current!r})"
