"""Issue 10 §6: the HJ 212 server accepts only configured stations with their PWs, over real TCP.

An unknown MN or a wrong PW gets the 9011 refusal (QnRtn 4 / 3) and an ``hj212.refused`` event, and
nothing reaches the sink; repeated wrong PWs lock the MN out from that address; the PW is never in a
log line, an event, a repr or a configuration error; the default listen address is loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from carbonlink.codecs.hj212.codec import Packet
from carbonlink.edge.config import load_gateway_config
from carbonlink.edge.drivers.hj212 import Hj212ServerDevice, Hj212ServerDriver
from carbonlink.edge.hj212.server import Hj212Server, ServerConfig
from carbonlink.kernel.configfile import ConfigError
from carbonlink.kernel.events import Event
from tests.edge.hj212.test_server import MN, PW, read_replies, upload

OTHER_MN = "CEMS00000000000000000002"
OTHER_PW = "A1b2C3"


class Events:
    """An EventSink that keeps what it is given, validated as the agent's signed pipeline would."""

    def __init__(self) -> None:
        self.got: list[Event] = []

    def emit(self, kind: str, *, ts_ms: int, severity: str = "info", device: str | None = None,
             point: str | None = None, body: dict[str, Any] | None = None) -> None:
        self.got.append(Event.make("gw-1", kind, ts_ms, severity=severity, device=device, point=point, body=body))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def server(**overrides: Any) -> AsyncIterator[tuple[Hj212Server, list[Packet], Events, Clock]]:
    accepted: list[Packet] = []
    events, mono = Events(), Clock()

    async def sink(packet: Packet) -> None:
        accepted.append(packet)

    cfg = ServerConfig(**({"stations": {MN: PW, OTHER_MN: OTHER_PW}} | overrides))
    async with Hj212Server(cfg, sink, events=events, device="hj-1", clock=lambda: 1_767_225_600.0,
                           monotonic=mono) as srv:
        yield srv, accepted, events, mono


async def exchange(port: int, *packets: bytes) -> list[Packet]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(packets))
        return await read_replies(reader, len(packets))
    finally:
        writer.close()


async def test_unknown_station_and_wrong_pw_are_refused_with_an_event_and_nothing_queued(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with server() as (srv, accepted, events, _):
        replies = await exchange(srv.port, upload(mn="INTRUDER0001", pw=PW, qn="20240315103000001"),
                                 upload(pw="999999", qn="20240315103000002"),
                                 upload(mn=OTHER_MN, pw=PW, qn="20240315103000003"))  # a PW, not its own
        assert [(r.cn, r.qn, r.cp_fields()) for r in replies] == [
            ("9011", "20240315103000001", {"QnRtn": "4"}), ("9011", "20240315103000002", {"QnRtn": "3"}),
            ("9011", "20240315103000003", {"QnRtn": "3"})]
        assert accepted == []
        assert srv.counters.extra["rejected_mn"] == 1 and srv.counters.extra["rejected_pw"] == 2
        assert [(e.kind, e.severity.value, e.device, e.body["mn"], e.body["reason"], e.body["peer"])
                for e in events.got] == [
            ("hj212.refused", "warning", "hj-1", "INTRUDER0001", "unknown station", "127.0.0.1"),
            ("hj212.refused", "warning", "hj-1", MN, "wrong password", "127.0.0.1"),
            ("hj212.refused", "warning", "hj-1", OTHER_MN, "wrong password", "127.0.0.1")]
        assert events.got[0].ts_ms == 1_767_225_600_000
        # The configured stations with their own PWs are served on the same connection after that.
        ok = await exchange(srv.port, upload(qn="20240315103000004"), upload(mn=OTHER_MN, pw=OTHER_PW))
        assert [r.cn for r in ok] == ["9014", "9014"] and [p.mn for p in accepted] == [MN, OTHER_MN]
    text = caplog.text + repr(srv.config) + repr(events.got)
    assert "999999" not in text and PW not in text and OTHER_PW not in text


async def test_wrong_pws_lock_the_mn_out_from_that_address_only_for_a_while() -> None:
    async with server(max_pw_failures=3, lockout_s=60.0, event_interval_s=30.0) as (srv, accepted, events, mono):
        guesses = [upload(pw=f"{i:06d}", qn=f"2024031510300{i:04d}") for i in range(3)]
        assert [r.cp_fields()["QnRtn"] for r in await exchange(srv.port, *guesses)] == ["3"] * 3
        # Locked: the right PW is refused with the same answer, so a guess that hits learns nothing.
        [locked] = await exchange(srv.port, upload(qn="20240315103001000"))
        assert locked.cp_fields() == {"QnRtn": "3"} and accepted == []
        assert srv.counters.extra["refused_locked_out"] == 1
        # Another station behind the same unit goes on.
        assert [r.cn for r in await exchange(srv.port, upload(mn=OTHER_MN, pw=OTHER_PW))] == ["9014"]
        # One event for the burst; the next, after the pacing interval, counts what was not reported.
        assert len(events.got) == 1
        mono.now += 31
        await exchange(srv.port, upload(qn="20240315103001001"))
        assert len(events.got) == 2 and events.got[1].body["refused"] == 4 and events.got[1].body["locked_out"]
        mono.now += 30  # the lockout is over
        assert [r.cn for r in await exchange(srv.port, upload(qn="20240315103001002"))] == ["9014"]
        assert [p.mn for p in accepted] == [OTHER_MN, MN]


async def test_a_flood_of_made_up_stations_gives_few_events_and_bounded_state() -> None:
    async with server() as (srv, accepted, events, _):
        packets = [upload(mn=f"X{i:05d}", qn=f"2024031510300{i % 10000:04d}", reply=False) for i in range(300)]
        _, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"".join(packets))
        await writer.drain()
        async with asyncio.timeout(5):
            while srv.counters.rejected < 300:
                await asyncio.sleep(0.01)
        writer.close()
        assert accepted == [] and srv.counters.extra["rejected_mn"] == 300
        assert len(events.got) == 300  # one per made-up MN: each is a new station, reported once
        assert len(srv._tallies) <= 4096


