"""Entry points for the processes the fault suite kills: an ingest worker and an edge agent.

``python -m carbonlink.faults.procs ingest STORE_URL MQTT_URL CLIENT_ID GROUP``
``python -m carbonlink.faults.procs edge CONFIG``
SIGTERM stops them cleanly (the edge first stops its devices and drains); SIGKILL is the fault.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path


async def ingest(store_url: str, mqtt_url: str, client_id: str, group: str) -> None:
    from carbonlink.cloud.ingest import IngestService
    from carbonlink.cloud.store import open_store

    store = open_store(store_url)
    await store.open()
    svc = IngestService(store, mqtt_url, client_id=client_id, shared_group=group or None)
    task = asyncio.create_task(svc.run())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.wait_for(svc.connected.wait(), 30)
    print("ready", flush=True)
    await stop.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()


async def edge(config: str) -> None:
    from carbonlink.commands import simsources
    from carbonlink.edge.agent import EdgeAgent
    from carbonlink.edge.config import load_gateway_config

    simsources.install()
    agent = EdgeAgent(load_gateway_config(config), config_path=Path(config))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await agent.start()
    print("ready", flush=True)
    await stop.wait()
    await agent.stop_devices()
    drained = await agent.drain(within=60)
    await agent.stop()
    print("drained" if drained else "not-drained", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if sys.argv[1] == "ingest":
        asyncio.run(ingest(*sys.argv[2:6]))
    else:
        asyncio.run(edge(sys.argv[2]))
