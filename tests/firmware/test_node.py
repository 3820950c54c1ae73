"""The whole node under MicroPython: sensors → signed batches in flash → own MQTT client → the real ingest."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt

from carbonlink.commands.firmwarelab.node import READINGS_PER_BATCH, cloud, make_node, run_node
from carbonlink.kernel.wire import parse_batch
from tests.services import require_mosquitto_service


async def test_batches_reach_the_cloud_and_are_acked(tmp_path: Path) -> None:
    require_mosquitto_service()
    cfg = make_node(tmp_path / "node", 1883)
    async with cloud(tmp_path, "mqtt://127.0.0.1:1883", cfg) as svc:
        out, stats = await run_node(tmp_path / "node", 3)
        assert out.count("uplink True") == 3, out
        assert stats["pending"] == 0 and stats["corrupt"] == 0
        store = svc.store
        assert svc.counters.batches_committed == 3
        rows = await store.data.latest()
        mine = {(r["device"], r["point"]): r["value"] for r in rows if r["gateway"] == cfg["node_id"]}
        # Values went through integer fixed-point on the node and arrive exact.
        assert mine[("flow-1", "flow")] == 12.34 and mine[("flow-1", "temp")] == -3.6
        assert mine[("flow-1", "total")] == 100000 and mine[("soil-1", "soil_moisture")] == 66.6
        assert mine[("soil-2", "soil_temperature")] == -1 and mine[("air-1", "temperature")] == 21.5
        assert mine[("air-1", "humidity")] == 50.55 and mine[("air-1", "battery")] == 97
        assert len(mine) == READINGS_PER_BATCH
        counts = await store.data.counts()
        assert counts.get("dead_letters", 0) == 0
        gws = {g["id"]: g for g in await store.registry.list_gateways()}
        assert gws[cfg["node_id"]]["status"] == "offline"  # said goodbye before deep sleep
        # Stored payloads are exactly what CPython's parser accepts, seqs strictly increasing.
        got = await store.db.fetch("SELECT seq, payload FROM batches WHERE gateway = ? ORDER BY seq", cfg["node_id"])
        seqs = [parse_batch(bytes(r["payload"])).seq for r in got]
        assert seqs == sorted(seqs) and len(seqs) == 3 and seqs[1] == seqs[0] + 1


async def test_buffered_offline_then_delivered_in_order(tmp_path: Path) -> None:
    """Four wakes without radio (uplink every 4th wake), then everything goes in one session."""
    require_mosquitto_service()
    cfg = make_node(tmp_path / "node", 1883, uplink_every=4, window=3)
    async with cloud(tmp_path, "mqtt://127.0.0.1:1883", cfg) as svc:
        out, stats = await run_node(tmp_path / "node", 7)
        assert out.count("uplink None") == 6 and out.count("uplink True") == 1, out
        assert stats["pending"] == 3  # wakes 5-7 wait for wake 8
        assert svc.counters.batches_committed == 4
        counts = await svc.store.data.counts()
        assert counts["readings"] >= 4 * READINGS_PER_BATCH


async def test_shadow_delta_applied_or_rejected_and_reported(tmp_path: Path) -> None:
    require_mosquitto_service()
    d = tmp_path / "node"
    cfg = make_node(d, 1883)
    prefix = f"cl/{cfg['site']}/{cfg['node_id']}/shadow/"
    async with cloud(tmp_path, "mqtt://127.0.0.1:1883", cfg), \
            aiomqtt.Client("127.0.0.1", 1883, identifier=f"console-{cfg['node_id']}") as console:
        await console.subscribe(prefix + "update", qos=1)
        await run_node(d, 1)  # the node's persistent session now holds its subscriptions
        deltas = [
            b"{not json",
            json.dumps({"version": 1, "state": {"sample_interval_s": 5}}).encode(),
            json.dumps({"version": 2, "state": {"sensors_enabled": ["flow", "nope"],
                                                "sleep": {"deep": "yes"}}}).encode(),
            json.dumps({"version": 3, "state": {"sample_interval_s": 600, "sensors_enabled": ["flow", "air"],
                                                "sleep": {"uplink_every": 1}}}).encode(),
            json.dumps({"version": 3, "state": {"sample_interval_s": 900}}).encode(),  # stale
        ]
        for m in deltas:
            await console.publish(prefix + "update/delta", m, qos=1)
        _out, _ = await run_node(d, 1)
        reports = []
        async with asyncio.timeout(10):
            async for msg in console.messages:
                reports.append(json.loads(bytes(msg.payload)))  # type: ignore[arg-type]
                if len(reports) == 2 + len(deltas):
                    break
        by_version = [r for r in reports if "rejected" in r or r["version"] in (1, 2, 3)]
        rejected = [r["rejected"] for r in by_version if "rejected" in r]
        assert {"delta": "is not a JSON object"} in rejected
        assert any("sample_interval_s" in r and "10 to 86400" in r["sample_interval_s"] for r in rejected)
        assert any("sensors_enabled" in r and "sleep.deep" in r for r in rejected)
        assert any("version" in r and "stale" in r["version"] for r in rejected)
        accepted = [r for r in by_version if "rejected" not in r and r["version"] == 3]
        assert accepted and accepted[0]["state"]["reported"]["sample_interval_s"] == 600
        assert accepted[0]["state"]["reported"]["sensors_enabled"] == ["flow", "air"]
        # Kept across a reset, and used: the next batch only has the enabled sensors.
        await run_node(d, 1)
        async with asyncio.timeout(10):
            async for msg in console.messages:
                r = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                if "buffer" in r["state"]["reported"]:
                    assert r["version"] == 3 and r["state"]["reported"]["sample_interval_s"] == 600
                    break
