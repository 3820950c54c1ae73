"""Every implementation of the wire format is held to the JSON vectors in tests/vectors/."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from carbonlink.kernel.wire import Batch, Reading, canonical_number, parse_batch, parse_ts, sign_batch, verify_batch

VECTORS = Path(__file__).parent.parent / "vectors"
BATCH_FILES = sorted(VECTORS.glob("batch-*.json"))


def test_vector_files_exist() -> None:
    assert len(BATCH_FILES) >= 3


@pytest.mark.parametrize("path", BATCH_FILES, ids=lambda p: p.stem)
def test_batch_vector(path: Path) -> None:
    v = json.loads(path.read_text("utf-8"))
    inp = v["input"]
    readings = tuple(Reading.make(r["device"], r["point"], parse_ts(r["ts"]), r["value"], r["unit"], r["quality"])
                     for r in inp["readings"])
    batch = Batch(gateway=inp["gateway"], seq=inp["seq"], created_ms=parse_ts(inp["created"]), readings=readings)
    if v["alg"] == "ed25519":
        key: Ed25519PrivateKey | bytes = Ed25519PrivateKey.from_private_bytes(
            bytes.fromhex(v["key"]["ed25519_seed_hex"]))
        verify_key: Ed25519PublicKey | bytes = Ed25519PublicKey.from_public_bytes(
            bytes.fromhex(v["key"]["ed25519_public_hex"]))
    else:
        key = verify_key = bytes.fromhex(v["key"]["hmac_secret_hex"])
    signed = sign_batch(batch, key)
    canonical = signed.signing_bytes()
    assert canonical.decode("utf-8") == v["canonical"]
    assert hashlib.sha256(canonical).hexdigest() == v["sha256"]
    assert signed.sig == v["signature"]
    assert signed.to_bytes().decode("utf-8") == v["message"]
    # The published message parses back to the same batch and verifies.
    raw = v["message"].encode("utf-8")
    parsed = parse_batch(raw)
    assert parsed.signing_bytes() == canonical
    verify_batch(parsed, verify_key, raw)


def test_number_vectors() -> None:
    for case in json.loads((VECTORS / "numbers.json").read_text()):
        assert canonical_number(case["in"]) == case["canonical"], case
