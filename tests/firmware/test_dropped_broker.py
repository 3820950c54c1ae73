"""A broker connection that dies in the middle of a PUBLISH loses nothing: the node resends from flash."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from carbonlink.commands.firmwarelab.node import READINGS_PER_BATCH, cloud, make_node, run_node
from tests.services import require_mosquitto_service


class CuttingProxy:
    """TCP proxy to the broker that parses MQTT packets from the node and cuts chosen telemetry PUBLISHes
    half way through (connection n is cut at its cuts[n]-th telemetry publish; later connections pass)."""

    def __init__(self, upstream_port: int, cuts: list[int]) -> None:
        self.upstream_port = upstream_port
        self.cuts = cuts
        self.connections = 0
        self.cut_done = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server:
            self._server.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        n = self.connections
        self.connections += 1
        cut_at = self.cuts[n] if n < len(self.cuts) else 0
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def down() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await ur.read(4096):
                    w.write(data)
                    await w.drain()

        downstream = asyncio.create_task(down())
        seen = 0
        try:
            while True:
                first = await r.readexactly(1)
                length, mult, raw_len = 0, 1, b""
                while True:
                    b = await r.readexactly(1)
                    raw_len += b
                    length += (b[0] & 0x7F) * mult
                    mult *= 128
                    if not b[0] & 0x80:
                        break
                body = await r.readexactly(length)
                packet = first + raw_len + body
                if first[0] >> 4 == 3 and b"/telemetry" in body[: 2 + int.from_bytes(body[:2], "big")]:
                    seen += 1
                    if seen == cut_at:
                        uw.write(packet[: len(packet) // 2])  # the broker gets half a packet, then nothing
                        await uw.drain()
                        self.cut_done += 1
                        break
                uw.write(packet)
                await uw.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            downstream.cancel()
            for s in (w, uw):
                s.close()


async def test_connection_cut_mid_publish_loses_nothing(tmp_path: Path) -> None:
    require_mosquitto_service()
    proxy = CuttingProxy(1883, cuts=[2, 1, 3])
    await proxy.start()
    try:
        cfg = make_node(tmp_path / "node", proxy.port, uplink_every=6, window=4)
        async with cloud(tmp_path, "mqtt://127.0.0.1:1883", cfg) as svc:
            out, stats = await run_node(tmp_path / "node", 6, time_limit=80)
            assert proxy.cut_done == 3, out
            assert "uplink True" in out and stats["pending"] == 0, out
            assert svc.counters.batches_committed == 6
            counts = await svc.store.data.counts()
            assert counts["readings"] >= 6 * READINGS_PER_BATCH
            n = await svc.store.db.fetchval("SELECT count(*) FROM readings r JOIN series s ON s.id = r.series"
                                            " WHERE s.gateway = ?", cfg["node_id"])
            assert n == 6 * READINGS_PER_BATCH
            assert out.count("uplink:") == 3  # three failed sessions, each retried after a backoff
    finally:
        await proxy.stop()
