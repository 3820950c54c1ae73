"""The HJ 212 gateway server and driver over real TCP on loopback, with the simulated CEMS unit."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator

import pytest

from carbonlink.codecs.hj212.codec import Packet, StreamFramer, data_packet, frame, parse_data
from carbonlink.edge.drivers.hj212 import Hj212ServerDevice, Hj212ServerDriver
from carbonlink.edge.hj212.server import Hj212Server, ServerConfig
from carbonlink.edge.supervisor import DeviceSupervisor
from carbonlink.kernel.wire import Reading
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.hj212_client import ClientStats, parse_host_port, run_hj212_client
from tests.simulators.clocks import Paced

MN = "CEMS00000000000000000001"
PW = "123456"


def upload(cn: str = "2011", *, mn: str = MN, pw: str = PW, qn: str = "20240315103000123", reply: bool = True,
           version: int = 1, value: str = "12.5") -> bytes:
    return data_packet(cn=cn, mn=mn, pw=pw, qn=qn, version=version, reply=reply, datatime="20240315103000",
                       values={"a21026": {"Rtd": value, "Flag": "N"}}).encode()


async def read_replies(reader: asyncio.StreamReader, n: int) -> list[Packet]:
    framer, out = StreamFramer(), []
    async with asyncio.timeout(10):
        while len(out) < n:
            chunk = await reader.read(4096)
            assert chunk, "server closed the connection"
            out += [parse_data(ev[6:-6]) for ev in framer.feed(chunk) if isinstance(ev, bytes)]
    return out


@contextlib.asynccontextmanager
async def driver(**settings: object) -> AsyncIterator[tuple[Hj212ServerDriver, asyncio.Queue[list[Reading]]]]:
    """The driver under its real supervisor; readings land in a queue."""
    cfg = {"id": "hj", "driver": "hj212_server", "port": 0, "stations": {MN: {"pw": PW}}} | settings
    drv = Hj212ServerDriver("hj", Hj212ServerDevice.model_validate(cfg))
    got: asyncio.Queue[list[Reading]] = asyncio.Queue()

    async def sink(readings: list[Reading]) -> None:
        await got.put(readings)

    sup = DeviceSupervisor(drv, sink)
    sup.start()
    try:
        async with asyncio.timeout(5):
            while drv.port is None or sup.state.value != "online":
                await asyncio.sleep(0.01)
        yield drv, got
    finally:
        await sup.stop()


async def test_simulated_cems_unit_uploads_realtime_and_minute_data() -> None:
    async with driver(stations={MN: {"device": "stack-1", "pw": PW}}) as (drv, got):
        stop = asyncio.Event()
        assert drv.port is not None
        client = asyncio.create_task(run_hj212_client("127.0.0.1", drv.port, MN, PW, 0.05, stop, minute_s=0.4,
                                                      stack=CemsStack(clock=Paced())))
        readings: list[Reading] = []
        async with asyncio.timeout(10):
            while not any(r.point == "so2_avg_1m" for r in readings):
                readings += await got.get()
        await asyncio.sleep(0.2)
        stop.set()
        stats = await client
    points = {r.point for r in readings}
    assert {"so2", "nox", "no", "no2", "o2", "co2", "dust", "flow", "temp", "pressure", "moisture",
            "so2_zs", "so2_avg_1m", "so2_cou_1m", "flow_cou_1m", "nox_zs_max_1m"} <= points
    assert all(r.device == "stack-1" and r.quality.value == "N" for r in readings)
    so2 = [r.value for r in readings if r.point == "so2"]
    assert all(0 < v < 100 for v in so2)
    co2 = next(r for r in readings if r.point == "co2")
    assert co2.unit == "mg/m³" and 100_000 < co2.value < 400_000  # ~12 % vol
    # Every upload asked for a reply (Flag=5) and got its 9014; nothing was refused.
    sent = drv.counters.extra["packets"]
    assert drv.counters.rejected == 0 and sent >= stats.realtime_sent
    assert stats.replies.get("9014", 0) >= stats.realtime_sent + stats.minute_sent - 2  # last ones in flight
    assert stats.bad_replies == 0 and "9011" not in stats.replies


async def test_9014_only_when_asked_and_readings_from_split_reads() -> None:
    async with driver() as (drv, got):
        reader, writer = await asyncio.open_connection("127.0.0.1", drv.port)
        silent = upload(reply=False, qn="20240315103000001", value="1.5")
        asked = upload(qn="20240315103000002", value="2.5")
        for b in silent + asked[:10]:  # byte by byte, then the rest in one write
            writer.write(bytes([b]))
            await writer.drain()
        writer.write(asked[10:])
        replies = await read_replies(reader, 1)
        assert [(r.cn, r.qn, r.st, r.flag) for r in replies] == [("9014", "20240315103000002", "91", 4)]
        assert replies[0].mn == MN and replies[0].cp == ()
        batches = [await got.get(), await got.get()]
        assert [[(r.device, r.point, r.value) for r in b] for b in batches] == [
            [(f"hj.{MN}", "so2", 1.5)], [(f"hj.{MN}", "so2", 2.5)]]
        writer.close()


@pytest.mark.parametrize("settings, raw, qnrtn, reason", [
    ({"stations": {MN: {"pw": "654321"}}}, upload(), 3, "pw"),
    ({"stations": {"OTHER": {"pw": PW}}}, upload(), 4, "mn"),
    ({}, upload(version=2), 6, "flag"),
    ({}, upload(cn="2021"), 8, "cn"),
    ({}, upload().replace(b"12.5", b"12.6"), 9, "crc"),
    ({"stations": {"M1": {"pw": PW}}},
     frame(b"QN=20240315103000123;ST=31;CN=2011;PW=123456;MN=M1;Flag=5;CP=&&a21026-Rtd=1&&"), 100, "cp"),
])
async def test_refused_packets_get_a_9011_naming_the_fault(settings: dict[str, object], raw: bytes, qnrtn: int,
                                                           reason: str) -> None:
    async with driver(**settings) as (drv, got):
        reader, writer = await asyncio.open_connection("127.0.0.1", drv.port)
        writer.write(raw)
        [reply] = await read_replies(reader, 1)
        assert (reply.cn, reply.qn, reply.cp_fields()) == ("9011", "20240315103000123", {"QnRtn": str(qnrtn)})
        assert drv.counters.rejected == 1 and drv.counters.extra[f"rejected_{reason}"] == 1
        assert got.empty()
        writer.close()


async def test_bad_input_is_counted_and_the_server_keeps_serving() -> None:
    async with driver() as (drv, got):
        good = upload(reply=False)
        _, writer = await asyncio.open_connection("127.0.0.1", drv.port)
        writer.write(b"\x00\xffGET / HTTP/1.1\r\n\r\n")  # garbage
        writer.write(good.replace(b"12.5", b"99.9"))  # wrong CRC
        writer.write(b"##9999" + b"x" * 20)  # oversize length
        writer.write(upload(cn="3020", reply=False))  # unknown CN
        writer.write(good[:40])  # truncated: a new frame starts before it ends
        writer.write(good)
        await writer.drain()
        batch = await asyncio.wait_for(got.get(), 3)
        assert [(r.point, r.value) for r in batch] == [("so2", 12.5)]
        writer.write(good[:30])  # truncated by the end of the connection
        writer.close()
        async with asyncio.timeout(3):
            while drv.counters.rejected < 6:
                await asyncio.sleep(0.02)
        c = drv.counters.extra
        assert (c["rejected_garbage"], c["rejected_crc"], c["rejected_length"], c["rejected_cn"],
                c["rejected_truncated"]) == (1, 1, 1, 1, 2)
        assert drv.counters.rejected == 6 and "replies_9011" not in c  # no Flag A bit: no answers
        # A fresh connection is served normally.
        r2, w2 = await asyncio.open_connection("127.0.0.1", drv.port)
        w2.write(upload())
        assert (await read_replies(r2, 1))[0].cn == "9014"
        w2.close()


async def test_many_concurrent_units() -> None:
    # All 60 come from one address (loopback) at once, as loggers behind one NAT after an outage: the
    # per-address cap on unauthenticated connections is raised to let them all in together.
    async with driver(stations={f"MN{i:04d}": {"pw": PW} for i in range(60)},
                      max_unauthenticated_per_host=60) as (drv, got):
        async def unit(i: int) -> list[Packet]:
            reader, writer = await asyncio.open_connection("127.0.0.1", drv.port)
            mn = f"MN{i:04d}"
            writer.write(b"".join(upload(mn=mn, qn=f"2024031510300{k:04d}") for k in range(3)))
            replies = await read_replies(reader, 3)
            writer.close()
            return replies

        results = await asyncio.gather(*(unit(i) for i in range(60)))
        assert all([r.cn for r in rs] == ["9014"] * 3 for rs in results)
        assert sorted({rs[0].mn for rs in results}) == [f"MN{i:04d}" for i in range(60)]
        readings = []
        while not got.empty():
            readings += got.get_nowait()
        assert len(readings) == 180 and len({r.device for r in readings}) == 60


async def test_connection_limit_and_idle_timeout() -> None:
    async with driver(max_connections=2, idle_timeout_s=0.3) as (drv, _):
        conns = [await asyncio.open_connection("127.0.0.1", drv.port) for _ in range(3)]
        conns[0][1].write(upload()[:20])  # a partial frame, then silence
        assert await asyncio.wait_for(conns[2][0].read(), 2) == b""  # the third is closed at once
        assert drv.counters.extra["connections_refused"] == 1
        assert await asyncio.wait_for(conns[0][0].read(), 2) == b""  # idle: closed
        assert drv.counters.extra["rejected_truncated"] == 1
        for _, w in conns:
            w.close()


async def test_server_survives_a_failing_sink_and_unit_reconnects_after_restart(port: int) -> None:
    calls = 0

    async def sink(packet: Packet) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("bug in the sink")

    cfg = ServerConfig(stations={MN: PW}, port=port)
    stop = asyncio.Event()
    stats = ClientStats()
    client = asyncio.create_task(run_hj212_client("127.0.0.1", port, MN, PW, 0.05, stop, stats=stats,
                                                  stack=CemsStack(clock=Paced())))
    async with Hj212Server(cfg, sink) as server:
        async with asyncio.timeout(5):
            while stats.replies.get("9014", 0) < 3:
                await asyncio.sleep(0.02)
        assert server.counters.errors == 1  # the failing packet closed its connection, not the server
    got_before = stats.replies["9014"]
    await asyncio.sleep(0.3)  # the gateway is away
    async with Hj212Server(cfg, sink):
        async with asyncio.timeout(10):
            while stats.replies["9014"] < got_before + 3:
                await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(client, 10)
    assert stats.connects >= 3 and stats.failures >= 1


async def test_random_bytes_from_many_connections_never_stop_the_server() -> None:
    rng = random.Random(212)
    good = upload(reply=False)
    async with driver() as (drv, got):
        for i in range(40):
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
            if i % 3 == 0:  # make some blobs look like frames to reach the deeper checks
                blob = b"##" + b"%04d" % rng.randrange(0, 1100) + blob
            if i % 5 == 0:
                cut = rng.randrange(len(good))
                blob = good[:cut] + blob + good[cut:]
            _, writer = await asyncio.open_connection("127.0.0.1", drv.port)
            writer.write(blob)
            await writer.drain()
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", drv.port)
        writer.write(upload(value="42.5"))
        assert (await read_replies(reader, 1))[0].cn == "9014"
        readings = []
        async with asyncio.timeout(5):
            while not any(r.value == 42.5 for r in readings):
                readings += await got.get()
        assert all(r.value in (12.5, 42.5) for r in readings)  # nothing but the packets sent
        assert drv.counters.rejected >= 40 and drv.counters.errors == 0
        writer.close()


def test_host_port_option() -> None:
    assert parse_host_port("127.0.0.1:9212") == ("127.0.0.1", 9212)
    assert parse_host_port("[::1]:9212") == ("::1", 9212)
    for bad in ("9212", "host:", "host:99999", ":1"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_host_port(bad)


async def test_a_peer_that_never_authenticates_is_closed_and_one_address_cannot_hold_many_unproven() -> None:
    async with driver(max_connections=8, max_unauthenticated_per_host=2, auth_timeout_s=0.3,
                      idle_timeout_s=60) as (drv, got):
        unit = await asyncio.open_connection("127.0.0.1", drv.port)
        unit[1].write(upload())  # a configured station with its PW: stays past the deadline
        assert [p.cn for p in await read_replies(unit[0], 1)] == ["9014"]
        silent = await asyncio.open_connection("127.0.0.1", drv.port)
        stranger = await asyncio.open_connection("127.0.0.1", drv.port)
        stranger[1].write(upload(mn="CEMS00000000000000000999"))  # answered (refused), but never let in
        third = await asyncio.open_connection("127.0.0.1", drv.port)  # a 3rd unproven one: refused at once
        assert await asyncio.wait_for(third[0].read(), 2) == b""
        assert await asyncio.wait_for(silent[0].read(), 2) == b""  # no station within auth_timeout_s
        refused = await read_replies(stranger[0], 1)
        assert refused[0].cn != "9014"
        assert await asyncio.wait_for(stranger[0].read(), 2) == b""
        assert drv.counters.extra["closed_unauthenticated"] == 2
        assert drv.counters.extra["connections_refused"] == 1
        await asyncio.sleep(0.4)  # well past the deadline: the unit still uploads
        unit[1].write(upload(qn="20240315103100123"))
        assert [p.cn for p in await read_replies(unit[0], 1)] == ["9014"]
        assert (await asyncio.wait_for(got.get(), 2))[0].value == 12.5
        for _, w in (unit, silent, stranger, third):
            w.close()




async def test_a_peer_that_stops_reading_is_cut_off_and_frees_its_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from carbonlink.edge.hj212 import server as server_module

    monkeypatch.setattr(server_module, "WRITE_TIMEOUT_S", 0.3)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window: replies back up at once
    sock.setblocking(False)
    got: list[Packet] = []

    async def sink(packet: Packet) -> None:
        got.append(packet)

    async with Hj212Server(ServerConfig(stations={MN: PW}), sink) as server:
        assert server._server is not None  # accepted sockets inherit the listener's small send buffer
        server._server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        # Uploads asking for replies, and never a byte read back.
        send = asyncio.create_task(loop.sock_sendall(sock, b"".join(
            upload(qn=f"2024031510{k:07d}") for k in range(3000))))
        async with asyncio.timeout(20):
            while server.connections == 0:
                await asyncio.sleep(0.01)
            while server.connections:  # the server gives up on the stalled peer and frees the slot
                await asyncio.sleep(0.05)
            # ... and drops the connection itself (a reset): replies left unsent no longer pin it open.
            while sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == 1:  # tcpi_state ESTABLISHED
                await asyncio.sleep(0.05)
        assert server.counters.errors == 0 and 0 < len(got) < 3000
        send.cancel()
        sock.close()
