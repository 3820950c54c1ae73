"""`carbonlink anchor …` (run the anchoring service, list jobs, deploy, make a key) and
`carbonlink verify …` (build a proof bundle for a reading, verify a bundle against any chain node)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from carbonlink.cloud.anchor.chain import KEY_ENV, PASSWORD_ENV, Chain, ChainError, load_signer
from carbonlink.cloud.anchor.ethereum import Account
from carbonlink.cloud.anchor.jobs import AnchorService, AnchorSettings, Job
from carbonlink.cloud.anchor.proof import BundleError, build_bundle, verify_bundle
from carbonlink.commands.common import DEFAULT_DB, err, fail, out, store_for
from carbonlink.kernel.wire import WireError, format_ts, parse_ts

anchor_app = typer.Typer(help="Anchor committed readings on chain: one Merkle root per site window.",
                         no_args_is_help=True)
verify_app = typer.Typer(help="Proof bundles: prove a reading, or check a bundle against a chain node.",
                         no_args_is_help=True)


DEFAULT_CHAIN = "evm:///var/cloud/chain.jsonl"

DbOpt = Annotated[str, typer.Option(help="cloud storage URL (sqlite:///…)")]
ChainOpt = Annotated[str, typer.Option(
    "--chain", help="JSON-RPC URL, or evm:///path/journal.jsonl for the in-process demo chain")]
KeystoreOpt = Annotated[Path | None, typer.Option(
    help=f"eth-account keystore file; its password in ${PASSWORD_ENV} (else the key in ${KEY_ENV})")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _ts(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return parse_ts(text)
    except WireError as exc:
        raise fail(f"--ts: {exc}; or give milliseconds since the epoch") from None


def _site_windows(items: list[str]) -> dict[str, int]:
    result = {}
    for item in items:
        site, _, seconds = item.partition("=")
        if not site or not seconds.isdigit() or int(seconds) <= 0:
            raise fail(f"--site-window {item!r} must be SITE=SECONDS, e.g. plant-7=600")
        result[site] = int(seconds)
    return result


async def _chain(url: str, keystore: Path | None, contract: str | None) -> Chain:
    return await Chain.connect(url, signer=load_signer(keystore), contract=contract)


def _jobs_table(jobs: list[Job], title: str) -> Table:
    table = Table(title=title)
    for col in ("id", "site", "window (UTC)", "part", "readings", "state", "block", "tx / last error"):
        table.add_column(col)
    for j in jobs:
        table.add_row(str(j.id), j.site, f"{format_ts(j.start_ms)[:16]} +{(j.end_ms - j.start_ms) // 1000}s",
                      str(j.part), str(j.count), j.state, str(j.block or ""),
                      (j.tx_hash or "")[:18] + ("…" if j.tx_hash else "") if not j.last_error else j.last_error[:60])
    return table


# --- anchor -----------------------------------------------------------------------------------


@anchor_app.command("run")
def anchor_run(
    db: DbOpt = DEFAULT_DB,
    chain: ChainOpt = DEFAULT_CHAIN,
    contract: Annotated[str | None, typer.Option(help="AnchorRegistry address (else the recorded one,"
                                                      " else a new deployment)")] = None,
    keystore: KeystoreOpt = None,
    window: Annotated[int, typer.Option(help="window length in seconds")] = 300,
    site_window: Annotated[list[str] | None, typer.Option(help="per-site window, SITE=SECONDS (repeat)")] = None,
    settle: Annotated[float, typer.Option(help="seconds after a window ends before it is sealed")] = 60.0,
    interval: Annotated[float, typer.Option(help="seconds between runs")] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="one scan / seal / send, then exit")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Seal ended windows into Merkle roots and anchor them; safe to stop and restart at any time."""
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    settings = AnchorSettings(window_s=window, site_window_s=_site_windows(site_window or []), settle_s=settle)

    async def go() -> dict[str, Any] | None:
        node = await _chain(chain, keystore, contract)
        try:
            async with store_for(db, create=False) as store:
                service = AnchorService(store, node, settings)
                address = await service.ensure_registry()
                err.print(f"anchoring to AnchorRegistry {address} on chain {await node.chain_id()}")
                if not once:
                    await service.run(interval)
                    return None
                tick = await service.run_once()
                return {"scanned": tick.scanned, "sealed": [j.to_dict() for j in tick.sealed],
                        "anchored": [j.to_dict() for j in tick.anchored],
                        "failed": [j.to_dict() for j in tick.failed], "contract": address}
        finally:
            await node.close()

    try:
        result = asyncio.run(go())
    except (ChainError, FileNotFoundError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        return
    if result is not None:
        if json_out:
            print(json.dumps(result, indent=2))
        else:
            out.print(f"scanned {result['scanned']} hours, sealed {len(result['sealed'])} windows,"
                      f" anchored {len(result['anchored'])}, failed {len(result['failed'])}")
        if result["failed"]:
            raise typer.Exit(1)


@anchor_app.command("jobs")
def anchor_jobs(
    db: DbOpt = DEFAULT_DB,
    state: Annotated[str | None, typer.Option(help="pending, sending, anchored or conflict")] = None,
    site: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 50,
    json_out: JsonOpt = False,
) -> None:
    """List anchoring jobs, newest first."""

    async def go() -> list[Job]:
        async with store_for(db, create=False) as store:
            return await AnchorService(store).jobs(state=state, site=site, limit=limit)

    try:
        jobs = asyncio.run(go())
    except (FileNotFoundError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    if json_out:
        print(json.dumps([j.to_dict() for j in jobs], indent=2))
    else:
        out.print(_jobs_table(jobs, f"anchor jobs in {db}"))


@anchor_app.command("deploy")
def anchor_deploy(
    chain: ChainOpt = DEFAULT_CHAIN,
    keystore: KeystoreOpt = None,
    admin: Annotated[str | None, typer.Option(help="admin address (default: the signer)")] = None,
    anchorer: Annotated[str | None, typer.Option(help="anchoring service address (default: the signer)")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Deploy an AnchorRegistry; pass its address to `anchor run --contract`."""

    async def go() -> dict[str, Any]:
        node = await _chain(chain, keystore, None)
        try:
            address = await node.deploy(admin, anchorer)
            return {"contract": address, "chain_id": await node.chain_id(),
                    "admin": admin or node._need_signer().address, "anchorer": anchorer or node._need_signer().address}
        finally:
            await node.close()

    try:
        result = asyncio.run(go())
    except ChainError as exc:
        raise fail(str(exc)) from None
    if json_out:
        print(json.dumps(result))
    else:
        out.print(f"AnchorRegistry deployed at [bold]{result['contract']}[/] on chain {result['chain_id']}"
                  f" (admin {result['admin']}, anchorer {result['anchorer']})")


@anchor_app.command("new-key")
def anchor_new_key(
    out_file: Annotated[Path, typer.Option("--out", help="keystore file to write")],
    json_out: JsonOpt = False,
) -> None:
    """Create an anchoring key in an encrypted keystore (password from $CARBONLINK_CHAIN_PASSWORD)."""
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        raise fail(f"set ${PASSWORD_ENV} to the keystore password first")
    if out_file.exists():
        raise fail(f"{out_file} exists; refusing to overwrite a key")
    account = Account.create()
    out_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0600 from the first byte (not chmod after writing): the keystore is never readable by others.
    fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(Account.encrypt(account.key, password)))
    if json_out:
        print(json.dumps({"address": account.address, "keystore": str(out_file)}))
    else:
        out.print(f"wrote {out_file} for address [bold]{account.address}[/]: fund it, then grant it the anchorer role"
                  " (deploy with --anchorer, or rotateAnchorer)")


# --- verify -----------------------------------------------------------------------------------


@verify_app.command("reading")
def verify_reading(
    gateway: Annotated[str, typer.Option(help="gateway id")],
    device: Annotated[str, typer.Option(help="device id")],
    point: Annotated[str, typer.Option(help="point name")],
    ts: Annotated[str, typer.Option(help="reading time: YYYY-MM-DDTHH:MM:SS.mmmZ or epoch milliseconds")],
    db: DbOpt = DEFAULT_DB,
    out_file: Annotated[Path | None, typer.Option("--out", help="write the bundle to this file")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Build the proof bundle of one anchored reading."""
    ts_ms = _ts(ts)

    async def go() -> dict[str, Any]:
        async with store_for(db, create=False) as store:
            return await build_bundle(store, gateway, device, point, ts_ms)

    try:
        bundle = asyncio.run(go())
    except (BundleError, FileNotFoundError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    text = json.dumps(bundle, indent=2)
    if out_file is not None:
        out_file.write_text(text + "\n")
    if json_out:
        print(text)
        return
    r, w, a = bundle["reading"], bundle["window"], bundle["anchor"]
    table = Table(title=f"proof bundle{' → ' + str(out_file) if out_file else ''}", show_header=False)
    for k, v in (("reading", f"{r['gateway']}/{r['device']}/{r['point']} {r['ts']} = {r['value']} {r['unit']}"
                              f" ({r['quality']})"),
                 ("batch", f"{r['gateway']}#{r['seq']}, {bundle['batch']['alg']}"),
                 ("leaf", bundle["leaf"]["hash"]), ("proof", f"{len(bundle['proof'])} hashes"),
                 ("root", bundle["root"]),
                 ("window", f"{w['site']} {w['start']} → {w['end']} part {w['part']}, {w['count']} readings"),
                 ("anchored", f"chain {a['chain_id']}, contract {a['contract']}, block {a['block']}"),
                 ("transaction", a["tx_hash"])):
        table.add_row(k, str(v))
    out.print(table)
    if out_file is not None:
        out.print(f"check it with: carbonlink verify bundle {out_file} --rpc <node URL>")


@verify_app.command("bundle")
def verify_bundle_cmd(
    file: Annotated[Path, typer.Argument(help="proof bundle JSON")],
    rpc: Annotated[str | None, typer.Option(help="chain node: http(s)://… or evm:///path/journal.jsonl")] = None,
    hmac_secret: Annotated[str | None, typer.Option(help="hex secret, to check an HMAC-signed node batch")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Verify a bundle: signature, batch, leaf, proof, window and (with --rpc) the root on chain."""
    try:
        text = file.read_text()
        secret = bytes.fromhex(hmac_secret) if hmac_secret else None
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc}") from None
    except ValueError:
        raise fail("--hmac-secret must be hex") from None
    report = asyncio.run(verify_bundle(text, rpc, hmac_secret=secret))
    if json_out:
        print(json.dumps({**report.to_dict(), "chain_checked": rpc is not None}, indent=2))
    else:
        table = Table(title=f"verification of {file}")
        for col in ("check", "result", "detail"):
            table.add_column(col)
        colour = {"pass": "green", "fail": "red", "unverifiable": "yellow"}
        for c in report.checks:
            table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail)
        out.print(table)
        if rpc is None:
            err.print("[yellow]no --rpc: the root was not checked on chain[/]")
        out.print("[green]VERIFIED[/]" if report.ok else "[red]NOT VERIFIED[/]")
    if not report.ok:
        raise typer.Exit(1)
