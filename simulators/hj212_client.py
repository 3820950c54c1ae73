"""A simulated CEMS data-acquisition unit that uploads HJ 212-2017 packets to a gateway.

Every ``interval_s`` it sends a real-time packet (CN 2011) with the stack's
current values; every ``minute_s`` a minute packet (CN 2051) with Avg/Min/Max
over the window, Cou (totals) for gases and flow, and O2-corrected ``Zs`` values
for SO2, NOx and dust. NOx is reported as NO2 (HJ 75-2017 App. A), NO and NO2
alongside. CO2 is converted from the analyser's % by volume to mg/m³, the unit of
code a05001. Replies (9014/9011) are read and counted. The unit reconnects with
backoff when the gateway goes away, as a real one does.

DataTime has one-second resolution, so intervals under 1 s repeat timestamps.

Faults come from the stack (simulators/cems.py): its mode sets every pollutant's
data flag (C calibration, M maintenance, D fault; a minute record carries the
last non-N flag of its window); communication loss keeps the link open but sends
nothing; a wrong map sends each value under its neighbour's code; a restart
drops the connection and stays away for the restart's downtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from carbonlink.codecs.hj212.codec import (
    CN_MINUTE,
    CN_REALTIME,
    VERSION_2017,
    Hj212Error,
    StreamFramer,
    data_packets,
    parse_data,
)
from carbonlink.codecs.hj212.readings import CODE_BY_NAME, format_datatime, format_value, make_qn
from carbonlink.kernel.backoff import Backoff

from .cems import CemsStack

log = logging.getLogger(__name__)

DEFAULT_MN = "CEMS00000000000000000001"  # 24 characters, as HJ 212-2017 MNs are
DEFAULT_PW = "123456"
# CemsStack.values() keys sent, in this order; their codes come from the codec's table.
SENT = ("so2", "nox", "no", "no2", "co2", "dust", "o2", "flow", "temp", "pressure", "moisture")
CO2_PCT_TO_MGM3 = 1e4 * 44.01 / 22.4  # % vol → ppm → mg/m³ (HJ 75-2017 App. A: C = M/22.4·Cv)
O2_REF = 6.0  # coal-fired boiler reference O2 (GB 13223)
ZS = ("so2", "nox", "dust")
COU_KG = ("so2", "nox", "no", "no2", "co2", "dust")


@dataclass
class ClientStats:
    realtime_sent: int = 0
    minute_sent: int = 0
    connects: int = 0
    failures: int = 0
    replies: dict[str, int] = field(default_factory=dict)  # CN → count
    bad_replies: int = 0
    silent: int = 0  # uploads not sent during a communication loss
    restarts: int = 0


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (as given to ``--hj212-to``) to a pair; ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:9212")
    return host.strip("[]"), int(port)


def hj212_values(raw: Mapping[str, float]) -> dict[str, float]:
    """Simulator values in HJ 212 units (CO2 to mg/m³)."""
    v = {k: float(raw[k]) for k in SENT}
    v["co2"] = v["co2"] * CO2_PCT_TO_MGM3
    return v


def _zs(c: float, o2: float) -> float:
    return c * (21 - O2_REF) / max(0.1, 21 - o2)  # reference-O2 correction, HJ 75-2017 App. A


def off_by_one(v: Mapping[str, float]) -> dict[str, float]:
    """A wrong channel map: every code carries the next channel's value."""
    return {name: v[SENT[(i + 1) % len(SENT)]] for i, name in enumerate(SENT)}


def realtime_fields(v: Mapping[str, float], flag: str = "N") -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name in SENT:
        f = {"Rtd": format_value(v[name])}
        if name in ZS:
            f["ZsRtd"] = format_value(_zs(v[name], v["o2"]))
        f["Flag"] = flag
        out[CODE_BY_NAME[name].code] = f
    return out


def minute_fields(window: list[dict[str, float]], seconds: float, flag: str = "N") -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    n = len(window)
    mean_flow = sum(w["flow"] for w in window) / n
    for name in SENT:
        xs = [w[name] for w in window]
        avg = sum(xs) / n
        f = {"Avg": format_value(avg), "Min": format_value(min(xs)), "Max": format_value(max(xs))}
        if name in COU_KG:
            f["Cou"] = format_value(avg * mean_flow * seconds * 1e-6)  # mg/m³ · m³/s · s → kg
        elif name == "flow":
            f["Cou"] = format_value(avg * seconds)
        if name in ZS:
            zs = [_zs(w[name], w["o2"]) for w in window]
            f |= {"ZsAvg": format_value(sum(zs) / n), "ZsMin": format_value(min(zs)),
                  "ZsMax": format_value(max(zs))}
        f["Flag"] = flag
        out[CODE_BY_NAME[name].code] = f
    return out


