"""Forward gateway readings to a provincial or national monitoring platform in HJ 212 form.

The gateway acts as the data-acquisition unit: readings become data uploads
(CN 2011 for real-time points, 2051/2061/2031 for ``_1m``/``_1h``/``_1d`` points,
the inverse of the naming rule in ``readings.py``), one packet per device, CN and
DataTime, split to stay under 1024 bytes. With ``want_reply`` the Flag's A bit is
set and each packet waits for the platform's 9014 with its QN; on timeout it is
sent again with the same QN (HJ 212-2017 §6.6: timeout and resend count), and after
``max_resends`` the connection is dropped and re-made with backoff, the packet still
first in line. Delivery is at least once. A 9011 with QnRtn other than 1 (wrong PW,
MN, …) is the platform's verdict: the packet is dropped, counted and logged.

Readings that have no HJ 212 field (unknown point, a unit other than the code's)
are left out and counted. CO2 in % by volume is converted to mg/m³ (the unit of
a05001). The queue is in memory and bounded: the outbox, not this, is the
gateway's durable store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field, StringConstraints

from carbonlink.codecs.hj212.codec import (
    CN_DATA_REPLY,
    CN_REQUEST_REPLY,
    VERSION_2017,
    Hj212Error,
    Packet,
    StreamFramer,
    data_packets,
    parse_data,
)
from carbonlink.codecs.hj212.readings import format_datatime, make_qn, parse_point
from carbonlink.edge.drivers.settings import StrictModel
from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.ids import DEVICE_ID_PATTERN
from carbonlink.kernel.wire import Quality, Reading, canonical_number

log = logging.getLogger(__name__)

CO2_PCT_TO_MGM3 = 1e4 * 44.01 / 22.4  # HJ 75-2017 App. A: C (mg/m³) = M/22.4 · Cv (ppm)
_CONVERT = {("co2", "%", "mg/m³"): CO2_PCT_TO_MGM3}
# When one code's values carry different qualities, the packet shows the least trustworthy one.
_SEVERITY = "NCSMTBFD"


@dataclass
class UploaderCounters:
    queued: int = 0
    sent: int = 0
    acked: int = 0
    resent: int = 0
    refused: int = 0
    dropped: int = 0  # queue overflow
    skipped: int = 0  # readings with no HJ 212 field
    connects: int = 0
    failures: int = 0
    last_error: str = ""
    extra: dict[str, int] = field(default_factory=dict)


class Hj212UploadConfig(StrictModel):
    """One platform to forward to (a list of these can sit in gateway.yaml)."""

    host: str
    port: int = Field(ge=1, le=65535)
    pw: str = Field(pattern=r"^[A-Za-z0-9]{1,6}$")
    stations: dict[Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)],
                   Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{1,24}$")]] = Field(
        min_length=1, description="gateway device id → MN registered with the platform")
    st: str = Field(default="31", pattern=r"^\d{2}$", description="31 air pollution source, 32 water")
    protocol_version: int = Field(default=VERSION_2017, ge=0, le=63)
    want_reply: bool = True
    reply_timeout_s: float = Field(default=5.0, gt=0, le=600)
    max_resends: int = Field(default=3, ge=0, le=100)
    utc_offset_minutes: int = Field(default=480, ge=-720, le=840)
    max_queue: int = Field(default=10_000, ge=1, le=1_000_000)

    def build(self) -> Hj212Uploader:
        return Hj212Uploader(self.host, self.port, stations=self.stations, pw=self.pw, st=self.st,
                             protocol_version=self.protocol_version, want_reply=self.want_reply,
                             reply_timeout_s=self.reply_timeout_s, max_resends=self.max_resends,
                             utc_offset_minutes=self.utc_offset_minutes, max_queue=self.max_queue)


class _NoReply(ConnectionError):
    pass


class Hj212Uploader:
    def __init__(self, host: str, port: int, *, stations: Mapping[str, str], pw: str, st: str = "31",
                 protocol_version: int = VERSION_2017, want_reply: bool = True, reply_timeout_s: float = 5.0,
                 max_resends: int = 3, utc_offset_minutes: int = 480, max_queue: int = 10_000,
                 backoff: Backoff | None = None) -> None:
        """``stations`` maps a gateway device id to the MN the platform knows it by."""
        if not stations:
            raise ValueError("stations must map at least one device id to its MN")
        if reply_timeout_s <= 0 or max_resends < 0 or max_queue < 1:
            raise ValueError("need reply_timeout_s > 0, max_resends >= 0, max_queue >= 1")
        self.host, self.port = host, port
        self.stations = dict(stations)
        self.pw, self.st, self.version = pw, st, protocol_version
        self.want_reply = want_reply
        self.reply_timeout_s = reply_timeout_s
        self.max_resends = max_resends
        self.utc_offset_minutes = utc_offset_minutes
        self.max_queue = max_queue
        self.backoff = backoff or Backoff(initial=0.5, cap=60.0)
        self.counters = UploaderCounters()
        self.connected = False
        self._queue: deque[Packet] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = False
        self._last_qn_ms = 0

    # --- readings to packets ----------------------------------------------------------------

    def _next_qn(self) -> str:
        ms = max(int(time.time() * 1000), self._last_qn_ms + 1)  # unique, rising QNs
        self._last_qn_ms = ms
        return make_qn(ms, self.utc_offset_minutes)

    def packets_for(self, readings: Iterable[Reading]) -> list[Packet]:
        groups: dict[tuple[str, str, str], dict[str, dict[str, str]]] = {}
        for r in readings:
            mn = self.stations.get(r.device)
            parsed = parse_point(r.point)
            if mn is None or parsed is None:
                self.counters.skipped += 1
                continue
            code, suffix, cn = parsed
            want = code.cou_unit if suffix == "Cou" else code.unit
            value = r.value
            if r.unit != want:
                factor = _CONVERT.get((code.name, r.unit, want or ""))
                if factor is None or suffix == "Cou":
                    self.counters.skipped += 1
                    self.counters.extra["unit_mismatch"] = self.counters.extra.get("unit_mismatch", 0) + 1
                    continue
                value *= factor
            key = (mn, cn, format_datatime(r.ts_ms, self.utc_offset_minutes))
            fields = groups.setdefault(key, {}).setdefault(code.code, {})
            fields[suffix] = canonical_number(value)
            old = fields.get("Flag", Quality.NORMAL.value)
            fields["Flag"] = max(old, r.quality.value, key=_SEVERITY.index)
        out: list[Packet] = []
        for (mn, cn, datatime), values in groups.items():
            # Flag last in each group, as units write it.
            ordered = {c: {**{s: v for s, v in f.items() if s != "Flag"}, "Flag": f["Flag"]}
                       for c, f in values.items()}
            out += data_packets(cn=cn, mn=mn, pw=self.pw, st=self.st, datatime=datatime, values=ordered,
                                next_qn=self._next_qn, version=self.version, reply=self.want_reply)
        return out

    def submit(self, readings: Iterable[Reading]) -> int:
        """Queue readings for upload; returns the number of packets queued."""
        packets = self.packets_for(readings)
        for p in packets:
            self._queue.append(p)
            self.counters.queued += 1
        while len(self._queue) > self.max_queue:
            # Keep the packet being delivered; drop the oldest waiting one.
            del self._queue[1 if self._in_flight and len(self._queue) > 1 else 0]
            self.counters.dropped += 1
        if packets:
            self._idle.clear()
            self._wakeup.set()
        return len(packets)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def drained(self) -> None:
        """Wait until every queued packet was delivered (or refused); bound it with asyncio.timeout."""
        await self._idle.wait()

    # --- connection -------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver forever; cancel the task to stop."""
        logged_down = False
        while True:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 10.0)
            except (OSError, TimeoutError) as exc:
                self._failed(exc, loud=not logged_down)
                logged_down = True
                await asyncio.sleep(self.backoff.next_delay())
                continue
            if logged_down:
                log.info("HJ 212 uploader: connected to %s:%d again", self.host, self.port)
            logged_down = False
            self.connected = True
            self.counters.connects += 1
            replies: asyncio.Queue[Packet] = asyncio.Queue()
            reader_task = asyncio.create_task(self._read(reader, replies))
            try:
                await self._deliver_all(writer, replies, reader_task)
            except (OSError, TimeoutError) as exc:
                self._failed(exc, loud=True)
                logged_down = True
            finally:
                self.connected = False
                self._in_flight = False
                reader_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await reader_task
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await asyncio.sleep(self.backoff.next_delay())

    def _failed(self, exc: BaseException, *, loud: bool) -> None:
        self.counters.failures += 1
        self.counters.last_error = f"{type(exc).__name__}: {exc}"
        if loud:
            log.warning("HJ 212 uploader: %s:%d %s; retrying with backoff", self.host, self.port,
                        self.counters.last_error)

    async def _deliver_all(self, writer: asyncio.StreamWriter, replies: asyncio.Queue[Packet],
                           reader_task: asyncio.Task[None]) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                waiter = asyncio.ensure_future(self._wakeup.wait())
                await asyncio.wait({waiter, reader_task}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if reader_task.done():
                    raise ConnectionResetError("platform closed the connection")
                continue
            packet = self._queue[0]
            self._in_flight = True
            await self._deliver(packet, writer, replies, reader_task)
            self._in_flight = False
            if self._queue and self._queue[0] is packet:
                self._queue.popleft()
            self.backoff.reset()

    async def _deliver(self, packet: Packet, writer: asyncio.StreamWriter, replies: asyncio.Queue[Packet],
                       reader_task: asyncio.Task[None]) -> None:
        raw = packet.encode()
        for attempt in range(self.max_resends + 1):
            if reader_task.done():
                raise ConnectionResetError("platform closed the connection")
            writer.write(raw)
            await asyncio.wait_for(writer.drain(), 10.0)
            if attempt:
                self.counters.resent += 1
            else:
                self.counters.sent += 1
            if not self.want_reply:
                return
            verdict = await self._await_reply(packet.qn, replies, reader_task)
            if verdict == "ack":
                self.counters.acked += 1
                return
            if verdict == "refused":
                self.counters.refused += 1
                return
        raise _NoReply(f"no 9014 for QN {packet.qn} after {self.max_resends + 1} sends")

    async def _await_reply(self, qn: str | None, replies: asyncio.Queue[Packet],
                           reader_task: asyncio.Task[None]) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reply_timeout_s
        while (left := deadline - loop.time()) > 0:
            getter = asyncio.ensure_future(replies.get())
            done, _ = await asyncio.wait({getter, reader_task}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if reader_task in done:
                    raise ConnectionResetError("platform closed the connection")
                break
            reply = getter.result()
            if reply.qn != qn:
                continue  # a late answer to an earlier send
            if reply.cn == CN_DATA_REPLY:
                return "ack"
            rtn = reply.cp_fields().get("QnRtn", "")
            if rtn == "9":
                return "resend"  # the platform saw a CRC error: send it again
            if rtn != "1":
                log.warning("HJ 212 uploader: platform refused QN %s with QnRtn=%s", qn, rtn or "?")
                return "refused"
        return "timeout"

    async def _read(self, reader: asyncio.StreamReader, replies: asyncio.Queue[Packet]) -> None:
        framer = StreamFramer()
        while chunk := await reader.read(4096):
            for ev in framer.feed(chunk):
                try:
                    if isinstance(ev, Hj212Error):
                        raise ev
                    packet = parse_data(ev[6:-6])
                except Hj212Error as exc:
                    self.counters.extra["bad_replies"] = self.counters.extra.get("bad_replies", 0) + 1
                    log.debug("HJ 212 uploader: unreadable reply: %s", exc)
                    continue
                if packet.cn in (CN_DATA_REPLY, CN_REQUEST_REPLY):
                    replies.put_nowait(packet)
                else:  # platform requests (set time, fetch history…) are not served by this uploader
                    self.counters.extra["ignored_requests"] = self.counters.extra.get("ignored_requests", 0) + 1
