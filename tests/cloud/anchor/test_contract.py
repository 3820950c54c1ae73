"""AnchorRegistry on a real hardhat node, the committed artifacts, and the in-process demo chain."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from carbonlink.cloud.anchor.chain import AlreadyAnchored, Chain, ChainError, WindowKey
from tests.cloud.anchor.conftest import CONTRACTS, T0, require_node_tools

ROOT = b"\x11" * 32
W = WindowKey("site-a", T0, T0 + 300_000)


def test_committed_artifacts_match_a_fresh_compile() -> None:
    require_node_tools()
    out = subprocess.run(["node", "compile.mjs", "--check"], cwd=CONTRACTS, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "matches solc 0.8.28" in out.stdout and "(cancun)" in out.stdout


@pytest.mark.service("chain")
async def test_roles_pause_and_refusals(hardhat_url: str, dev_account, other_account) -> None:
    admin = await Chain.connect(hardhat_url, signer=dev_account)
    try:
        address = await admin.deploy()
        outsider = await Chain.connect(hardhat_url, signer=other_account, contract=address)
        with pytest.raises(ChainError, match="AccessControlUnauthorizedAccount"):
            await outsider.anchor(W, ROOT, 10)

        first = await admin.anchor(W, ROOT, 10)
        assert (await admin.get_window(W.id)).root == ROOT
        # the contract itself refuses a second root, even when the caller skips the read-before-write
        with pytest.raises(AlreadyAnchored) as refused:
            await admin.anchor_unchecked(W, b"\x22" * 32, 11)
        assert refused.value.root == ROOT
        assert (await admin.find_anchor_tx(W.id)).tx_hash == first.tx_hash

        with pytest.raises(ChainError, match="InvalidWindow"):
            await admin.anchor(WindowKey("site-a", T0, T0), ROOT, 1)
        with pytest.raises(ChainError, match="EmptyWindow"):
            await admin.anchor(WindowKey("site-b", T0, T0 + 1), ROOT, 0)

        # rotation: the admin hands the anchoring role to another account in one transaction
        await admin.rotate_anchorer(dev_account.address, other_account.address)
        await outsider.anchor(WindowKey("site-a", T0, T0 + 300_000, part=1), ROOT, 3)
        with pytest.raises(ChainError, match="AccessControlUnauthorizedAccount"):
            await admin.anchor(WindowKey("site-c", T0, T0 + 1), ROOT, 1)
        with pytest.raises(ChainError, match="AccessControlUnauthorizedAccount"):
            await outsider.pause()
        await admin.pause()
        with pytest.raises(ChainError, match="EnforcedPause"):
            await outsider.anchor(WindowKey("site-d", T0, T0 + 1), ROOT, 1)
        await outsider.close()
    finally:
        await admin.close()


@pytest.mark.service("chain")
async def test_gas_does_not_grow_with_readings(hardhat_url: str, dev_account) -> None:
    chain = await Chain.connect(hardhat_url, signer=dev_account)
    try:
        await chain.deploy()
        gas = [(await chain.anchor(WindowKey("site-g", T0 + i, T0 + i + 300_000), ROOT, n)).gas_used
               for i, n in enumerate([1_000, 100_000, 1_000_000])]
        assert max(gas) - min(gas) <= 64, gas  # only the count's calldata bytes differ
        assert max(gas) < 120_000
    finally:
        await chain.close()


async def test_demo_chain_survives_a_restart(tmp_path: Path) -> None:
    url = f"evm://{tmp_path / 'chain.jsonl'}"
    chain = await Chain.connect(url)
    address = await chain.deploy()
    receipt = await chain.anchor(W, ROOT, 10)
    await chain.close()

    again = await Chain.connect(url, contract=address)  # a new process: replayed from the journal
    onchain = await again.get_window(W.id)
    assert onchain is not None and onchain.root == ROOT and onchain.anchored_block == receipt.block
    assert (await again.find_anchor_tx(W.id)).tx_hash == receipt.tx_hash
    with pytest.raises(AlreadyAnchored):
        await again.anchor_unchecked(W, ROOT, 10)
    # a torn last line (crash while writing) is a transaction that was never sent
    with (tmp_path / "chain.jsonl").open("a") as f:
        f.write('{"raw": "0x02f9')
    third = await Chain.connect(url, contract=address)
    assert (await third.get_window(W.id)).root == ROOT
    await third.anchor(WindowKey("site-b", T0, T0 + 1), ROOT, 1)  # appends after the dropped torn line
    fourth = await Chain.connect(url, contract=address)
    assert (await fourth.get_window(WindowKey("site-b", T0, T0 + 1).id)).root == ROOT

    assert await Chain.connect("evm://") is not None
    with pytest.raises(ChainError, match="must be http"):
        await Chain.connect("ftp://x")


async def test_demo_chain_funds_a_configured_key(tmp_path: Path, other_account) -> None:
    url = f"evm://{tmp_path / 'chain.jsonl'}"
    chain = await Chain.connect(url, signer=other_account)
    address = await chain.deploy()
    await chain.anchor(W, ROOT, 1)
    again = await Chain.connect(url, signer=other_account, contract=address)  # funding replayed, not repeated
    assert (await again.get_window(W.id)).root == ROOT
    assert len((tmp_path / "chain.jsonl").read_text().splitlines()) == 3  # fund, deploy, anchor
