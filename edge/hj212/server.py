"""HJ 212 TCP server: the gateway side that CEMS data-acquisition units upload to.

Each connection runs a ``StreamFramer`` over whatever the socket delivers (split
and merged TCP reads are normal), so a frame may arrive byte by byte or ten to a
read. Every frame is checked (CRC, fields, protocol version, MN, PW, CN) before
it reaches the sink. Replies follow HJ 212-2017 §6.6: a data upload whose Flag
asks for an answer (A bit) gets a 9014 data reply with the same QN once the sink
has taken it; a refused packet that asks for an answer gets a 9011 with the
QnRtn code of the fault (3 PW, 4 MN, 6 Flag, 7 QN, 8 CN, 9 CRC, 100 other).
Framing faults (garbage, truncation, bad length) get no answer: there is no
trustworthy header to answer to.

Only configured stations are served: ``ServerConfig.stations`` maps each MN to its
PW, and there is no "accept anyone" mode. An unknown MN or a wrong PW is refused
(9011, QnRtn 4 or 3) before the sink sees the packet, and reported as an
``hj212.refused`` event (at most one per station, reason and peer address per
``event_interval_s``, carrying how many were refused since the last one). After
``max_pw_failures`` wrong PWs for one MN from one address within ``lockout_s``,
that MN is refused from that address for ``lockout_s`` whatever its PW (the
answer is the same 9011, so a guesser learns nothing), which makes guessing a
6-character PW hopeless while other stations behind the same unit go on. The
server listens on loopback unless told otherwise. PWs never appear in logs,
events or reprs.

Rejections are counted per reason (``counters.rejected`` and ``rejected_<reason>``)
and logged: the first of each reason per connection at WARNING, the rest at DEBUG.
A handler never lets an exception out; the server never dies on input.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from carbonlink.codecs.hj212.codec import (
    CN_DATA_REPLY,
    CN_REQUEST_REPLY,
    DATA_CNS,
    QNRTN,
    QNRTN_UNKNOWN,
    VERSION_2017,
    Hj212Error,
    Packet,
    Reason,
    StreamFramer,
    parse_data,
    reply_packet,
)
from carbonlink.edge.drivers.base import DriverCounters, LogEvents
from carbonlink.kernel.events import EventSink
from carbonlink.kernel.tasks import cancel_and_wait

log = logging.getLogger(__name__)

PacketSink = Callable[[Packet], Awaitable[None]]
READ_SIZE = 4096
WRITE_TIMEOUT_S = 10.0
# Reasons worth a 9011: the frame itself arrived intact enough to name its sender.
_ANSWERABLE = frozenset(QNRTN) | {Reason.CP, Reason.FORMAT}


_MAX_TRACKED = 4096  # (peer, MN) pairs remembered for lockouts and event pacing; oldest forgotten first


@dataclass(frozen=True)
class ServerConfig:
    stations: Mapping[str, str] = field(repr=False)  # MN → PW: the only stations served (no default: say who)
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (tests); read the bound one from Hj212Server.port
    protocol_version: int = VERSION_2017
    idle_timeout_s: float = 600.0  # close a connection silent this long
    max_connections: int = 64
    # A connection must deliver one packet from a configured station with its PW within this long, or it is
    # closed: a peer that only connects cannot hold a slot for idle_timeout_s. A unit uploads real-time
    # data (CN 2011) at least every minute, so a genuine one proves itself well inside the default.
    auth_timeout_s: float = 120.0
    max_unauthenticated_per_host: int = 8  # connections one address may hold before a station proves itself
    cns: frozenset[str] = field(default=DATA_CNS)  # CN codes handed to the sink
    max_pw_failures: int = 5  # wrong PWs for one MN from one address within lockout_s before it is locked
    lockout_s: float = 300.0
    event_interval_s: float = 60.0  # at most one hj212.refused event per (MN, reason, address) this often

    def __post_init__(self) -> None:
        if not self.stations:
            raise ValueError("an HJ 212 server needs at least one station (MN and PW); it never accepts anyone")


@dataclass
class _Tally:
    """Refusals of one (address, MN, reason): for the lockout and for pacing events."""

    failures: list[float] = field(default_factory=list)  # monotonic times within the lockout window
    locked_until: float = 0.0
    last_event: float = float("-inf")
    unreported: int = 0


class Hj212Server:
    """Accepts HJ 212 uploads and hands valid packets to ``sink`` (which may raise Hj212Error to refuse)."""

    def __init__(self, config: ServerConfig, sink: PacketSink, counters: DriverCounters | None = None, *,
                 events: EventSink | None = None, device: str | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.sink = sink
        self.counters = counters or DriverCounters()
        self.events: EventSink = events or LogEvents()
        self.device = device  # the gateway device this server is, named in its events
        self.clock = clock  # wall clock for event times
        self.monotonic = monotonic  # lockouts and event pacing
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._tallies: dict[tuple[str, str, str], _Tally] = {}
        self._unproven: dict[str, int] = {}  # per address: connections not yet authenticated

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._handlers)

    async def start(self) -> None:
        c = self.config
        self._server = await asyncio.start_server(self._on_connect, c.host, c.port, limit=READ_SIZE * 4)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await cancel_and_wait(list(self._handlers), what="hj212 connection")
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Hj212Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- one connection ---------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        host = _host(_peer(writer))
        if len(self._handlers) >= self.config.max_connections:
            self.counters.bump("connections_refused")
            log.warning("HJ 212: refusing a connection from %s: %d connections open (max_connections)",
                        _peer(writer), len(self._handlers))
            writer.close()
            return
        if self._unproven.get(host, 0) >= self.config.max_unauthenticated_per_host:
            self.counters.bump("connections_refused")
            log.warning("HJ 212: refusing a connection from %s: %d connections from that address have not"
                        " authenticated yet (max_unauthenticated_per_host)", _peer(writer), self._unproven[host])
            writer.close()
            return
        self._handlers.add(task)
        self._unproven[host] = self._unproven.get(host, 0) + 1
        proven = [False]
        self.counters.bump("connections")
        try:
            await self._serve(reader, writer, lambda: self._proven(host, proven))
        except asyncio.CancelledError:
            # close() cancels handlers; ending quietly keeps asyncio's stream callback (3.11) from
            # logging the cancellation as an error. This task is a leaf: nothing waits on its result.
            pass
        except (ConnectionError, OSError, TimeoutError) as exc:
            log.debug("HJ 212 connection %s ended: %s", _peer(writer), exc)
        except Exception:  # a handler must never take the server down; the traceback is logged
            self.counters.errors += 1
            log.exception("HJ 212 connection %s failed unexpectedly", _peer(writer))
        finally:
            self._handlers.discard(task)
            self._proven(host, proven)
            writer.close()
            try:  # a peer that stops reading keeps unsent replies in the buffer: close() alone would wait forever
                await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT_S)
            except (ConnectionError, OSError, TimeoutError, asyncio.CancelledError):
                writer.transport.abort()

    def _proven(self, host: str, proven: list[bool]) -> None:
        """The connection authenticated (or ended): it no longer counts against its address."""
        if not proven[0]:
            proven[0] = True
            if (left := self._unproven.pop(host, 1) - 1) > 0:
                self._unproven[host] = left

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     on_authenticated: Callable[[], None]) -> None:
        framer = StreamFramer()
        peer = _peer(writer)
        seen: set[Reason] = set()
        c = self.config
        auth_deadline: float | None = self.monotonic() + c.auth_timeout_s  # None once a station proved itself
        while True:
            wait, why = c.idle_timeout_s, "idle"
            if auth_deadline is not None and (left := auth_deadline - self.monotonic()) < wait:
                wait, why = max(left, 0.0), "unauthenticated"
            try:
                chunk = await asyncio.wait_for(reader.read(READ_SIZE), wait)
            except TimeoutError:
                if why == "idle":
                    log.info("HJ 212 connection %s idle for %.0f s; closing", peer, c.idle_timeout_s)
                else:
                    self.counters.bump("closed_unauthenticated")
                    log.info("HJ 212 connection %s sent no packet from a configured station in %.0f s;"
                             " closing (auth_timeout_s)", peer, c.auth_timeout_s)
                chunk = b""
            events = framer.feed(chunk) if chunk else framer.close()
            for event in events:
                if isinstance(event, Hj212Error):
                    self._reject(event, peer, seen)
                    await self._answer_error(event, writer)
                elif await self._frame(event, writer, peer, seen) and auth_deadline is not None:
                    auth_deadline = None
                    on_authenticated()
            if not chunk:
                return

    async def _frame(self, raw: bytes, writer: asyncio.StreamWriter, peer: str, seen: set[Reason]) -> bool:
        """Handle one frame; True when it came from a configured station with its PW."""
        c = self.config
        authenticated = False
        try:
            packet = parse_data(raw[6:-6])  # between the length field and the CRC
            hdr = packet.header_fields()
            if packet.version is not None and packet.version != c.protocol_version:
                raise Hj212Error(Reason.FLAG, f"protocol version {packet.version} in Flag={packet.flag}, this"
                                 f" server speaks version {c.protocol_version} (set protocol_version)", hdr)
            self._authenticate(packet, hdr, peer)
            authenticated = True
            if packet.cn not in c.cns:
                raise Hj212Error(Reason.CN, f"CN {packet.cn} is not handled here"
                                 f" (accepted: {', '.join(sorted(c.cns))})", hdr)
            try:
                await self.sink(packet)
            except Hj212Error as exc:
                exc.header = exc.header or hdr  # the sink's refusals are answered like ours
                raise
        except Hj212Error as exc:
            self._reject(exc, peer, seen)
            await self._answer_error(exc, writer)
            return authenticated
        self.counters.bump("packets")
        if packet.reply_requested:
            reply = reply_packet(packet, CN_DATA_REPLY, version=c.protocol_version)
            await self._send(writer, reply.encode())
        return True

    # --- who may upload ----------------------------------------------------------------------

    def _authenticate(self, packet: Packet, hdr: dict[str, str], peer: str) -> None:
        """Raise Hj212Error (MN or PW) unless the packet comes from a configured station with its PW."""
        expected = self.config.stations.get(packet.mn)
        if expected is None:
            self._refused(Reason.MN, packet.mn, peer)
            raise Hj212Error(Reason.MN, f"MN {packet.mn} is not a configured station", hdr)
        now = self.monotonic()
        tally = self._tally(peer, packet.mn, Reason.PW)
        if tally.locked_until > now:
            self.counters.bump("refused_locked_out")
            self._refused(Reason.PW, packet.mn, peer, locked=True)
            raise Hj212Error(Reason.PW, f"MN {packet.mn} is locked out from {_host(peer)} after wrong PWs", hdr)
        if not hmac.compare_digest(packet.pw.encode(), expected.encode()):
            window = now - self.config.lockout_s
            tally.failures = [t for t in tally.failures if t > window] + [now]
            if len(tally.failures) >= self.config.max_pw_failures:
                tally.locked_until, tally.failures = now + self.config.lockout_s, []
                log.warning("HJ 212: MN %s locked out from %s for %.0f s after %d wrong PWs", packet.mn,
                            _host(peer), self.config.lockout_s, self.config.max_pw_failures)
            self._refused(Reason.PW, packet.mn, peer)
            raise Hj212Error(Reason.PW, f"wrong PW from MN {packet.mn}", hdr)

    def _tally(self, peer: str, mn: str, reason: Reason) -> _Tally:
        key = (_host(peer), mn, reason.value)
        tally = self._tallies.get(key)
        if tally is None:
            if len(self._tallies) >= _MAX_TRACKED:  # a flood of made-up MNs: forget the oldest
                del self._tallies[next(iter(self._tallies))]
            tally = self._tallies[key] = _Tally()
        return tally

    def _refused(self, reason: Reason, mn: str, peer: str, *, locked: bool = False) -> None:
        """Report a refused station as an event, paced so a flood of attempts is a few events with counts."""
        tally = self._tally(peer, mn, reason)
        tally.unreported += 1
        now = self.monotonic()
        if now - tally.last_event < self.config.event_interval_s:
            return
        body = {"mn": mn, "reason": "unknown station" if reason is Reason.MN else "wrong password",
                "peer": _host(peer), "refused": tally.unreported, "locked_out": locked or tally.locked_until > now}
        tally.last_event, tally.unreported = now, 0
        try:
            self.events.emit("hj212.refused", ts_ms=int(self.clock() * 1000), severity="warning",
                             device=self.device, body=body)
        except Exception:  # the event pipeline failing must not open the door: the packet is refused anyway
            self.counters.errors += 1
            log.exception("HJ 212: could not emit the hj212.refused event for MN %s", mn)

    def _reject(self, exc: Hj212Error, peer: str, seen: set[Reason]) -> None:
        self.counters.rejected += 1
        self.counters.bump(f"rejected_{exc.reason.value}")
        self.counters.last_error = str(exc)
        level = logging.DEBUG if exc.reason in seen else logging.WARNING
        seen.add(exc.reason)
        log.log(level, "HJ 212 rejected from %s: %s", peer, exc)

    async def _answer_error(self, exc: Hj212Error, writer: asyncio.StreamWriter) -> None:
        h = exc.header
        flag = h.get("Flag", "")
        if exc.reason not in _ANSWERABLE or not (flag.isascii() and flag.isdigit()) or not int(flag) & 1:
            return
        code = QNRTN.get(exc.reason, QNRTN_UNKNOWN)
        try:
            reply = reply_packet(h, CN_REQUEST_REPLY, version=self.config.protocol_version,
                                 cp=[("QnRtn", str(code))])
        except Hj212Error:
            return  # the header is too broken to address an answer to
        self.counters.bump("replies_9011")
        await self._send(writer, reply.encode())

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)


def _peer(writer: asyncio.StreamWriter) -> str:
    p = writer.get_extra_info("peername")
    return f"{p[0]}:{p[1]}" if isinstance(p, tuple) else str(p)


def _host(peer: str) -> str:
    """The address part of ``host:port`` (IPv6 addresses keep their colons)."""
    return peer.rsplit(":", 1)[0] if ":" in peer else peer
