"""Anchoring throughput: readings/s hashed into trees, proofs/s verified, gas per anchor by window size.

    .venv/bin/python bench/anchor.py                 # 1 000, 100 000 and 1 000 000 readings per window
    .venv/bin/python bench/anchor.py --rpc http://127.0.0.1:8545 --json

Gas is measured by anchoring each window's real root on a freshly deployed AnchorRegistry, on the
in-process EVM by default or on any node given with ``--rpc`` (``CARBONLINK_CHAIN_KEY`` signs there).
It must not depend on the window size: one fixed-size record per window whatever the reading count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carbonlink.cloud.anchor.chain import Chain, WindowKey, load_signer
from carbonlink.cloud.anchor.merkle import MerkleTree, process_proof, reading_leaf
from carbonlink.kernel.wire import Reading

T0 = 1_700_000_100_000


def synth(n: int) -> list[tuple[str, int, Reading]]:
    """n readings of a CEMS site: 10 devices x 6 points, one value per point and second."""
    points = [("SO2", "mg/m3"), ("NOx", "mg/m3"), ("PM", "mg/m3"), ("O2", "%"), ("flow", "m3/h"), ("temp", "degC")]
    rng = random.Random(n)
    out = []
    for i in range(n):
        point, unit = points[i % 6]
        dev = f"cems-{(i // 6) % 10}"
        ts = T0 + (i // 60) * 1000
        out.append(("gw-1", 1 + i // 600, Reading(dev, point, ts, round(rng.uniform(0, 500), 3), unit)))
    return out


def measure_tree(rows: list[tuple[str, int, Reading]], proofs: int) -> dict[str, Any]:
    t = time.perf_counter()
    leaves = [reading_leaf(g, s, r) for g, s, r in rows]
    t_leaves = time.perf_counter() - t
    t = time.perf_counter()
    tree = MerkleTree.build(leaves)
    t_tree = time.perf_counter() - t
    pos = tree.position()
    sample = random.Random(1).sample(range(len(leaves)), min(proofs, len(leaves)))
    made = [(leaves[i], tree.proof_at(pos[i])) for i in sample]
    t = time.perf_counter()
    ok = all(process_proof(leaf, proof) == tree.root for leaf, proof in made)
    t_verify = time.perf_counter() - t
    if not ok:
        raise SystemExit("a proof did not verify: the tree is broken")
    return {"readings": len(rows), "hash_s": round(t_leaves + t_tree, 3),
            "readings_per_s": round(len(rows) / (t_leaves + t_tree)),
            "leaves_per_s": round(len(rows) / t_leaves), "tree_build_s": round(t_tree, 3),
            "proof_len": len(made[0][1]), "proofs_per_s": round(len(made) / t_verify), "root": tree.root}


async def measure_gas(url: str, results: list[dict[str, Any]]) -> None:
    chain = await Chain.connect(url, signer=load_signer())
    try:
        await chain.deploy()
        for i, res in enumerate(results):
            key = WindowKey("bench-site", T0 + i * 300_000, T0 + (i + 1) * 300_000)
            receipt = await chain.anchor(key, res["root"], res["readings"])
            res["gas_per_anchor"] = receipt.gas_used
    finally:
        await chain.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,100000,1000000", help="readings per window, comma separated")
    ap.add_argument("--proofs", type=int, default=5000, help="proofs verified per size")
    ap.add_argument("--rpc", default="evm://", help="chain for the gas figures (default: in-process EVM)")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    results = []
    for n in sizes:
        rows = synth(n)
        results.append(measure_tree(rows, args.proofs))
        del rows
        if not args.json:
            print(f"  {n:>9,} readings hashed", file=sys.stderr)
    asyncio.run(measure_gas(args.rpc, results))
    gas = [r["gas_per_anchor"] for r in results]
    flat = max(gas) - min(gas) <= 64
    for r in results:
        r["root"] = "0x" + r["root"].hex()
    if args.json:
        print(json.dumps({"chain": args.rpc, "gas_flat": flat, "windows": results}, indent=2))
        return
    print(f"{'readings/window':>16} {'readings/s':>11} {'tree s':>7} {'proof len':>9} {'proofs/s':>9}"
          f" {'gas/anchor':>11}")
    for r in results:
        print(f"{r['readings']:>16,} {r['readings_per_s']:>11,} {r['hash_s']:>7} {r['proof_len']:>9}"
              f" {r['proofs_per_s']:>9,} {r['gas_per_anchor']:>11,}")
    print(f"gas per anchor is {'flat' if flat else 'NOT flat'} ({min(gas):,}..{max(gas):,}) on {args.rpc}")
    if not flat:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