async def _read_replies(reader: asyncio.StreamReader, stats: ClientStats) -> None:
    framer = StreamFramer()
    while chunk := await reader.read(4096):
        for ev in framer.feed(chunk):
            if isinstance(ev, Hj212Error):
                stats.bad_replies += 1
                continue
            try:
                p = parse_data(ev[6:-6])
            except Hj212Error:
                stats.bad_replies += 1
                continue
            stats.replies[p.cn] = stats.replies.get(p.cn, 0) + 1


async def run_hj212_client(host: str, port: int, mn: str, pw: str, interval_s: float,
                           stop_event: asyncio.Event, *, stack: CemsStack | None = None,
                           minute_s: float = 60.0, st: str = "31", version: int = VERSION_2017,
                           reply: bool = True, utc_offset_minutes: int = 480,
                           stats: ClientStats | None = None) -> ClientStats:
    """Upload to ``host:port`` until ``stop_event`` is set; returns what was sent and answered."""
    stack = stack or CemsStack()
    stats = stats if stats is not None else ClientStats()
    backoff = Backoff(initial=0.2, cap=10.0)
    window: list[dict[str, float]] = []
    window_flag = "N"  # the last non-N flag seen in the minute window
    clock = stack.clock  # the model's time: data times and minute windows follow it (accelerated or not)
    window_start = clock()
    logged_down = False

    async def pause(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_event.wait(), seconds)

    last_qn = [0]

    def next_qn() -> str:
        ms = max(int(clock() * 1000), last_qn[0] + 1)  # QNs stay unique per unit
        last_qn[0] = ms
        return make_qn(ms, utc_offset_minutes)

    def packet(cn: str, ts_ms: int, fields: dict[str, dict[str, str]]) -> bytes:
        return b"".join(p.encode() for p in data_packets(
            cn=cn, mn=mn, pw=pw, st=st, next_qn=next_qn, version=version, reply=reply,
            datatime=format_datatime(ts_ms, utc_offset_minutes), values=fields))

    while not stop_event.is_set():
        if stack.faults.down:  # restarting: nothing listens, nothing is sent
            await pause(stack.faults.down_until - time.monotonic())
            continue
        epoch = stack.faults.restart_epoch
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)
        except (OSError, TimeoutError) as exc:
            stats.failures += 1
            if not logged_down:
                log.warning("HJ 212 client %s: cannot reach %s:%d (%s); retrying", mn, host, port, exc)
                logged_down = True
            await pause(backoff.next_delay())
            continue
        stats.connects += 1
        backoff.reset()
        logged_down = False
        replies = asyncio.create_task(_read_replies(reader, stats))
        try:
            while not stop_event.is_set():
                if replies.done():
                    raise ConnectionResetError("gateway closed the connection")
                if stack.faults.restart_epoch != epoch:
                    stats.restarts += 1
                    break  # the unit restarts: the link drops here, the loop above waits out the downtime
                now = clock()
                ts = int(now * 1000)
                v = hj212_values(stack.values(now))
                if stack.faults.wrong_map:
                    v = off_by_one(v)
                flag = stack.flag()
                if stack.faults.comm_loss:  # the unit lost its analysers: the link stays up, nothing to send
                    stats.silent += 1
                    await pause(interval_s)
                    continue
                writer.write(packet(CN_REALTIME, ts, realtime_fields(v, flag)))
                stats.realtime_sent += 1
                window.append(v)
                window_flag = flag if flag != "N" else window_flag
                if now - window_start >= minute_s:
                    start_ms = int(window_start * 1000)
                    writer.write(packet(CN_MINUTE, start_ms, minute_fields(window, now - window_start, window_flag)))
                    stats.minute_sent += 1
                    window, window_start, window_flag = [], now, "N"
                await asyncio.wait_for(writer.drain(), 10.0)
                await pause(interval_s)
        except (OSError, TimeoutError) as exc:
            stats.failures += 1
            log.warning("HJ 212 client %s: connection lost (%s); reconnecting", mn, exc)
            await pause(backoff.next_delay())
        finally:
            replies.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await replies
            writer.close()
            try:  # a gateway that stopped reading would hold the close (and the unit) forever
                await asyncio.wait_for(writer.wait_closed(), 5.0)
            except (OSError, TimeoutError):
                writer.transport.abort()
    return stats
