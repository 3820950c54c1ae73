"""An anomaly model too large for a shadow reaches the gateway by hash: uploaded to the cloud, named in
desired.model, fetched over MQTT (model/get → model), checked, loaded and reported. Real Mosquitto,
a Modbus simulator, the edge agent, the control link and the upload API, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import onnx  # the ml extra, installed by make (a missing one fails, never skips)
import pytest

from carbonlink.cloud.commands import ControlLink
from carbonlink.cloud.store import Store
from carbonlink.edge.agent import EdgeAgent
from carbonlink.edge.config import load_gateway_config
from carbonlink.edge.identity import public_key_hex
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.modbus_host import ModbusDeviceHost
from tests.cloud.store.conftest import throwaway_store
from tests.e2e.test_control import SITE, control_api, gateway_yaml, start_link
from tests.services import free_port, own_mosquitto, until

T0 = 1_767_225_600.0


@pytest.fixture(params=["sqlite", "postgres"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    async with throwaway_store(request.param, tmp_path, "clmodel_") as s:
        yield s


def variant(version: int) -> bytes:
    """The packaged model under another version: other bytes, other hash, the same contract."""
    from carbonlink.anomaly.model import default_model_bytes

    m = onnx.load_from_string(default_model_bytes())
    for prop in m.metadata_props:
        if prop.key == "carbonlink.version":
            prop.value = str(version)
    return m.SerializeToString()


async def test_a_model_by_hash_is_fetched_checked_and_run(any_store: Store, tmp_path: Path) -> None:
    from carbonlink.anomaly.model import sha256_hex

    store = any_store
    gw = "gw-" + uuid.uuid4().hex[:6]
    data = variant(7)
    digest = sha256_hex(data)
    assert await store.models.put("acme", digest, "cl-anomaly", 7, data, by="test", now=1)
    with own_mosquitto() as (url, _port, _):
        async with ModbusDeviceHost(CemsStack(clock=lambda: T0).fill, port=free_port()) as sim:
            cfg_path = gateway_yaml(tmp_path, gw, url, sim.port)
            agent = EdgeAgent(load_gateway_config(cfg_path), config_path=cfg_path)
            await store.registry.register_gateway(gw, SITE, "ed25519", public_key_hex(agent.key), tenant="acme")
            control = ControlLink(store, url, client_id="ctl-" + gw)
            http = control_api(control)
            link = await start_link(control)
            await agent.start()
            try:
                before = agent.anomaly.model.info.sha256 if agent.anomaly.model else None
                assert before != digest
                # a model this tenant does not hold: refused with the reason, the running model stays
                missing = {"id": "cl-anomaly", "version": 9, "sha256": "ab" * 32}
                r = await http.patch(f"/api/gateways/{gw}/shadow", json={"state": {"desired": {"model": missing}}})
                assert r.status_code == 200, r.text

                async def rejected() -> bool:
                    s = (await http.get(f"/api/gateways/{gw}/shadow")).json()
                    return "cannot deliver" in s.get("rejected", {}).get("model", "")
                await until(rejected, 15)
                assert (agent.anomaly.model.info.sha256 if agent.anomaly.model else None) == before

                wanted = {"id": "cl-anomaly", "version": 7, "sha256": digest}
                r = await http.patch(f"/api/gateways/{gw}/shadow", json={"state": {"desired": {"model": wanted}}})
                assert r.status_code == 200, r.text

                async def running() -> bool:
                    s = (await http.get(f"/api/gateways/{gw}/shadow")).json()
                    return (s["state"]["reported"].get("model", {}).get("running") or {}).get("sha256") == digest
                await until(running, within=30)
                assert agent.anomaly.model is not None and agent.anomaly.model.info.version == 7
                assert control.models.served >= 1 and control.models.refused >= 1  # asked again on get and delta
                shadow = (await http.get(f"/api/gateways/{gw}/shadow")).json()
                assert "model" not in shadow.get("rejected", {})
                # kept on the gateway's disk: a restart runs it without asking again
                assert (tmp_path / "edge" / "anomaly" / "current.onnx").read_bytes() == data
            finally:
                await agent.stop()
                link.cancel()
                await asyncio.gather(link, return_exceptions=True)
