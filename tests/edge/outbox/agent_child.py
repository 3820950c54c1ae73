"""Child process for the corrupt-outbox test: a real edge agent (no devices) fed readings on command.

``python -m tests.edge.outbox.agent_child CONFIG`` prints ``ready``; each stdin line ``feed TS N`` accepts
N readings stamped TS, TS+1, … (in chunks of 100) and prints ``fed`` once they are in the outbox.
SIGTERM drains and stops it (prints ``drained``); SIGKILL is the fault.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from carbonlink.edge.agent import EdgeAgent
from carbonlink.edge.config import load_gateway_config
from carbonlink.kernel.wire import Reading


async def main(config: str) -> None:
    agent = EdgeAgent(load_gateway_config(config), config_path=Path(config))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await agent.start()
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := await reader.readline():
            _, ts, n = line.split()
            for start in range(int(ts), int(ts) + int(n), 100):
                end = min(start + 100, int(ts) + int(n))
                await agent._accept([Reading.make("meter", "p", t, float(t % 1000), "kW") for t in range(start, end)])
                await asyncio.sleep(0)
            print("fed", flush=True)

    task = asyncio.create_task(commands())
    await stop.wait()
    task.cancel()
    drained = await agent.drain(within=60)
    await agent.stop()
    print("drained" if drained else "not-drained", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main(sys.argv[1]))
