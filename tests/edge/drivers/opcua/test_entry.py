"""``run_cems_opcua``, the entry point behind ``carbonlink sim cems --opcua-port``."""

from __future__ import annotations

import asyncio

from carbonlink.edge.drivers.opcua import OpcUaDevice, OpcUaDriver
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.cems_opcua import CemsOpcUaServer, run_cems_opcua
from tests.services import port_open, until
from tests.simulators.clocks import Paced

from .helpers import take


async def test_serves_until_the_stop_event_on_the_given_port(port: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run_cems_opcua(port, stop, interval_s=0.2, stack=CemsStack(clock=Paced())))
    try:
        await until(lambda: port_open(port, timeout=0.1) or task.done(), 30)  # asyncua starts slowly under load
        layout = CemsOpcUaServer(port=port, stack=CemsStack(clock=Paced()))  # only for the documented addresses
        settings = OpcUaDevice.model_validate({
            "id": "stack1", "driver": "opcua", "endpoint": layout.url,
            "nodes": [{"name": "so2", "browse_path": layout.browse_paths["so2"], "unit": "mg/m³"}]})
        batch = (await take(OpcUaDriver("stack1", settings), 1))[0]
        assert batch[0].point == "so2" and batch[0].value > 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert not port_open(port, timeout=0.2)
