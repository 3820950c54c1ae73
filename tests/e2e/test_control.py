"""Shadows and commands end to end: real Mosquitto, a Modbus simulator, the edge agent, the control API."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import yaml
from fastapi import FastAPI

from carbonlink.cloud.commands import ControlLink
from carbonlink.cloud.routes_control import create_control_router
from carbonlink.cloud.store import open_store
from carbonlink.edge.agent import EdgeAgent
from carbonlink.edge.config import load_gateway_config
from carbonlink.edge.identity import public_key_hex
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.modbus_host import ModbusDeviceHost
from tests.services import free_port, own_mosquitto, until

SITE = "site-ctl"


def gateway_yaml(tmp: Path, gw: str, mqtt: str, modbus_port: int) -> Path:
    cfg = {"gateway": {"id": gw, "site": SITE, "key_file": "gw.key", "data_dir": "edge"},
           "mqtt": {"url": mqtt, "ack_timeout_s": 2},
           "batch": {"max_readings": 500, "max_age_s": 0.3},
           "devices": [{"id": "cems", "driver": "modbus_tcp", "host": "127.0.0.1", "port": modbus_port,
                        "poll_interval_s": 1.0, "pointmap": "cems"}]}
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def control_api(control: ControlLink) -> httpx.AsyncClient:
    """An HTTP client for the control routes (shadow, commands) of this control link, in process."""
    app = FastAPI()
    app.include_router(create_control_router(control))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def start_link(control: ControlLink) -> asyncio.Task[None]:
    """The control link running, once it is connected to the broker."""
    link = asyncio.create_task(control.run())
    await asyncio.wait_for(control.connected.wait(), 10)
    return link


async def test_shadow_and_commands_across_outages(tmp_path: Path) -> None:
    gw = "gw-" + uuid.uuid4().hex[:6]
    store = open_store(f"sqlite:///{tmp_path / 'cloud.sqlite'}")
    await store.open()
    with own_mosquitto() as (url, _port, _):
        async with ModbusDeviceHost(CemsStack().fill, port=free_port()) as sim:
            cfg_path = gateway_yaml(tmp_path, gw, url, sim.port)
            cfg = load_gateway_config(cfg_path)
            agent = EdgeAgent(cfg, config_path=cfg_path)
            await store.registry.register_gateway(gw, SITE, "ed25519", public_key_hex(agent.key))
            control = ControlLink(store, url, client_id="ctl-" + gw)
            http = control_api(control)
            link = await start_link(control)

            # The operator changes desired while the gateway is offline.
            desired = {"log_level": "WARNING", "batch": {"max_readings": 50},
                       "devices": {"cems": {"poll_interval_s": 0.3, "points": ["nox", "so2"]}},
                       "firmware": "2.0"}
            r = await http.patch(f"/api/gateways/{gw}/shadow", json={"state": {"desired": desired}, "version": 0})
            assert r.status_code == 200 and r.json()["version"] == 1, r.text
            r = await http.patch(f"/api/gateways/{gw}/shadow", json={"state": {"desired": {"log_level": "INFO"}},
                                                                     "version": 0})
            assert r.status_code == 409 and "stale" in r.json()["detail"]
            r = await http.patch(f"/api/gateways/{gw}/shadow",
                                 json={"state": {"desired": {"batch": {"max_readings": "many"}}}})
            assert r.status_code == 422
            assert (await http.patch("/api/gateways/gw-nobody/shadow",
                                     json={"state": {"desired": {}}})).status_code == 404

            # Then the cloud's control plane goes down; the gateway comes up and still gets desired (retained).
            link.cancel()
            await asyncio.gather(link, return_exceptions=True)
            await agent.start()
            try:
                await until(lambda: agent.policy.live_max_readings == 50 and "cems" in agent.point_filter, 15)
                assert agent.devices["cems"].poll_interval_s == 0.3
                await until(lambda: agent.produced > 0, 15)
                # Control comes back: the gateway's queued report reaches the shadow (persistent session).
                link = asyncio.create_task(control.run())

                async def reported() -> bool:  # the gateway may report what it applied in more than one message
                    s = (await http.get(f"/api/gateways/{gw}/shadow")).json()
                    return s["state"]["reported"].get("log_level") == "WARNING" and "batch" not in s["state"]["delta"]
                await until(reported, 15)
                shadow = (await http.get(f"/api/gateways/{gw}/shadow")).json()
                assert shadow["state"]["delta"] == {"firmware": "2.0"}  # the one key the gateway cannot apply
                assert shadow["rejected"] == {"firmware": "unknown key"}
                assert shadow["state"]["reported"]["devices"]["cems"]["points"] == ["nox", "so2"]

                # Commands: a fresh read honours the point filter; bad ones are refused clearly.
                r = await http.post(f"/api/gateways/{gw}/commands", json={"name": "read_now",
                                                                          "args": {"device": "cems"}})
                assert r.status_code == 200 and r.json()["status"] == "ok", r.text
                assert {p["point"] for p in r.json()["result"]["cems"]} == {"so2", "nox"}
                r = await http.post(f"/api/gateways/{gw}/commands", json={"name": "restart_driver",
                                                                          "args": {"device": "ghost"}})
                assert r.json()["status"] == "rejected" and "ghost" in r.json()["result"]["error"]
                r = await http.post(f"/api/gateways/{gw}/commands", json={"name": "reload_config"})
                assert r.json()["status"] == "ok"
                assert agent.devices["cems"].poll_interval_s == 0.3  # desired still wins over the file
                assert (await http.post("/api/gateways/gw-nobody/commands",
                                        json={"name": "read_now"})).status_code == 404
                r = await http.post(f"/api/gateways/{gw}/commands", json={"name": "format_disk"})
                assert r.status_code == 422

                # Bad shadow requests over MQTT are answered on the rejected topics and change nothing.
                before = (await http.get(f"/api/gateways/{gw}/shadow")).json()["version"]
                answers = await mqtt_requests(url, gw)
                assert [a["code"] for a in answers] == [409, 400, 403, 413, 404]
                assert (await http.get(f"/api/gateways/{gw}/shadow")).json()["version"] == before
            finally:
                await agent.stop()
            # An offline gateway: the command times out with a 504 and is recorded as such.
            r = await http.post(f"/api/gateways/{gw}/commands?timeout=1", json={"name": "read_now"})
            assert r.status_code == 504
            assert (await http.get(f"/api/gateways/{gw}/commands")).json()[0]["status"] == "timeout"
            link.cancel()
            await asyncio.gather(link, return_exceptions=True)

    # No broker and no cloud at all: a restarted gateway applies the desired state it saved.
    offline = EdgeAgent(load_gateway_config(cfg_path), mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    await offline.start()
    try:
        state = offline.effective_state()
        assert state["batch"]["max_readings"] == 50 and state["log_level"] == "WARNING"
        assert state["devices"]["cems"] == {"enabled": True, "poll_interval_s": 0.3, "points": ["nox", "so2"]}
    finally:
        await offline.stop()
        import logging
        logging.getLogger().setLevel(logging.WARNING)
    await store.close()


async def mqtt_requests(url: str, gw: str) -> list[dict[str, Any]]:
    port = int(url.rsplit(":", 1)[1])
    base = f"cl/{SITE}/{gw}"
    requests = [
        (f"{base}/shadow/update", {"state": {"reported": {"x": 1}}, "version": 1}),  # stale
        (f"{base}/shadow/update", {"state": {"reported": "x"}}),  # wrong type
        (f"{base}/shadow/update", {"state": {"desired": {"log_level": "DEBUG"}}}),  # not the gateway's to set
        (f"{base}/shadow/update", {"state": {"reported": {"blob": "x" * 20000}}}),  # oversized
        (f"cl/{SITE}/gw-nobody/shadow/get", {}),  # unknown gateway
    ]
    out = []
    async with aiomqtt.Client("127.0.0.1", port, identifier="bad-" + gw) as c:
        await c.subscribe(f"{base}/shadow/update/rejected", qos=1)
        await c.subscribe(f"cl/{SITE}/gw-nobody/shadow/get/rejected", qos=1)
        for topic, body in requests:
            await c.publish(topic, json.dumps(body).encode(), qos=1)
            async with asyncio.timeout(10):
                async for m in c.messages:
                    out.append(json.loads(m.payload))  # type: ignore[arg-type]
                    break
    return out


