"""Fixtures for anchoring tests: a real hardhat 2 node (started once per session), a populated store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from eth_account import Account
from eth_account.signers.local import LocalAccount

from carbonlink.cloud.store import Store
from carbonlink.commands.faults.lab import stop_process
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from tests.cloud.store.conftest import throwaway_store
from tests.services import ROOT, free_port, require

CONTRACTS = ROOT / "contracts"
# Hardhat's well-known development accounts #0 and #1 (public test keys, funded on every hardhat node).
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
OTHER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
T0 = 1_700_000_100_000  # a 5-minute window boundary (a multiple of 300 000 ms)


def node_tools_ready() -> bool:
    return shutil.which("node") is not None and (CONTRACTS / "node_modules" / "hardhat").is_dir()


def require_node_tools() -> None:
    require(node_tools_ready(), "node and the contracts' npm packages", "npm ci --prefix contracts")


def _rpc_ready(url: str) -> bool:
    req = urllib.request.Request(url, data=b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}',
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=1) as resp:
            return b"result" in resp.read()
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def hardhat_url() -> Iterator[str]:
    """A hardhat 2 JSON-RPC node on a free loopback port, for the whole session."""
    require_node_tools()
    port = free_port()
    env = {**os.environ, "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true", "CI": "true"}
    proc = subprocess.Popen(
        [str(CONTRACTS / "node_modules" / ".bin" / "hardhat"), "node", "--hostname", "127.0.0.1", "--port", str(port)],
        cwd=CONTRACTS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        while not _rpc_ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else "timeout"
                require(False, "a hardhat node", f"cd contracts && npx hardhat node ({err[-300:]})")
            time.sleep(0.2)
        yield url
    finally:
        stop_process(proc)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def dev_account() -> LocalAccount:
    return Account.from_key(DEV_KEY)  # type: ignore[no-any-return]


@pytest.fixture
def other_account() -> LocalAccount:
    return Account.from_key(OTHER_KEY)  # type: ignore[no-any-return]


class Plant:
    """A store with one registered gateway that commits signed batches as ingest would."""

    def __init__(self, store: Store, gateway: str = "gw-1", site: str = "site-a") -> None:
        self.store, self.gateway, self.site = store, gateway, site
        self.key = Ed25519PrivateKey.generate()
        self.seq = 0

    @property
    def public_hex(self) -> str:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    async def register(self) -> None:
        await self.store.registry.register_gateway(self.gateway, self.site, "ed25519", self.public_hex)

    async def send(self, readings: list[Reading], received_ms: int | None = None) -> Batch:
        self.seq += 1
        batch = sign_batch(Batch(self.gateway, self.seq, readings[0].ts_ms, tuple(readings)), self.key)
        await self.store.data.commit_batch(batch, batch.to_bytes(), received_ms or readings[-1].ts_ms + 1000)
        return batch

    async def cems(self, start_ms: int, minutes: int, every_s: int = 60) -> list[Reading]:
        """SO2, NOx and flow every ``every_s`` for ``minutes``, one batch per timestamp."""
        out = []
        for i in range(minutes * 60 // every_s):
            ts = start_ms + i * every_s * 1000
            rs = [Reading.make("cems-1", "SO2", ts, 35.2 + i * 0.1, "mg/m3"),
                  Reading.make("cems-1", "NOx", ts, 80 + i, "mg/m3"),
                  Reading.make("cems-1", "flow", ts, 1.234e5 + i / 3, "m3/h", "N" if i % 7 else "M")]
            await self.send(rs)
            out.extend(rs)
        return out


@pytest.fixture(params=["sqlite", "postgres"])
async def plant(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Plant]:
    """A plant on each back end: anchoring, proofs and verify must pass the same tests on both."""
    async with throwaway_store(request.param, tmp_path, prefix="clanchor_") as store:
        p = Plant(store)
        await p.register()
        yield p


def oz_verify(request: dict) -> dict:
    """Run OpenZeppelin's StandardMerkleTree (JS) on a proof request; see contracts/test/oz-verify.mjs."""
    out = subprocess.run(["node", str(CONTRACTS / "test" / "oz-verify.mjs")], input=json.dumps(request),
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)
