"""Proof bundles: everything an auditor needs to check one reading without trusting CarbonLink.

A bundle (JSON, ``"carbonlink_proof": 1``) holds the reading; the raw signed batch it arrived in with
the signature algorithm and the gateway's public key; the Merkle leaf (ABI types, values, hash); the
proof; the root; the window (site, range, part, reading count, id); and where the root was anchored
(chain id, contract, transaction, block).

``verify_bundle`` re-derives every link and names the first thing that does not match in each:

1. signature: the batch verifies with the included Ed25519 public key (``carbonlink.wire.verify_batch``);
   HMAC-signed batches (constrained nodes) can only be checked by whoever holds the node's secret.
2. batch: the reading is in that batch, same gateway, sequence number, value, unit and quality.
3. leaf: the leaf values are the reading's and hash to the leaf.
4. proof: the proof leads from the leaf to the root (sorted-pair keccak, as OpenZeppelin).
5. window: the reading's time is inside the window, and the window id is derived from it.
6. chain: the node's chain id is the bundle's; the registry at the contract address holds this root for
   this window; the transaction is in the given block and emitted ``Anchored`` for the window and root;
   the contract's own ``verifyLeaf`` (OpenZeppelin ``MerkleProof``) accepts leaf and proof.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from carbonlink.kernel.wire import Reading, SigAlg, WireError, canonical_number, format_ts, parse_batch, verify_batch

from ..store import Store, open_store
from .chain import Chain, ChainError, WindowKey
from .ethereum import TransactionNotFound, Web3Exception
from .jobs import ANCHORED, Job, row_reading
from .merkle import (
    READING_FIELDS,
    READING_TYPES,
    MerkleError,
    MerkleTree,
    keccak,
    leaf_hash,
    process_proof,
    reading_values,
)

BUNDLE_VERSION = 1
_ANCHORED_TOPIC = keccak(b"Anchored(bytes32,bytes32,string,uint64,uint64,uint32,uint64)")


class BundleError(LookupError):
    """No bundle can be made for this reading (yet); the text says why and what to do."""


# A few recently used trees: proving many readings of one window rebuilds it once.
_TREES: OrderedDict[tuple[str, int], MerkleTree] = OrderedDict()
_TREE_CACHE = 8


async def _tree(store: Store, job_id: int, root: str) -> MerkleTree:
    key = (store.url, job_id)
    tree = _TREES.get(key)
    if tree is None or "0x" + tree.root.hex() != root:
        tree = MerkleTree.build(await store.anchors.job_leaves(job_id))
        _TREES[key] = tree
        while len(_TREES) > _TREE_CACHE:
            _TREES.popitem(last=False)
    _TREES.move_to_end(key)
    return tree


async def build_bundle(store: Store, gateway: str, device: str, point: str, ts_ms: int) -> dict[str, Any]:
    """The proof bundle of one stored, anchored reading (the API returns exactly this), on any back end."""
    row = await store.data.reading(gateway, device, point, ts_ms)
    if row is None:
        raise BundleError(f"no reading {gateway}/{device}/{point} at {format_ts(ts_ms)}: check the ids and time")
    gw, seq, reading = row_reading(row)
    found = await store.anchors.leaf_of(int(row["series"]), ts_ms)
    if found is None:
        raise BundleError("the reading's window has not been sealed yet: wait for the window to end"
                          " (plus settle time) and the anchor service to run")
    rows = await store.anchors.jobs(job_id=found[0])
    job = Job(**rows[0])
    if job.state != ANCHORED:
        raise BundleError(f"the reading's window is sealed but not anchored yet (job {job.id} is {job.state}"
                          f"{': ' + job.last_error if job.last_error else ''})")
    values = reading_values(gw, seq, reading)
    leaf = leaf_hash(READING_TYPES, values)
    if leaf != found[1]:
        raise BundleError("the stored reading no longer matches the leaf anchored for it: the database was"
                          " changed after anchoring")
    tree = await _tree(store, job.id, job.root)
    proof = tree.proof_at(tree.position_of(leaf))
    raw = await store.anchors.batch_payload(gw, seq)
    rec = await store.registry.get_gateway(gw)
    if raw is None or rec is None:
        raise BundleError(f"batch {gw}#{seq} or gateway {gw} is missing from the store")
    payload = raw.decode()
    signed = parse_batch(raw)
    return {
        "carbonlink_proof": BUNDLE_VERSION,
        "reading": {"gateway": gw, "seq": seq, "device": reading.device, "point": reading.point,
                    "ts": format_ts(reading.ts_ms), "ts_ms": reading.ts_ms,
                    "value": canonical_number(reading.value), "unit": reading.unit,
                    "quality": reading.quality.value},
        "batch": {"payload": payload, "alg": signed.alg.value, "signature": signed.sig,
                  # the secret of an HMAC node is never put in a bundle
                  "public_key": rec.key if rec.alg == SigAlg.ED25519 else None},
        "leaf": {"types": list(READING_TYPES), "fields": list(READING_FIELDS), "values": values,
                 "hash": "0x" + leaf.hex()},
        "proof": ["0x" + p.hex() for p in proof],
        "root": job.root,
        "window": {"site": job.site, "start_ms": job.start_ms, "end_ms": job.end_ms,
                   "start": format_ts(job.start_ms), "end": format_ts(job.end_ms), "part": job.part,
                   "count": job.count, "id": job.window_id},
        "anchor": {"chain_id": job.chain_id, "contract": job.contract, "tx_hash": job.tx_hash,
                   "block": job.block},
    }


async def bundle_for(url: str, gateway: str, device: str, point: str, ts_ms: int) -> dict[str, Any]:
    """``build_bundle`` on a storage URL, opening and closing the store."""
    async with open_store(url) as store:
        return await build_bundle(store, gateway, device, point, ts_ms)


# --- verification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "pass", "fail" or "unverifiable"
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status != "fail" for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, "pass" if ok else "fail", detail))
        return ok

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.__dict__ for c in self.checks]}


def _hex32(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or not text.startswith("0x") or len(text) != 66:
        raise ValueError(f"{what} must be 0x and 64 hex digits, got {text!r}")
    return bytes.fromhex(text[2:])


def _offline_checks(b: dict[str, Any], report: Report, hmac_secret: bytes | None) -> None:
    r, batch_part, leaf_part, window = b["reading"], b["batch"], b["leaf"], b["window"]
    # 1. signature
    try:
        batch = parse_batch(batch_part["payload"].encode())
    except WireError as exc:
        report.add("signature", False, f"the batch payload is not a valid batch: {exc}")
        batch = None
    if batch is not None:
        if batch.sig != batch_part.get("signature"):
            report.add("signature", False, "the signature field differs from the one inside the batch payload")
        elif batch.alg is SigAlg.ED25519:
            try:
                key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(batch_part.get("public_key") or ""))
                verify_batch(batch, key, batch_part["payload"].encode())
                report.add("signature", True, f"ed25519 signature of {batch.gateway}#{batch.seq} verifies")
            except (ValueError, WireError) as exc:
                report.add("signature", False, f"the batch signature does not match the gateway key: {exc}")
        elif hmac_secret is not None:
            try:
                verify_batch(batch, hmac_secret, batch_part["payload"].encode())
                report.add("signature", True, f"hmac-sha256 of {batch.gateway}#{batch.seq} verifies with the secret")
            except WireError as exc:
                report.add("signature", False, f"the batch HMAC does not match the secret: {exc}")
        else:
            report.checks.append(Check("signature", "unverifiable",
                                       "hmac-sha256 batch: only the holder of the node's secret can check it"))
    # 2. the reading is in the batch
    try:
        reading = Reading.make(r["device"], r["point"], int(r["ts_ms"]), float(r["value"]), r["unit"], r["quality"])
        mine_ok = (canonical_number(reading.value) == r["value"] and format_ts(reading.ts_ms) == r["ts"])
    except (ValueError, TypeError, KeyError) as exc:
        report.add("batch", False, f"the reading is malformed: {exc}")
        reading, mine_ok = None, False
    if reading is not None and batch is not None:
        same = [x for x in batch.readings if x.key == reading.key]
        if batch.gateway != r["gateway"] or batch.seq != r["seq"]:
            report.add("batch", False, f"the reading names batch {r['gateway']}#{r['seq']} but the payload is"
                                       f" {batch.gateway}#{batch.seq}")
        elif not same:
            report.add("batch", False, f"no reading {reading.device}/{reading.point} at {r['ts']} in the signed batch")
        elif not mine_ok:
            report.add("batch", False, "the reading's value or time text is not canonical")
        else:
            signed = same[0]
            diffs = [f"{name} {mine!r} != signed {theirs!r}" for name, mine, theirs in (
                ("value", r["value"], canonical_number(signed.value)), ("unit", r["unit"], signed.unit),
                ("quality", r["quality"], signed.quality.value)) if mine != theirs]
            report.add("batch", not diffs, "; ".join(diffs) if diffs else "the reading is in the signed batch")
    # 3. leaf
    leaf = _hex32(leaf_part["hash"], "leaf hash")
    if reading is not None:
        expected = reading_values(r["gateway"], int(r["seq"]), reading)
        if list(leaf_part["types"]) != list(READING_TYPES):
            report.add("leaf", False, f"leaf types {leaf_part['types']} are not {list(READING_TYPES)}")
        elif leaf_part["values"] != expected:
            diffs = [f"{n}: leaf {a!r} != reading {e!r}" for n, a, e in
                     zip(READING_FIELDS, leaf_part["values"], expected, strict=False) if a != e]
            report.add("leaf", False, "leaf values differ from the reading: " + "; ".join(diffs))
        else:
            got = leaf_hash(READING_TYPES, expected)
            report.add("leaf", got == leaf, "leaf hash matches the reading" if got == leaf else
                       f"leaf hash {leaf_part['hash']} != keccak256(keccak256(abi.encode(reading))) 0x{got.hex()}")
    # 4. proof
    root = _hex32(b["root"], "root")
    try:
        reached = process_proof(leaf, [_hex32(p, "proof element") for p in b["proof"]])
        report.add("proof", reached == root, f"proof of {len(b['proof'])} hashes leads to the root" if reached == root
                   else f"proof leads to 0x{reached.hex()}, not to the root {b['root']}")
    except (ValueError, MerkleError) as exc:
        report.add("proof", False, f"the proof is malformed: {exc}")
    # 5. window
    wkey = WindowKey(window["site"], int(window["start_ms"]), int(window["end_ms"]), int(window["part"]))
    inside = wkey.start_ms <= int(r["ts_ms"]) < wkey.end_ms
    id_ok = "0x" + wkey.id.hex() == window["id"]
    report.add("window", inside and id_ok,
               "reading time is inside the window" if inside and id_ok else
               ("window id does not match site, range and part" if not id_ok else
                f"reading time {r['ts']} is outside the window [{window['start']}, {window['end']})"))


async def _chain_checks(b: dict[str, Any], chain: Chain, report: Report) -> None:
    anchor, window = b["anchor"], b["window"]
    root, leaf = _hex32(b["root"], "root"), _hex32(b["leaf"]["hash"], "leaf hash")
    window_id = _hex32(window["id"], "window id")
    chain_id = await chain.chain_id()
    if chain_id != anchor["chain_id"]:
        report.add("chain", False,
                   f"the node is chain {chain_id}, the bundle was anchored on chain {anchor['chain_id']}")
        return
    chain.use(anchor["contract"])
    code = await chain.w3.eth.get_code(chain.address)  # type: ignore[arg-type]
    if not code:
        report.add("chain", False, f"no contract at {anchor['contract']} on chain {chain_id}")
        return
    onchain = await chain.get_window(window_id)
    if onchain is None:
        report.add("root on chain", False, f"the registry has no root for window {window['id']}")
    elif onchain.root != root:
        report.add("root on chain", False, f"the registry holds root 0x{onchain.root.hex()} for the window,"
                                           f" not the bundle's {b['root']}")
    else:
        diffs = [f"{n} {mine} != on chain {theirs}" for n, mine, theirs in (
            ("start_ms", window["start_ms"], onchain.start_ms), ("end_ms", window["end_ms"], onchain.end_ms),
            ("count", window["count"], onchain.reading_count), ("part", window["part"], onchain.part),
            ("block", anchor["block"], onchain.anchored_block)) if mine != theirs]
        report.add("root on chain", not diffs, "; ".join(diffs) if diffs else
                   f"registry {anchor['contract']} holds the root, anchored in block {onchain.anchored_block}")
    try:
        receipt = await chain.w3.eth.get_transaction_receipt(anchor["tx_hash"])
    except (TransactionNotFound, Web3Exception, ValueError, TypeError):
        receipt = None
    if receipt is None:
        report.add("transaction", False, f"transaction {anchor['tx_hash']} is not known to the node")
    else:
        logged = any(
            log["address"].lower() == anchor["contract"].lower() and len(log["topics"]) == 3
            and bytes(log["topics"][0]) == _ANCHORED_TOPIC and bytes(log["topics"][1]) == window_id
            and bytes(log["topics"][2]) == root for log in receipt["logs"])
        ok = logged and receipt["blockNumber"] == anchor["block"] and receipt["status"] == 1
        report.add("transaction", ok, f"transaction in block {receipt['blockNumber']} emitted Anchored(window, root)"
                   if ok else f"transaction {anchor['tx_hash']} (block {receipt['blockNumber']}) did not anchor"
                   " this root for this window in the bundle's block")
    if onchain is not None:
        try:
            accepted = await chain.verify_leaf(window_id, leaf, [_hex32(p, "proof") for p in b["proof"]])
        except ChainError as exc:
            accepted = False
            detail = str(exc)
        else:
            detail = ("the registry's MerkleProof.verify accepts leaf and proof" if accepted
                      else "the registry's MerkleProof.verify rejects leaf and proof")
        report.add("contract check", accepted, detail)


async def verify_bundle(bundle: dict[str, Any] | str, chain: str | Chain | None,
                        *, hmac_secret: bytes | None = None) -> Report:
    """Check a bundle (a dict or its JSON text); ``chain`` is a node URL (``http://…``, ``evm:///journal``)
    or an open Chain.

    ``None`` runs only the offline checks (signature, batch, leaf, proof, window).
    """
    report = Report()
    try:
        b = json.loads(bundle) if isinstance(bundle, str) else bundle
        if b.get("carbonlink_proof") != BUNDLE_VERSION:
            raise ValueError(f"not a CarbonLink proof bundle version {BUNDLE_VERSION}")
        _offline_checks(b, report, hmac_secret)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        report.add("format", False, f"the bundle is malformed: {type(exc).__name__}: {exc}")
        return report
    if chain is None:
        return report
    own = isinstance(chain, str)
    try:
        node = await Chain.connect(chain) if isinstance(chain, str) else chain
    except ChainError as exc:
        report.add("chain", False, str(exc))
        return report
    try:
        await _chain_checks(b, node, report)
    except (ChainError, Web3Exception, OSError, ValueError, KeyError, TypeError) as exc:
        report.add("chain", False, f"{type(exc).__name__}: {exc}")
    finally:
        if own:
            await node.close()
    return report
