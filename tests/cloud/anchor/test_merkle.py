"""The tree and leaf encoding against eth_abi and OpenZeppelin's own StandardMerkleTree."""

from __future__ import annotations

import eth_abi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonlink.cloud.anchor.merkle import (
    READING_TYPES,
    MerkleError,
    MerkleTree,
    abi_encode,
    leaf_hash,
    process_proof,
    reading_values,
    verify,
)
from carbonlink.kernel.wire import Reading
from tests.cloud.anchor.conftest import T0, oz_verify, require_node_tools

text = st.text(min_size=0, max_size=80)


@settings(max_examples=200, deadline=None)
@given(st.tuples(text, st.integers(0, 2**64 - 1), text, text, st.integers(0, 2**64 - 1), text, text, text))
def test_abi_encode_matches_eth_abi(values: tuple) -> None:
    assert abi_encode(READING_TYPES, values) == eth_abi.encode(list(READING_TYPES), list(values))


def test_abi_encode_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(MerkleError, match="is not a uint64"):
        abi_encode(["uint64"], [2**64])
    with pytest.raises(MerkleError, match="string parameter"):
        abi_encode(["string"], [5])
    with pytest.raises(MerkleError, match="2 types but 1 values"):
        abi_encode(["string", "string"], ["a"])


def test_reading_leaf_uses_the_canonical_value_text() -> None:
    r = Reading.make("cems-1", "SO2", T0, 35.20000000000001, "mg/m3")
    assert reading_values("gw-1", 7, r) == ["gw-1", 7, "cems-1", "SO2", T0, "35.2", "mg/m3", "N"]


def _values(n: int) -> list[list]:
    return [["gw-1", i + 1, f"dev-{i % 3}", "SO2", T0 + i * 1000, f"{i}.5", "mg/m3", "N"] for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_root_and_proofs_match_openzeppelin(n: int) -> None:
    require_node_tools()
    values = _values(n)
    tree = MerkleTree.build([leaf_hash(READING_TYPES, v) for v in values])
    i = n // 2
    proof = ["0x" + p.hex() for p in tree.proof(i)]
    oz = oz_verify({"types": list(READING_TYPES), "root": "0x" + tree.root.hex(), "value": values[i],
                    "proof": proof, "values": values})
    assert oz == {"verified": True, "root": "0x" + tree.root.hex(), "proof": proof}


def test_every_leaf_proves_and_a_wrong_one_does_not() -> None:
    leaves = [leaf_hash(READING_TYPES, v) for v in _values(37)]
    tree = MerkleTree.build(leaves)
    for i, leaf in enumerate(leaves):
        proof = tree.proof(i)
        assert verify(tree.root, leaf, proof)
        assert tree.proof_at(tree.position_of(leaf)) == proof
    assert not verify(tree.root, leaves[0], tree.proof(1))
    assert process_proof(leaves[0], []) == leaves[0]
    with pytest.raises(MerkleError, match="at least one leaf"):
        MerkleTree.build([])
    with pytest.raises(MerkleError, match="not in the tree"):
        tree.position_of(b"\0" * 32)
