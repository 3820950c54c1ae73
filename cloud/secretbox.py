"""Secrets the cloud must read back, encrypted at rest: AES-256-GCM (NIST SP 800-38D) under a key ring.

An ESP32 node signs with HMAC-SHA256, so the cloud needs the node's secret itself, not a hash of it.
The store keeps it sealed: ``enc1:<key id>:<base64url(nonce || ciphertext || tag)>``, with the row it
belongs to as associated data, so a copy of the database alone signs nothing and a sealed value moved to
another row does not open. The key lives outside the database (``CARBONLINK_SECRET_KEY`` or a 0600 key
file; cloud/settings.py).

A key ring is a list of 32-byte keys, the first one current. Sealing uses the current key; opening
finds the key by its id. Rotating: put a new key first and keep the old one after it, start the cloud
once (it re-seals every secret under the new key), then drop the old key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc1:"
KEY_BYTES = 32
NONCE_BYTES = 12
HOW_TO_MAKE = "`openssl rand -hex 32` (or `python -c 'import secrets; print(secrets.token_hex(32))'`)"


class SecretKeyError(RuntimeError):
    """A key is missing, malformed or does not open a sealed secret; the message says which and how to fix."""


def key_id(key: bytes) -> str:
    """A short, public name of a key: 8 hex digits of SHA-256 over a label and the key."""
    return hashlib.sha256(b"carbonlink secret key id\x00" + key).hexdigest()[:8]


def parse_key(text: str, where: str) -> bytes:
    """One key, as 64 hex digits or base64 of 32 bytes."""
    text = text.strip()
    raw: bytes | None = None
    try:
        raw = bytes.fromhex(text) if len(text) == 2 * KEY_BYTES else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raw = None
    if raw is None or len(raw) != KEY_BYTES:
        raise SecretKeyError(f"{where}: a key must be 32 random bytes as 64 hex digits (or base64); make one with"
                             f" {HOW_TO_MAKE}")
    return raw


def parse_ring(text: str, where: str) -> list[bytes]:
    """Keys separated by commas or lines ('#' starts a comment); the first is the current one."""
    items = [item.strip() for line in text.splitlines() for item in line.split("#", 1)[0].split(",")]
    keys = [parse_key(item, where) for item in items if item]
    if not keys:
        raise SecretKeyError(f"{where} holds no key; make one with {HOW_TO_MAKE}")
    return keys


def read_key_file(path: Path) -> list[bytes]:
    """The ring in ``path``; refused when others than its owner may read it."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise SecretKeyError(f"{path} may be read by others (mode {mode & 0o777:o}); fix: chmod 600 {path}")
    return parse_ring(path.read_text(), str(path))


def create_key_file(path: Path) -> list[bytes]:
    """Generate a key into ``path`` (0600, folder 0700) unless another process just did; return the ring.

    Written to a temporary file and linked into place, so a concurrent reader never sees half a key.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("# CarbonLink secret key ring: the first key seals, the others only open. Keep it out of"
                    " backups of the database.\n" + secrets.token_hex(KEY_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    finally:
        os.unlink(tmp)
    return read_key_file(path)


class SecretBox:
    """Seal and open short secrets with a key ring (the first key seals)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys or any(len(k) != KEY_BYTES for k in keys):
            raise SecretKeyError("a key ring needs at least one key of 32 bytes")
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self.current = key_id(keys[0])

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    @staticmethod
    def is_sealed(text: str) -> bool:
        return text.startswith(PREFIX)

    @staticmethod
    def key_id_of(sealed: str) -> str:
        return sealed[len(PREFIX):].split(":", 1)[0]

    def seal(self, plaintext: str, context: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)  # 96-bit random nonces: fine far below 2^32 seals per key
        body = self._keys[self.current].encrypt(nonce, plaintext.encode(), context.encode())
        return f"{PREFIX}{self.current}:{base64.urlsafe_b64encode(nonce + body).decode()}"

    def open(self, sealed: str, context: str) -> str:
        kid, sep, body = sealed[len(PREFIX):].partition(":")
        if not self.is_sealed(sealed) or not sep:
            raise SecretKeyError(f"{context}: not a sealed secret")
        aead = self._keys.get(kid)
        if aead is None:
            raise SecretKeyError(f"{context} is sealed with key id {kid}, which is not in the key ring"
                                 f" (ids {', '.join(self._keys)}); add that key to CARBONLINK_SECRET_KEY or the"
                                 " key file, after the current one")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()).decode()
        except (InvalidTag, ValueError, binascii.Error):
            raise SecretKeyError(f"{context}: the sealed secret does not open with key {kid}: it was altered or"
                                 " moved from another row") from None
