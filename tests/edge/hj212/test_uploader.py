"""The HJ 212 uploader against a small monitoring-platform server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from carbonlink.codecs.hj212.codec import Packet, StreamFramer, parse_data, reply_packet
from carbonlink.codecs.hj212.readings import packet_to_readings
from carbonlink.edge.hj212.uploader import CO2_PCT_TO_MGM3, Hj212UploadConfig, Hj212Uploader
from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.wire import Reading, normalize_value

MN = "PLATFORM0000000000000001"
TS = 1_710_469_800_000  # 2024-03-15T02:30:00Z, 10:30:00 in China


@dataclass
class Platform:
    """Records uploads; answers 9014, except as told."""

    silent: int = 0  # leave this many packets unanswered
    drop_connection_on: int | None = None  # close the connection on receiving packet number n (1-based)
    refuse_with: str | None = None  # answer 9011 with this QnRtn instead of 9014
    packets: list[Packet] = field(default_factory=list)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        framer = StreamFramer()
        try:
            while chunk := await reader.read(4096):
                for ev in framer.feed(chunk):
                    assert isinstance(ev, bytes), ev
                    p = parse_data(ev[6:-6])
                    self.packets.append(p)
                    if len(self.packets) == self.drop_connection_on:
                        return
                    if len(self.packets) <= self.silent or not p.reply_requested:
                        continue
                    if self.refuse_with:
                        writer.write(reply_packet(p, "9011", cp=[("QnRtn", self.refuse_with)]).encode())
                    else:
                        writer.write(reply_packet(p, "9014").encode())
        finally:
            writer.close()


@asynccontextmanager
async def serve(platform: Platform, port: int = 0) -> AsyncIterator[int]:
    server = await asyncio.start_server(platform.handle, "127.0.0.1", port)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@asynccontextmanager
async def running(port: int, **kw: object) -> AsyncIterator[Hj212Uploader]:
    args: dict[str, object] = {"stations": {"stack-1": MN}, "pw": "123456", "reply_timeout_s": 0.3,
                               "backoff": Backoff(initial=0.05, cap=0.2)} | kw
    up = Hj212Uploader("127.0.0.1", port, **args)  # type: ignore[arg-type]
    task = asyncio.create_task(up.run())
    try:
        yield up
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def r(point: str, value: float, unit: str, quality: str = "N", device: str = "stack-1", ts: int = TS) -> Reading:
    return Reading.make(device, point, ts, value, unit, quality)


async def drained(up: Hj212Uploader) -> None:
    async with asyncio.timeout(10):
        await up.drained()


async def test_readings_arrive_as_hj212_uploads_and_decode_back() -> None:
    platform = Platform()
    sent = [r("so2", 12.5, "mg/m³"), r("o2", 6.1, "%", "C"), r("so2_zs", 13.25, "mg/m³"),
            r("so2_avg_1m", 11.0, "mg/m³"), r("so2_cou_1m", 0.004, "kg", "M"), r("flow_cou_1h", 360000, "m³"),
            r("co2", 12.0, "%")]
    ignored = [r("load", 80, "%"), r("so2", 1, "ppm"), r("so2", 1, "mg/m³", device="other")]
    async with serve(platform) as port, running(port) as up:
        assert up.submit(sent + ignored) == 3  # one packet per CN and DataTime
        await drained(up)
    assert (up.counters.sent, up.counters.acked, up.counters.resent, up.counters.skipped) == (3, 3, 0, 3)
    assert {(p.cn, p.st, p.mn, p.pw, p.flag) for p in platform.packets} == {
        ("2011", "31", MN, "123456", 5), ("2051", "31", MN, "123456", 5), ("2061", "31", MN, "123456", 5)}
    back = {(x.point, x.value, x.unit, x.quality.value, x.ts_ms)
            for p in platform.packets for x in packet_to_readings(p, "stack-1").readings}
    want = {(x.point, x.value, x.unit, x.quality.value, x.ts_ms) for x in sent if x.point not in ("co2", "so2_avg_1m")}
    want.add(("co2", normalize_value(12.0 * CO2_PCT_TO_MGM3), "mg/m³", "N", TS))
    # One Flag per code and packet: the minute SO2 values carry the least trustworthy of theirs (M).
    want.add(("so2_avg_1m", 11.0, "mg/m³", "M", TS))
    assert back == want


async def test_unanswered_packet_is_resent_with_the_same_qn() -> None:
    platform = Platform(silent=1)
    async with serve(platform) as port, running(port) as up:
        up.submit([r("so2", 1, "mg/m³")])
        await drained(up)
    assert [p.qn for p in platform.packets] == [platform.packets[0].qn] * 2
    assert (up.counters.sent, up.counters.resent, up.counters.acked, up.counters.connects) == (1, 1, 1, 1)


async def test_no_reply_after_resends_reconnects_and_delivers() -> None:
    platform = Platform(silent=2)
    async with serve(platform) as port, running(port, max_resends=1) as up:
        up.submit([r("so2", 1, "mg/m³"), r("so2", 2, "mg/m³", ts=TS + 1000)])
        await drained(up)
    assert up.counters.connects == 2 and up.counters.acked == 2 and platform.connections == 2
    values = [p.cp_fields()["a21026-Rtd"] for p in platform.packets]
    assert values == ["1", "1", "1", "2"]  # the first packet, sent until answered, then the next


async def test_platform_down_then_up_and_connection_dropped_midway(port: int) -> None:
    platform = Platform(drop_connection_on=2)
    async with running(port) as up:
        up.submit([r("so2", float(i), "mg/m³", ts=TS + i * 1000) for i in range(3)])
        await asyncio.sleep(0.3)  # nothing listens yet
        assert up.counters.failures >= 1 and up.pending == 3
        async with serve(platform, port):
            await drained(up)
    values = [p.cp_fields()["a21026-Rtd"] for p in platform.packets]
    assert values == ["0", "1", "1", "2"]  # packet 1 was lost with the connection and sent again
    assert up.counters.acked == 3 and platform.connections == 2


async def test_refusal_is_final_and_no_reply_mode_does_not_wait() -> None:
    platform = Platform(refuse_with="3")
    async with serve(platform) as port, running(port) as up:
        up.submit([r("so2", 1, "mg/m³")])
        await drained(up)
    assert (up.counters.refused, up.counters.acked, up.counters.resent) == (1, 0, 0)
    platform = Platform()
    async with serve(platform) as port, running(port, want_reply=False) as up:
        up.submit([r("so2", 1, "mg/m³"), r("so2", 2, "mg/m³", ts=TS + 1000)])
        await drained(up)
    assert [p.flag for p in platform.packets] == [4, 4] and up.counters.sent == 2


async def test_queue_is_bounded() -> None:
    up = Hj212Uploader("127.0.0.1", 9, stations={"stack-1": MN}, pw="1", max_queue=5)
    up.submit([r("so2", float(i), "mg/m³", ts=TS + i * 1000) for i in range(8)])
    assert up.pending == 5 and up.counters.dropped == 3


def test_config_model_builds_an_uploader() -> None:
    cfg = Hj212UploadConfig.model_validate({"host": "10.0.0.5", "port": 9000, "pw": "123456",
                                            "stations": {"stack-1": MN}})
    up = cfg.build()
    assert (up.host, up.port, up.stations, up.version, up.want_reply) == ("10.0.0.5", 9000, {"stack-1": MN}, 1, True)
    with pytest.raises(ValidationError):
        Hj212UploadConfig.model_validate({"host": "h", "port": 1, "pw": "123456", "stations": {}})
    with pytest.raises(ValidationError):
        Hj212UploadConfig.model_validate({"host": "h", "port": 1, "pw": "1", "stations": {"d": "M;N"}})
