# Runs under MicroPython: the firmware's wire format against the shared vectors.
import hashlib
import json
import sys
from binascii import hexlify, unhexlify

import wire
from mpcheck import check, done

vdir = sys.argv[1]

with open(vdir + "/numbers.json") as f:
    for case in json.load(f):
        check("number {!r}".format(case["in"]), wire.number(case["in"]), case["canonical"])

for name in ("cems-two-readings", "numbers-edge-cases", "forest-node-hmac"):
    with open(vdir + "/batch-" + name + ".json") as f:
        v = json.load(f)
    inp = v["input"]
    rs = [wire.reading(r["device"], r["point"], wire.parse_ts(r["ts"]), r["value"], r["unit"], r["quality"])
          for r in inp["readings"]]
    body = wire.signing_bytes(inp["gateway"], inp["seq"], wire.parse_ts(inp["created"]), rs, v["alg"])
    check(name + " canonical", body, v["canonical"].encode())
    check(name + " sha256", hexlify(hashlib.sha256(body).digest()).decode(), v["sha256"])
    sig = v["signature"].encode()
    if v["alg"] == "hmac-sha256":
        secret = unhexlify(v["key"]["hmac_secret_hex"])
        check(name + " hmac", wire.sign(body, secret), sig)
        msg = wire.batch(inp["gateway"], inp["seq"], wire.parse_ts(inp["created"]), rs, secret)
        check(name + " message", msg, v["message"].encode())
    else:
        # ed25519 is for gateways; the node still builds the same message around the signature.
        check(name + " message", wire.with_sig(body, sig), v["message"].encode())
    for r in inp["readings"]:
        check(name + " ts " + r["ts"], wire.format_ts(wire.parse_ts(r["ts"])), r["ts"])

done()
