"""Regenerate the wire-format vectors: python tests/vectors/make_vectors.py

The vectors are data: the firmware and any other implementation are held to them.
Regenerate only when the wire format changes on purpose, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.kernel.wire import Batch, Reading, canonical_number, parse_ts, sign_batch

HERE = Path(__file__).parent
# Published test keys: never use them for a real device.
ED25519_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")  # RFC 8032 test 1
HMAC_SECRET = b"carbonlink-test-secret-do-not-use"

CASES = [
    {
        "name": "cems-two-readings",
        "gateway": "gw-test-01", "seq": 1, "created": "2026-01-01T00:00:01.000Z",
        "readings": [
            {"device": "cems-1", "point": "so2", "ts": "2026-01-01T00:00:00.000Z", "value": 28.35,
             "unit": "mg/m³", "quality": "N"},
            {"device": "cems-1", "point": "o2", "ts": "2026-01-01T00:00:00.000Z", "value": 6.5,
             "unit": "%", "quality": "C"},
        ],
    },
    {
        "name": "numbers-edge-cases",
        "gateway": "gw-test-01", "seq": 9007199254740991, "created": "2026-06-30T23:59:59.999Z",
        "readings": [
            {"device": "inv-1", "point": "energy", "ts": "2026-06-30T23:59:59.000Z", "value": 123456789012345,
             "unit": "Wh", "quality": "N"},
            {"device": "inv-1", "point": "pf", "ts": "2026-06-30T23:59:59.000Z", "value": -0.0, "unit": "",
             "quality": "N"},
            {"device": "inv-1", "point": "tiny", "ts": "2026-06-30T23:59:59.000Z", "value": 0.000012,
             "unit": "A", "quality": "T"},
            {"device": "inv-1", "point": "whole", "ts": "2026-06-30T23:59:59.000Z", "value": 100.0,
             "unit": "kW", "quality": "N"},
        ],
    },
    {
        "name": "forest-node-hmac",
        "alg": "hmac-sha256",
        "gateway": "node-forest-07", "seq": 42, "created": "2026-03-15T06:00:00.250Z",
        "readings": [
            {"device": "tree-0007", "point": "soil_moisture", "ts": "2026-03-15T06:00:00.000Z", "value": 31.27,
             "unit": "%", "quality": "N"},
            {"device": "tree-0007", "point": "temperature", "ts": "2026-03-15T06:00:00.000Z", "value": -3.05,
             "unit": "°C", "quality": "N"},
            {"device": "tree-0007", "point": "dendrometer", "ts": "2026-03-15T06:00:00.000Z",
             "value": 12.3456, "unit": "mm", "quality": "N"},
        ],
    },
]

NUMBERS = [
    [0, "0"], [-0.0, "0"], [1.0, "1"], [-2.5, "-2.5"], [28.35, "28.35"], [0.1, "0.1"],
    [1e-7, "0.0000001"], [123456789.123456789, "123456789.123457"], [99999999999999.9, "99999999999999.9"],
    [3.14159265358979, "3.14159265358979"], [0.30000000000000004, "0.3"], [1e14, "100000000000000"],
    [-1234.5, "-1234.5"], [6.02e-5, "0.0000602"],
]


def build() -> None:
    priv = Ed25519PrivateKey.from_private_bytes(ED25519_SEED)
    pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    for case in CASES:
        readings = tuple(
            Reading.make(r["device"], r["point"], parse_ts(r["ts"]), r["value"], r["unit"], r["quality"])
            for r in case["readings"]
        )
        batch = Batch(gateway=case["gateway"], seq=case["seq"], created_ms=parse_ts(case["created"]),
                      readings=readings)
        alg = case.get("alg", "ed25519")
        signed = sign_batch(batch, priv if alg == "ed25519" else HMAC_SECRET)
        canonical = signed.signing_bytes()
        out = {
            "name": case["name"],
            "alg": alg,
            "key": {"ed25519_seed_hex": ED25519_SEED.hex(), "ed25519_public_hex": pub} if alg == "ed25519"
            else {"hmac_secret_hex": HMAC_SECRET.hex()},
            "input": {k: case[k] for k in ("gateway", "seq", "created", "readings")},
            "canonical": canonical.decode("utf-8"),
            "sha256": hashlib.sha256(canonical).hexdigest(),
            "signature": signed.sig,
            "message": signed.to_bytes().decode("utf-8"),
        }
        (HERE / f"batch-{case['name']}.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    nums = [{"in": n, "canonical": canonical_number(n)} for n, _ in NUMBERS]
    for (n, want), got in zip(NUMBERS, nums, strict=True):
        assert got["canonical"] == want, (n, want, got)
    (HERE / "numbers.json").write_text(json.dumps(nums, indent=2) + "\n")


if __name__ == "__main__":
    build()