async def test_driver_listens_on_loopback_by_default_and_reports_refusals_as_events() -> None:
    settings = Hj212ServerDevice.model_validate({"id": "hj", "driver": "hj212_server", "port": 0,
                                                 "stations": {MN: {"pw": PW, "device": "stack-1"}}})
    assert settings.host == "127.0.0.1"
    drv = Hj212ServerDriver("hj", settings)
    drv.events = events = Events()  # type: ignore[assignment]
    session = drv.session()
    assert await anext(session) == []
    try:
        assert drv.port is not None
        replies = await exchange(drv.port, upload(pw="654321"), upload(qn="20240315103000999"))
        assert [r.cn for r in replies] == ["9011", "9014"]
        [batch] = [await asyncio.wait_for(anext(session), 2)]
        assert {(r.device, r.point) for r in batch} == {("stack-1", "so2")}
        assert [(e.kind, e.device, e.body["reason"]) for e in events.got] == [
            ("hj212.refused", "hj", "wrong password")]
        # Bound to loopback: the listening socket's own address says so.
        _, writer = await asyncio.open_connection("127.0.0.1", drv.port)
        assert writer.get_extra_info("peername")[0] == "127.0.0.1"
        writer.close()
    finally:
        await session.aclose()


def write_config(tmp_path: Path, station: dict[str, Any]) -> Path:
    cfg = {"gateway": {"id": "gw-1", "site": "s", "key_file": "gw.key"},
           "devices": [{"id": "hj", "driver": "hj212_server", "port": 9212, "stations": {MN: station}}]}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def station_pw(path: Path) -> str:
    device = load_gateway_config(path).devices[0]
    assert isinstance(device, Hj212ServerDevice)
    return device.stations[MN].secret()


def test_pw_from_the_file_the_environment_or_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert station_pw(write_config(tmp_path, {"pw": "Ab12"})) == "Ab12"
    secret = tmp_path / "stack-1.pw"
    secret.write_text("Zz9876\n")
    secret.chmod(0o600)
    assert station_pw(write_config(tmp_path, {"pw_file": str(secret)})) == "Zz9876"
    monkeypatch.setenv("HJ212_PW_STACK1", "Q1w2E3")
    assert station_pw(write_config(tmp_path, {"pw_env": "HJ212_PW_STACK1"})) == "Q1w2E3"
    assert "Q1w2E3" not in repr(load_gateway_config(write_config(tmp_path, {"pw_env": "HJ212_PW_STACK1"})))


@pytest.mark.parametrize("station, error", [
    ({}, "exactly one of 'pw', 'pw_file' or 'pw_env'"),
    ({"pw": "Ab12", "pw_env": "X"}, "exactly one"),
    ({"pw": "Ab12345"}, "1-6 letters or digits"),
    ({"pw": 12345}, "quote the PW"),
    ({"pw_env": "HJ212_NOT_SET_ANYWHERE"}, "is not set"),
    ({"pw_file": "relative.pw"}, "absolute path"),
    ({"pw_file": "/nonexistent/stack.pw"}, "cannot be read"),
])
def test_bad_pw_settings_name_the_key_and_never_show_the_value(tmp_path: Path, station: dict[str, Any],
                                                               error: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_gateway_config(write_config(tmp_path, station))
    assert error in str(info.value) and "devices.0" in str(info.value)
    assert "Ab12345" not in str(info.value) and "12345" not in str(info.value)


def test_a_pw_file_others_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "stack-1.pw"
    secret.write_text("Zz9876")
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_gateway_config(write_config(tmp_path, {"pw_file": str(secret)}))


def test_no_station_no_server_and_old_keys_say_what_replaced_them(tmp_path: Path) -> None:
    base = {"id": "hj", "driver": "hj212_server", "port": 0}
    with pytest.raises(ValueError, match="at least 1 item"):
        Hj212ServerDevice.model_validate(base | {"stations": {}})
    with pytest.raises(ValueError, match="replaced by 'stations'"):
        Hj212ServerDevice.model_validate(base | {"allowed_mn": [MN], "pw": PW})
    with pytest.raises(ValueError, match="at least one station"):
        ServerConfig(stations={})
