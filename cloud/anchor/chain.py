"""Chain access for anchoring: the AnchorRegistry contract through web3.py (async).

Where the chain is, by URL:

- ``http://…`` / ``https://…``: any EVM JSON-RPC node (hardhat or ganache in tests, a public chain in
  production).
- ``evm://`` : an in-process EVM (eth-tester on py-evm), empty, gone when the process ends.
- ``evm:///path/chain.jsonl``: the same in-process EVM made durable by a journal. Every raw signed
  transaction this client sends is appended (and fsynced) to the file after the node accepts it; opening
  the URL again starts a fresh py-evm chain and re-sends the journal in order. Transactions are signed
  bytes and each one is mined in its own block, so the replay rebuilds the same contract address, the
  same transaction hashes, the same block numbers and the same contract storage: proofs made before a
  demo restart verify after it. (Block timestamps and hashes differ; nothing here depends on them.) A
  transaction whose journal line was not written before a crash is simply absent after the restart, and
  the anchoring jobs, which check the contract before trusting their own records, send it again.

The signing key: an eth-account keystore file (``keystore`` + the password in the environment variable
``CARBONLINK_CHAIN_PASSWORD``), or a hex private key in ``CARBONLINK_CHAIN_KEY``. The in-process EVM
falls back to its first pre-funded development account.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from .ethereum import (
    Account,
    AsyncHTTPProvider,
    AsyncWeb3,
    ContractCustomError,
    ContractLogicError,
    LocalAccount,
    TimeExhausted,
    TransactionFailed,
    TransactionNotFound,
    Web3Exception,
)
from .merkle import abi_encode, keccak

# Shipped as package data (contracts/build, installed as carbonlink.contracts): works from a wheel too.
ARTIFACT = Path(str(files("carbonlink.contracts").joinpath("build", "AnchorRegistry.json")))
KEY_ENV = "CARBONLINK_CHAIN_KEY"
PASSWORD_ENV = "CARBONLINK_CHAIN_PASSWORD"
ZERO_ROOT = b"\0" * 32

OnSent = Callable[[str], Awaitable[None]]


class ChainError(RuntimeError):
    """The chain refused or could not be reached; the text says what to do next."""


class AlreadyAnchored(ChainError):
    def __init__(self, window_id: bytes, root: bytes) -> None:
        super().__init__(f"window 0x{window_id.hex()} is already anchored with root 0x{root.hex()}")
        self.window_id = window_id
        self.root = root


@dataclass(frozen=True)
class WindowKey:
    """What the contract identifies a window by."""

    site: str
    start_ms: int
    end_ms: int
    part: int = 0

    @property
    def id(self) -> bytes:
        """keccak256(abi.encode(site, startMs, endMs, part)), as ``AnchorRegistry.windowId``."""
        return keccak(abi_encode(("string", "uint64", "uint64", "uint32"),
                                 (self.site, self.start_ms, self.end_ms, self.part)))


@dataclass(frozen=True)
class OnchainWindow:
    root: bytes
    start_ms: int
    end_ms: int
    reading_count: int
    anchored_block: int
    part: int


@dataclass(frozen=True)
class AnchorReceipt:
    tx_hash: str
    block: int
    gas_used: int


def load_artifact(path: Path = ARTIFACT) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        raise ChainError(f"{path} is missing: run `node contracts/compile.mjs`") from None


def load_signer(keystore: Path | None = None, *, env: dict[str, str] | None = None) -> LocalAccount | None:
    """The anchoring account: keystore + password from the environment, else a key from the environment."""
    env = dict(os.environ) if env is None else env
    if keystore is not None:
        password = env.get(PASSWORD_ENV)
        if password is None:
            raise ChainError(f"keystore {keystore} needs its password in ${PASSWORD_ENV}")
        try:
            key = Account.decrypt(json.loads(keystore.read_text()), password)
        except (OSError, json.JSONDecodeError) as exc:
            raise ChainError(f"cannot read keystore {keystore}: {exc}") from None
        except ValueError:
            raise ChainError(f"wrong password in ${PASSWORD_ENV} for keystore {keystore}") from None
        return Account.from_key(key)  # type: ignore[no-any-return]
    if env.get(KEY_ENV):
        try:
            return Account.from_key(env[KEY_ENV])  # type: ignore[no-any-return]
        except ValueError:
            raise ChainError(f"${KEY_ENV} is not a 32-byte hex private key") from None
    return None


class _Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        out = []
        lines = self.path.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if n == len(lines):  # a torn last line from a crash mid-write: never sent; drop it
                    self.path.write_text("".join(x + "\n" for x in lines[:-1]))
                    break
                raise ChainError(f"{self.path}:{n} is not JSON; the demo chain journal is damaged") from None
        return out

    def append(self, raw: bytes, tx_hash: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"raw": "0x" + raw.hex(), "hash": tx_hash}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _in_process(journal: _Journal | None) -> tuple[AsyncWeb3, LocalAccount]:
    from eth_tester import EthereumTester, PyEVMBackend
    from eth_tester.exceptions import ValidationError
    from web3 import AsyncEthereumTesterProvider

    backend = PyEVMBackend()
    tester = EthereumTester(backend)
    for n, entry in enumerate(journal.entries() if journal else [], 1):
        try:
            got = tester.send_raw_transaction(entry["raw"])
        except (TransactionFailed, ValidationError, KeyError) as exc:
            raise ChainError(f"replaying {journal.path if journal else ''} failed at transaction {n}: {exc}") from None
        if got.lower() != entry["hash"].lower():
            raise ChainError(f"replaying the demo chain diverged at transaction {n}: {got} != {entry['hash']}")
    provider = AsyncEthereumTesterProvider()
    provider.ethereum_tester = tester  # share the replayed chain instead of the provider's own
    dev = Account.from_key(backend.account_keys[0].to_bytes())
    return AsyncWeb3(provider), dev


class Chain:
    """An open connection to a chain and, optionally, an AnchorRegistry at a known address."""

    def __init__(self, w3: AsyncWeb3, signer: LocalAccount | None, journal: _Journal | None, url: str) -> None:
        self.w3 = w3
        self.signer = signer
        self.url = url
        self._journal = journal
        self._artifact = load_artifact()
        self.registry: Any = None

    @classmethod
    async def connect(cls, url: str, *, signer: LocalAccount | None = None, contract: str | None = None,
                      timeout_s: float = 10.0) -> Chain:
        if url.startswith("evm://"):
            path = url.removeprefix("evm://")
            journal = _Journal(Path(path)) if path else None
            w3, dev = _in_process(journal)
            chain = cls(w3, signer or dev, journal, url)
            if signer is not None and signer.address != dev.address and not await w3.eth.get_balance(signer.address):
                await chain._fund(dev, signer.address)
        elif url.startswith(("http://", "https://")):
            w3 = AsyncWeb3(AsyncHTTPProvider(url, request_kwargs={"timeout": timeout_s}))
            chain = cls(w3, signer, None, url)
            try:
                await w3.eth.chain_id
            except (OSError, Web3Exception) as exc:
                raise ChainError(f"cannot reach the chain node at {url}: {exc}") from None
        else:
            raise ChainError(f"chain URL {url!r} must be http(s)://…, evm:// or evm:///path/journal.jsonl")
        if contract:
            chain.use(contract)
        return chain

    async def _fund(self, dev: LocalAccount, address: str) -> None:
        """Give a configured key ether on the in-process chain (journaled like every transaction)."""
        base = int((await self.w3.eth.get_block("latest"))["baseFeePerGas"])
        tx = {"to": address, "value": 10**21, "gas": 21_000, "chainId": await self.chain_id(),
              "nonce": await self.w3.eth.get_transaction_count(dev.address, "pending"),
              "maxFeePerGas": 2 * base + 10**9, "maxPriorityFeePerGas": 10**9}
        await self._submit(dev, tx)

    async def close(self) -> None:
        provider = self.w3.provider
        if isinstance(provider, AsyncHTTPProvider):
            await provider.disconnect()

    async def chain_id(self) -> int:
        return int(await self.w3.eth.chain_id)

    def use(self, address: str) -> None:
        if not AsyncWeb3.is_address(address):
            raise ChainError(f"{address!r} is not a contract address")
        self.registry = self.w3.eth.contract(address=AsyncWeb3.to_checksum_address(address),
                                             abi=self._artifact["abi"])

    @property
    def address(self) -> str:
        if self.registry is None:
            raise ChainError("no AnchorRegistry address: deploy one or pass its address")
        return str(self.registry.address)

    def _need_signer(self) -> LocalAccount:
        if self.signer is None:
            raise ChainError(f"no signing key: set ${KEY_ENV} or a keystore with ${PASSWORD_ENV}")
        return self.signer

    async def _send(self, fn: Any, on_sent: OnSent | None = None) -> AnchorReceipt:
        """Simulate, sign locally, send raw, journal, report the hash, wait for the receipt."""
        signer = self._need_signer()
        try:
            nonce = await self.w3.eth.get_transaction_count(signer.address, "pending")
            tx = await fn.build_transaction({"from": signer.address, "nonce": nonce})
        except (Web3Exception, TransactionFailed, ValueError, OSError) as exc:  # a revert, as each node says it
            raise self._revert(exc) from None
        return await self._submit(signer, tx, on_sent)

    async def _submit(self, signer: LocalAccount, tx: dict[str, Any], on_sent: OnSent | None = None) -> AnchorReceipt:
        raw = signer.sign_transaction(tx).raw_transaction
        try:
            tx_hash = await self.w3.eth.send_raw_transaction(raw)
        except (OSError, Web3Exception, TransactionFailed) as exc:
            raise ChainError(f"the node refused the transaction: {exc}") from None
        if self._journal is not None:
            self._journal.append(bytes(raw), "0x" + bytes(tx_hash).hex())
        if on_sent is not None:
            await on_sent("0x" + bytes(tx_hash).hex())
        receipt = await self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        if receipt["status"] != 1:
            raise ChainError(f"transaction 0x{bytes(tx_hash).hex()} reverted in block {receipt['blockNumber']}")
        return AnchorReceipt("0x" + bytes(tx_hash).hex(), int(receipt["blockNumber"]), int(receipt["gasUsed"]))

    def _revert(self, exc: Exception) -> ChainError:
        """Name the contract's custom error when the revert data is available."""
        data: bytes | None = None
        raw = getattr(exc, "data", None)  # web3's ContractLogicError / ContractCustomError carry it
        if isinstance(raw, dict):  # some nodes nest it: {"message": ..., "data": "0x..."}
            raw = raw.get("data")
        if isinstance(raw, str) and raw.startswith("0x"):
            try:
                data = bytes.fromhex(raw[2:])
            except ValueError:
                data = None
        elif exc.args and isinstance(exc.args[0], str) and exc.args[0].startswith("execution reverted: b"):
            try:  # eth-tester puts the revert bytes' repr in its message
                data = ast.literal_eval(exc.args[0].removeprefix("execution reverted: "))
            except (ValueError, SyntaxError):
                data = None
        if data and len(data) >= 4:
            for item in self._artifact["abi"]:
                if item["type"] != "error":
                    continue
                sig = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
                if keccak(sig.encode())[:4] == data[:4]:
                    from eth_abi import decode

                    args = decode([i["type"] for i in item["inputs"]], data[4:])
                    if item["name"] == "WindowAlreadyAnchored":
                        return AlreadyAnchored(args[0], args[1])
                    shown = ", ".join("0x" + a.hex() if isinstance(a, bytes) else str(a) for a in args)
                    return ChainError(f"the registry refused: {item['name']}({shown})")
        if isinstance(exc, ContractLogicError | ContractCustomError):
            return ChainError(f"the registry refused: {exc}")
        return ChainError(f"transaction failed before sending: {type(exc).__name__}: {exc}")

    # --- the registry ------------------------------------------------------------------------

    async def deploy(self, admin: str | None = None, anchorer: str | None = None) -> str:
        """Deploy a registry (admin and anchorer default to the signer) and use it."""
        signer = self._need_signer()
        factory = self.w3.eth.contract(abi=self._artifact["abi"], bytecode=self._artifact["bytecode"])
        fn = factory.constructor(admin or signer.address, anchorer or signer.address)
        receipt = await self._send(fn)
        got = await self.w3.eth.get_transaction_receipt(receipt.tx_hash)  # type: ignore[arg-type]
        self.use(str(got["contractAddress"]))
        return self.address

    async def anchor(self, window: WindowKey, root: bytes, count: int,
                     on_sent: OnSent | None = None) -> AnchorReceipt:
        """Write a window's root; AlreadyAnchored if the registry already holds one for it."""
        if self.registry is None:
            raise ChainError("no AnchorRegistry address: deploy one or pass its address")
        existing = await self.get_window(window.id)
        if existing is not None:
            raise AlreadyAnchored(window.id, existing.root)
        fn = self.registry.functions.anchor(window.site, window.start_ms, window.end_ms, window.part, root, count)
        return await self._send(fn, on_sent)

    async def wait_for(self, tx_hash: str, timeout_s: float = 30.0) -> AnchorReceipt | None:
        """The receipt of a transaction sent earlier, or None if the node does not know it (yet)."""
        try:
            r = await self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout_s)  # type: ignore[arg-type]
        except (TimeExhausted, TransactionNotFound):
            return None
        return AnchorReceipt(tx_hash, int(r["blockNumber"]), int(r["gasUsed"])) if r["status"] == 1 else None

    async def anchor_unchecked(self, window: WindowKey, root: bytes, count: int) -> AnchorReceipt:
        """``anchor`` without the read-before-write: the contract alone decides (for tests and audits)."""
        fn = self.registry.functions.anchor(window.site, window.start_ms, window.end_ms, window.part, root, count)
        return await self._send(fn)

    async def get_window(self, window_id: bytes) -> OnchainWindow | None:
        try:
            w = await self.registry.functions.getWindow(window_id).call()
        except (OSError, Web3Exception) as exc:
            raise ChainError(f"cannot read window 0x{window_id.hex()} from {self.address}: {exc}") from None
        if bytes(w[0]) == ZERO_ROOT:
            return None
        return OnchainWindow(bytes(w[0]), int(w[1]), int(w[2]), int(w[3]), int(w[4]), int(w[5]))

    async def find_anchor_tx(self, window_id: bytes, from_block: int = 0) -> AnchorReceipt | None:
        """The transaction that anchored a window, from the registry's Anchored event."""
        logs = await self.registry.events.Anchored().get_logs(
            from_block=from_block, argument_filters={"windowId": window_id})
        if not logs:
            return None
        log = logs[0]
        return AnchorReceipt("0x" + bytes(log["transactionHash"]).hex(), int(log["blockNumber"]), 0)

    async def verify_leaf(self, window_id: bytes, leaf: bytes, proof: Sequence[bytes]) -> bool:
        """OpenZeppelin's MerkleProof, run by the contract against the anchored root."""
        return bool(await self.registry.functions.verifyLeaf(window_id, leaf, list(proof)).call())

    async def rotate_anchorer(self, previous: str, new: str) -> AnchorReceipt:
        return await self._send(self.registry.functions.rotateAnchorer(previous, new))

    async def pause(self) -> AnchorReceipt:
        return await self._send(self.registry.functions.pause())

    async def unpause(self) -> AnchorReceipt:
        return await self._send(self.registry.functions.unpause())
