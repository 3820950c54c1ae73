"""A gateway configured with `hj212_upload` forwards its readings to a monitoring platform in HJ 212 form."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from carbonlink.codecs.hj212.readings import packet_to_readings
from carbonlink.edge.agent import EdgeAgent
from carbonlink.edge.config import load_gateway_config
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.modbus_host import ModbusDeviceHost
from tests.edge.hj212.test_uploader import Platform, serve
from tests.services import free_port
from tests.simulators.clocks import Paced

MN = "CEMS00000000000000000042"


async def test_gateway_forwards_cems_readings_to_the_platform(tmp_path: Path) -> None:
    platform, stack = Platform(), CemsStack(clock=Paced())
    async with serve(platform) as platform_port, ModbusDeviceHost(stack.fill, port=free_port()) as sim:
        cfg = {
            "gateway": {"id": "gw-hj", "site": "plant-a", "key_file": "gw.key", "data_dir": "edge"},
            # No broker is reachable: forwarding to the platform must not depend on the cloud link.
            "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"},
            "devices": [{"id": "stack-1", "driver": "modbus_tcp", "host": "127.0.0.1", "port": sim.port,
                         "poll_interval_s": 0.2, "pointmap": "cems"}],
            "hj212_upload": [{"host": "127.0.0.1", "port": platform_port, "pw": "123456",
                              "stations": {"stack-1": MN}, "reply_timeout_s": 2}],
        }
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
        agent = EdgeAgent(load_gateway_config(tmp_path / "gateway.yaml"))
        await agent.start()
        try:
            for _ in range(100):
                if len(platform.packets) >= 3:
                    break
                await asyncio.sleep(0.1)
        finally:
            await agent.stop()
    assert len(platform.packets) >= 3 and {p.mn for p in platform.packets} == {MN}
    readings = [r for p in platform.packets for r in packet_to_readings(p, "stack-1").readings]
    so2 = [r.value for r in readings if r.point == "so2"]
    assert so2 and all(0 < v < 100 for v in so2)  # the simulator's SO2, carried through HJ 212
