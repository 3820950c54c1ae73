"""Merkle trees laid out exactly like OpenZeppelin's ``StandardMerkleTree`` (@openzeppelin/merkle-tree).

Why this layout: anyone can check our proofs with the standard JS library or with
``MerkleProof.verify`` in a contract, without our code.

- A leaf is ``keccak256(keccak256(abi.encode(types, values)))``: double hashed so a leaf can never be
  confused with an inner node (second pre-image safety, as OpenZeppelin recommends).
- An inner node is ``keccak256(min(a, b) ++ max(a, b))`` (sorted pairs), so a proof is a plain list of
  sibling hashes with no left/right flags.
- Leaves are sorted by hash, then stored in a flat array of ``2n - 1`` nodes: leaf ``i`` of the sorted
  order sits at ``tree[2n - 2 - i]``, the parent of node ``k`` is ``(k - 1) // 2``, the root is ``tree[0]``.

A reading's leaf (``READING_TYPES``, in this order)::

    string  gateway   the gateway (or node) that signed the batch
    uint64  seq       the batch's sequence number, which ties the reading to its signed batch
    string  device
    string  point
    uint64  ts_ms     milliseconds since the Unix epoch, UTC
    string  value     the canonical decimal text of the value (``carbonlink.wire.canonical_number``):
                      exact, no float or scaling ambiguity
    string  unit
    string  quality   one HJ 212 flag letter
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from carbonlink.kernel.wire import Reading, canonical_number

try:  # the C keccak is ~4x faster than pycryptodome's; both give the same digest
    from sha3 import keccak_256 as _keccak_256  # type: ignore[import-not-found,import-untyped,unused-ignore]

    def keccak(data: bytes) -> bytes:
        return _keccak_256(data).digest()  # type: ignore[no-any-return]
except ImportError:  # pragma: no cover - depends on the installed extras
    from Crypto.Hash import keccak as _cd_keccak

    def keccak(data: bytes) -> bytes:
        return _cd_keccak.new(data=data, digest_bits=256).digest()


READING_TYPES: tuple[str, ...] = ("string", "uint64", "string", "string", "uint64", "string", "string", "string")
READING_FIELDS: tuple[str, ...] = ("gateway", "seq", "device", "point", "ts_ms", "value", "unit", "quality")


class MerkleError(ValueError):
    """A tree or proof that cannot be built or does not hold."""


# --- ABI encoding (Solidity ABI spec, "Formal Specification of the Encoding") -------------------


def abi_encode(types: Sequence[str], values: Sequence[Any]) -> bytes:
    """``abi.encode(values...)`` for ``string``, ``uintN`` and ``bytes32`` parameters.

    Written out for speed (a window may hold a million readings); held to eth_abi by the tests.
    Dynamic parameters (strings) get an offset in the head and ``length ++ data`` padded to 32 bytes
    in the tail.
    """
    if len(types) != len(values):
        raise MerkleError(f"{len(types)} types but {len(values)} values")
    head: list[bytes] = []
    tail: list[bytes] = []
    offset = 32 * len(types)
    for typ, val in zip(types, values, strict=True):
        if typ == "string":
            data = val.encode() if isinstance(val, str) else None
            if data is None:
                raise MerkleError(f"string parameter got {type(val).__name__}")
            padded = data + b"\0" * (-len(data) % 32)
            head.append(offset.to_bytes(32, "big"))
            tail.append(len(data).to_bytes(32, "big") + padded)
            offset += 32 + len(padded)
        elif typ.startswith("uint"):
            bits = int(typ[4:] or 256)
            if isinstance(val, bool) or not isinstance(val, int) or not 0 <= val < 1 << bits:
                raise MerkleError(f"{val!r} is not a {typ}")
            head.append(val.to_bytes(32, "big"))
        elif typ == "bytes32":
            if not isinstance(val, bytes | bytearray) or len(val) != 32:
                raise MerkleError(f"{val!r} is not 32 bytes")
            head.append(bytes(val))
        else:
            raise MerkleError(f"ABI type {typ!r} is not supported here")
    return b"".join(head) + b"".join(tail)


def leaf_hash(types: Sequence[str], values: Sequence[Any]) -> bytes:
    """The StandardMerkleTree leaf: keccak256(bytes.concat(keccak256(abi.encode(values))))."""
    return keccak(keccak(abi_encode(types, values)))


def reading_values(gateway: str, seq: int, r: Reading) -> list[Any]:
    """The leaf values of a reading, in ``READING_TYPES`` order."""
    return [gateway, seq, r.device, r.point, r.ts_ms, canonical_number(r.value), r.unit, r.quality.value]


def reading_leaf(gateway: str, seq: int, r: Reading) -> bytes:
    return leaf_hash(READING_TYPES, reading_values(gateway, seq, r))


def hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b if a < b else b + a)


# --- the tree ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MerkleTree:
    """A built tree. ``order[j]`` is the input position of the j-th sorted leaf."""

    nodes: list[bytes]
    order: list[int]

    @classmethod
    def build(cls, leaves: Sequence[bytes]) -> MerkleTree:
        """Build from leaf hashes given in input order (they are sorted here, as the JS library does)."""
        n = len(leaves)
        if n == 0:
            raise MerkleError("a Merkle tree needs at least one leaf")
        order = sorted(range(n), key=leaves.__getitem__)
        size = 2 * n - 1
        nodes: list[bytes] = [b""] * size
        for j, i in enumerate(order):
            nodes[size - 1 - j] = leaves[i]
        for k in range(size - 1 - n, -1, -1):
            a, b = nodes[2 * k + 1], nodes[2 * k + 2]
            nodes[k] = keccak(a + b if a < b else b + a)
        return cls(nodes, order)

    @property
    def root(self) -> bytes:
        return self.nodes[0]

    def __len__(self) -> int:
        return len(self.order)

    def position(self) -> dict[int, int]:
        """Input position -> tree index, for producing many proofs."""
        size = len(self.nodes)
        return {i: size - 1 - j for j, i in enumerate(self.order)}

    def proof_at(self, tree_index: int) -> list[bytes]:
        """Sibling hashes from a leaf's tree index up to the root."""
        if not len(self.nodes) - len(self.order) <= tree_index < len(self.nodes):
            raise MerkleError(f"tree index {tree_index} is not a leaf")
        proof = []
        k = tree_index
        while k > 0:
            proof.append(self.nodes[k + 1 if k % 2 else k - 1])
            k = (k - 1) // 2
        return proof

    def position_of(self, leaf: bytes) -> int:
        """The tree index of a leaf hash."""
        try:
            return self.nodes.index(leaf, len(self.nodes) - len(self.order))
        except ValueError:
            raise MerkleError(f"leaf 0x{leaf.hex()} is not in the tree") from None

    def proof(self, input_index: int) -> list[bytes]:
        """The proof of the leaf given at ``input_index`` when the tree was built."""
        j = self.order.index(input_index)
        return self.proof_at(len(self.nodes) - 1 - j)


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root a proof leads to (OpenZeppelin ``MerkleProof.processProof``)."""
    node = leaf
    for sibling in proof:
        if len(sibling) != 32:
            raise MerkleError(f"proof element of {len(sibling)} bytes, expected 32")
        node = hash_pair(node, sibling)
    return node


def verify(root: bytes, leaf: bytes, proof: Sequence[bytes]) -> bool:
    return process_proof(leaf, proof) == root
