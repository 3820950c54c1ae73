"""`carbonlink anchor` and `carbonlink verify` on the in-process demo chain, across a demo restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from carbonlink.cloud.anchor.jobs import AnchorSettings, running_anchor
from carbonlink.commands.anchor import anchor_app, verify_app
from carbonlink.kernel.wire import format_ts
from tests.cloud.anchor.conftest import T0, Plant

runner = CliRunner()


async def invoke(app, *args: str, env: dict[str, str] | None = None):
    # the commands call asyncio.run themselves: run them off this test's loop
    return await asyncio.to_thread(runner.invoke, app, list(args), env=env)


async def test_anchor_then_verify_after_a_restart(plant: Plant, tmp_path: Path) -> None:
    readings = await plant.cems(T0, minutes=5)
    db = plant.store.url
    chain = f"evm://{tmp_path / 'chain.jsonl'}"

    # --settle 0 and real time: the 2023 windows are long over
    res = await invoke(anchor_app, "run", "--db", db, "--chain", chain, "--once", "--settle", "0", "--json")
    assert res.exit_code == 0, res.output
    tick = json.loads(res.stdout)
    assert tick["scanned"] >= 1 and [j["state"] for j in tick["anchored"]] == ["anchored"]

    res = await invoke(anchor_app, "jobs", "--db", db, "--json")
    assert [j["count"] for j in json.loads(res.stdout)] == [15]

    r = readings[7]
    bundle_file = tmp_path / "bundle.json"
    res = await invoke(verify_app, "reading", "--db", db, "--gateway", plant.gateway, "--device", r.device,
                       "--point", r.point, "--ts", format_ts(r.ts_ms), "--out", str(bundle_file))
    assert res.exit_code == 0, res.output
    assert "carbonlink verify bundle" in res.stdout

    # a fresh process replays the demo chain from its journal: the bundle still verifies
    res = await invoke(verify_app, "bundle", str(bundle_file), "--rpc", chain, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ok"] and len(report["checks"]) == 8

    res = await invoke(verify_app, "bundle", str(bundle_file), "--rpc", chain)
    assert res.exit_code == 0 and "VERIFIED" in res.stdout

    tampered = json.loads(bundle_file.read_text())
    tampered["reading"]["quality"] = "N" if r.quality.value != "N" else "C"
    bundle_file.write_text(json.dumps(tampered))
    res = await invoke(verify_app, "bundle", str(bundle_file), "--rpc", chain, "--json")
    assert res.exit_code == 1
    failed = {c["name"]: c["detail"] for c in json.loads(res.stdout)["checks"] if c["status"] == "fail"}
    assert "quality" in failed["batch"] and "leaf" in failed

    # a second run anchors nothing again
    res = await invoke(anchor_app, "run", "--db", db, "--chain", chain, "--once", "--settle", "0", "--json")
    assert json.loads(res.stdout)["anchored"] == []


async def test_errors_say_what_to_do(plant: Plant, tmp_path: Path) -> None:
    db = plant.store.url
    res = await invoke(verify_app, "reading", "--db", db, "--gateway", "gw-1", "--device", "x", "--point", "p",
                       "--ts", "yesterday")
    assert res.exit_code == 2 and "YYYY-MM-DDTHH:MM:SS.mmmZ" in res.output
    await plant.cems(T0, minutes=1)
    res = await invoke(verify_app, "reading", "--db", db, "--gateway", "gw-1", "--device", "cems-1",
                       "--point", "SO2", "--ts", str(T0))
    assert res.exit_code == 2 and "not been sealed yet" in res.output
    res = await invoke(anchor_app, "jobs", "--db", f"sqlite:///{tmp_path / 'none.sqlite'}")
    assert res.exit_code == 2 and "start the cloud store first" in res.output
    res = await invoke(anchor_app, "new-key", "--out", str(tmp_path / "k.json"), env={"CARBONLINK_CHAIN_PASSWORD": ""})
    assert res.exit_code == 2 and "CARBONLINK_CHAIN_PASSWORD" in res.output
    res = await invoke(anchor_app, "new-key", "--out", str(tmp_path / "k.json"), "--json",
                       env={"CARBONLINK_CHAIN_PASSWORD": "pw"})
    address = json.loads(res.stdout)["address"]
    from carbonlink.cloud.anchor.chain import load_signer

    assert load_signer(tmp_path / "k.json", env={"CARBONLINK_CHAIN_PASSWORD": "pw"}).address == address
    import pytest

    from carbonlink.cloud.anchor.chain import ChainError

    with pytest.raises(ChainError, match="wrong password"):
        load_signer(tmp_path / "k.json", env={"CARBONLINK_CHAIN_PASSWORD": "nope"})
    with pytest.raises(ChainError, match="needs its password"):
        load_signer(tmp_path / "k.json", env={})
    key = "0x" + "42" * 32
    assert load_signer(None, env={"CARBONLINK_CHAIN_KEY": key}).key.hex() in key
    assert load_signer(None, env={}) is None


async def test_running_anchor_in_the_background(plant: Plant, tmp_path: Path) -> None:
    """What `carbonlink demo` would run: the loop anchors on its own, and stops cleanly."""
    await plant.cems(T0, minutes=5)
    chain = f"evm://{tmp_path / 'chain.jsonl'}"
    async with running_anchor(plant.store, chain, settings=AnchorSettings(settle_s=0),
                              interval_s=0.05) as service:
        for _ in range(100):
            if await service.jobs(state="anchored"):
                break
            await asyncio.sleep(0.05)
        jobs = await service.jobs(state="anchored")
    assert [j.count for j in jobs] == [15]
