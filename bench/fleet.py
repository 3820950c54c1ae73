"""Fleet benchmark: 10,000 gateways on one broker and one ingest node, then a broker restart.

    .venv/bin/python bench/fleet.py [--gateways 10000] [--interval 10] [--duration 60] [--json]

What runs, each in its own process:
  * a private Mosquitto 2 with persistence on (persistent sessions and queued messages survive its
    restart), per-client queues large enough for the ingest's backlog, TCP_NODELAY, and the soft
    file limit raised to the hard one (one descriptor per gateway);
  * one ingest node: the real ``IngestService`` with a persistent session (clean_session false) on
    PostgreSQL, in a throwaway schema where every gateway is registered with its Ed25519 key;
  * ``--procs`` gateway processes holding thousands of gateways each. A gateway here is what the edge
    uplink does on the wire, no more: a persistent MQTT session (clean_session 0, client id
    ``site.gateway``, last will ``offline`` retained on its status topic, ``online`` on connect), its ack
    topic subscribed at QoS 1, a batch of ``--readings`` readings every ``--interval`` s built with
    ``carbonlink.kernel.wire`` (``Reading.make``, ``sign_batch``, ``to_bytes``: the real canonical bytes
    and Ed25519 signature), kept until the cloud's ack names its seq and sent again on every reconnect
    (the outbox rule), reconnecting with ``kernel.backoff.Backoff`` (0.5 s doubling to 30 s, jittered)
    as the edge uplink does.

Why a minimal MQTT client: an aiomqtt client (over paho) is a paho object, a task and a message queue per
connection, with its own reconnect logic; 2,500 of them per process was not tried (not measured here).
``MiniMqtt`` below is an ``asyncio.Protocol`` with the few MQTT 3.1.1
packets a gateway uses (CONNECT with will, CONNACK, SUBSCRIBE/SUBACK, PUBLISH QoS 0/1 both ways,
PUBACK, PINGREQ/PINGRESP; OASIS MQTT 3.1.1, sections 3.1-3.14). It is a load generator, not a client
to deploy: it does not track the broker's PUBACKs, because a gateway's unit of delivery is the
cloud's ack, after commit.

The run: all gateways connect; one and a half ``--interval`` of warm-up (every gateway's first batch creates its
series; those latencies are not counted); ``--duration`` s of steady batches; the broker is stopped (SIGTERM, or
SIGKILL with ``--crash``), stays down ``--outage`` s and starts again on the same port and data; every
gateway reconnects with jitter and resends what the cloud has not acknowledged; ``--after`` s more of
steady batches; production stops and the last acks are awaited. It prints the time to reconnect every
gateway and to full recovery (every batch made before the reconnect acknowledged), broker and ingest
memory, ack latency percentiles in steady state and during recovery, lost = readings of acknowledged
batches missing from the store (must be 0) and what is still unacknowledged in the gateways' outboxes
at the end (0 when the node kept up), with the ack counts (committed, duplicate: a resent batch that was stored
before; rejected must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import heapq
import json
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from carbonlink.kernel.backoff import Backoff  # noqa: E402
from carbonlink.kernel.wire import Batch, Reading, now_ms, sign_batch  # noqa: E402

DEFAULT_DB = os.environ.get("CARBONLINK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SITE = "fleet"
# A batch's ack latency counts as steady state, as part of a restart's recovery, or as warm-up (the first
# batch of every gateway creates its series in the store: a one-off cost of a fleet's first minutes).
STEADY, RECOVERY, WARMUP = 0, 1, 2


def gateway_id(i: int) -> str:
    return f"gw-{i:05d}"


def gateway_key(seed: int, gw: str) -> Ed25519PrivateKey:
    """Each gateway's key, derived from the run's seed so gateway processes and the registry agree."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"fleet-bench:{seed}:{gw}".encode()).digest())


def proc_status(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (MB), and CPU seconds used, of a process (Linux /proc)."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5].lower()] = int(line.split()[1]) / 1024
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        pass
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] if values else float("nan")


# --- a minimal MQTT 3.1.1 client, one per simulated gateway --------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def connect_packet(client_id: str, keepalive: int, will_topic: str, will: bytes, clean: bool = False) -> bytes:
    # flags: will retain (0x20), will QoS 1 (0x08), will (0x04), clean session (0x02)
    flags = 0x20 | 0x08 | 0x04 | (0x02 if clean else 0)
    body = _str("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive) + _str(client_id) + _str(will_topic) \
        + _str(will)
    return packet(0x10, body)


def publish_packet(topic: str, payload: bytes, pid: int = 0, *, qos: int = 1, retain: bool = False,
                   dup: bool = False) -> bytes:
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    return packet(first, _str(topic) + (struct.pack("!H", pid) if qos else b"") + payload)


class MiniMqtt(asyncio.Protocol):
    """The wire side of one gateway: frames packets in and out, hands the rest to its owner."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._pid = 0

    def next_pid(self) -> int:
        self._pid = self._pid % 65535 + 1
        return self._pid

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._buf.clear()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= 2:
            length, mult, i = 0, 1, 1
            while True:
                if i >= len(buf):
                    return
                b = buf[i]
                length += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
                if i > 4:
                    self.protocol_error("malformed remaining length")
                    return
            if len(buf) < i + length:
                return
            first, body = buf[0], bytes(buf[i:i + length])
            del buf[:i + length]
            self.on_packet(first, body)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def on_packet(self, first: int, body: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def protocol_error(self, what: str) -> None:
        if self.transport is not None:
            self.transport.close()


class SimGateway(MiniMqtt):
    """A gateway: a persistent session, signed batches kept until the cloud acks them, resent on reconnect."""

    def __init__(self, pool: GatewayPool, index: int) -> None:
        super().__init__()
        self.pool = pool
        self.gw = gateway_id(index)
        self.key = gateway_key(pool.seed, self.gw)
        prefix = f"cl/{SITE}/{self.gw}"
        self.t_telemetry, self.t_ack, self.t_status = prefix + "/telemetry", prefix + "/ack", prefix + "/status"
        self.client_id = f"{SITE}.{self.gw}"
        self.seq = 0
        self.unacked: dict[int, tuple[bytes, float, int]] = {}  # seq -> (payload, sent at, phase when sent)
        self.connected = False
        self.connecting = False
        self.backoff = Backoff(initial=0.5, cap=30.0, _rng=random.Random(pool.seed * 100_003 + index))
        self.last_sent = 0.0
        self.recover_upto: int | None = None  # after a reconnect: every seq up to this must be acked
        self.recovering = False  # lost its connection and not yet recovered
        self.reconnected_at = 0.0
        self.recovered_at = 0.0
        self.rng = random.Random(index)

    # connection life
    def start_connect(self) -> None:
        if self.connecting or self.connected:
            return
        self.connecting = True
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        async with self.pool.connect_window:
            try:
                await asyncio.get_running_loop().create_connection(lambda: self, self.pool.host, self.pool.port)
            except OSError:
                self.connecting = False
                self.retry_later()
                return
        self.send(connect_packet(self.client_id, self.pool.keepalive, self.t_status, b"offline"))

    def retry_later(self) -> None:
        self.pool.loop.call_later(self.backoff.next_delay(), self.start_connect)

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.connected or self.connecting
        self.transport = None
        self.connected = self.connecting = False
        if self.pool.stopping:
            return
        if not self.recovering:
            self.recovering = True
            self.pool.recovering += 1
        if was:
            self.pool.disconnected += 1
            self.retry_later()

    def on_packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 3:  # PUBLISH
            qos = (first >> 1) & 3
            tlen = struct.unpack_from("!H", body)[0]
            topic = body[2:2 + tlen].decode()
            at = 2 + tlen
            if qos:
                self.send(b"\x40\x02" + body[at:at + 2])  # PUBACK
                at += 2
            if topic == self.t_ack:
                self.on_ack(body[at:])
        elif kind == 2:  # CONNACK
            if body[1] != 0:
                self.pool.refused += 1
                self.protocol_error(f"connection refused, code {body[1]}")
                return
            self.connecting, self.connected = False, True
            self.backoff.reset()
            self.pool.connects += 1
            if not body[0] & 1:  # no session on the broker: subscribe again
                self.send(packet(0x82, struct.pack("!H", self.next_pid()) + _str(self.t_ack) + b"\x01"))
                self.pool.resubscribes += 1
            self.send(publish_packet(self.t_status, b"online", self.next_pid(), retain=True))
            if self.recovering:
                self.reconnected_at = time.time()
                self.recover_upto = self.seq
                self.check_recovered()
            for seq in sorted(self.unacked):  # the outbox rule: everything not acked by the cloud goes again
                self.publish(seq, resend=True)
            self.last_sent = time.monotonic()
        # SUBACK (9), PUBACK (4), PINGRESP (13): nothing to do; the cloud's ack is what counts

    # batches
    def make_batch(self) -> None:
        self.seq += 1
        now = now_ms()
        readings = tuple(Reading.make("meter-1", f"p{k}", now, round(self.rng.uniform(0, 500), 3), "kg/h")
                         for k in range(self.pool.readings))
        signed = sign_batch(Batch(self.gw, self.seq, now, readings), self.key)
        self.unacked[self.seq] = (signed.to_bytes(), 0.0, self.pool.phase)
        self.pool.batches += 1
        if self.connected:
            self.publish(self.seq)

    def publish(self, seq: int, resend: bool = False) -> None:
        payload = self.unacked[seq][0]
        self.unacked[seq] = (payload, time.time(), RECOVERY if resend else self.pool.phase)
        self.send(publish_packet(self.t_telemetry, payload, self.next_pid()))
        self.last_sent = time.monotonic()
        if resend:
            self.pool.resent += 1

    def on_ack(self, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
            seq, status = int(ack["seq"]), str(ack["status"])
        except (ValueError, KeyError, TypeError):
            self.pool.bad_acks += 1
            return
        self.pool.statuses[status] = self.pool.statuses.get(status, 0) + 1
        hit = self.unacked.pop(seq, None)
        if hit is None:
            return  # a second ack for a batch sent twice
        if status == "rejected":
            self.pool.rejected.append(f"{self.gw}#{seq}: {ack.get('reason')}")
        latency = (time.time() - hit[1]) * 1000
        if hit[2] != WARMUP:
            (self.pool.lat_recovery if hit[2] == RECOVERY else self.pool.lat_steady).append(round(latency, 2))
        self.pool.acked += 1
        self.check_recovered()

    def check_recovered(self) -> None:
        if self.recovering and self.connected and self.recover_upto is not None \
                and all(s > self.recover_upto for s in self.unacked):
            self.recovering = False
            self.recovered_at = time.time()
            self.pool.recovering -= 1
            self.pool.last_recovered = max(self.pool.last_recovered, self.recovered_at)
            self.pool.last_reconnected = max(self.pool.last_reconnected, self.reconnected_at)

    def tick(self, now: float) -> None:
        """Keepalive and the ack timeout: a batch unacked for ack_timeout while connected goes again."""
        if not self.connected:
            return
        if now - self.last_sent > self.pool.keepalive / 2:
            self.send(b"\xc0\x00")
            self.last_sent = now
        wall = time.time()
        for seq, (_, sent, _) in list(self.unacked.items()):
            if wall - sent > self.pool.ack_timeout:
                self.publish(seq, resend=True)


class GatewayPool:
    """Thousands of gateways in one event loop; batches are due on a heap of per-gateway phases."""

    def __init__(self, first: int, count: int, host: str, port: int, *, interval: float, readings: int,
                 seed: int, keepalive: int = 60, ack_timeout: float = 30.0, connect_window: int = 200) -> None:
        self.host, self.port, self.interval, self.readings, self.seed = host, port, interval, readings, seed
        self.keepalive, self.ack_timeout = keepalive, ack_timeout
        self.loop = asyncio.get_running_loop()
        self.connect_window = asyncio.Semaphore(connect_window)
        self.gateways = [SimGateway(self, i) for i in range(first, first + count)]
        self.stopping = self.producing = False
        self.phase = WARMUP  # the orchestrator says when warm-up ends, a restart begins and recovery is over
        self.batches = self.acked = self.resent = self.connects = self.disconnected = self.resubscribes = 0
        self.refused = self.bad_acks = self.recovering = 0
        self.last_recovered = self.last_reconnected = 0.0
        self.statuses: dict[str, int] = {}
        self.rejected: list[str] = []
        self.lat_steady: list[float] = []
        self.lat_recovery: list[float] = []

    @property
    def connected(self) -> int:
        return sum(g.connected for g in self.gateways)

    @property
    def unacked(self) -> int:
        return sum(len(g.unacked) for g in self.gateways)

    async def produce(self) -> None:
        rng = random.Random(self.seed)
        start = time.monotonic()
        due = [(start + rng.uniform(0, self.interval), i) for i in range(len(self.gateways))]
        heapq.heapify(due)
        last_tick = start
        while self.producing:
            now = time.monotonic()
            while due and due[0][0] <= now:
                t, i = heapq.heappop(due)
                self.gateways[i].make_batch()
                heapq.heappush(due, (t + self.interval, i))
            if now - last_tick >= 1.0:
                last_tick = now
                for g in self.gateways:
                    g.tick(now)
            await asyncio.sleep(min(0.05, max(0.0, due[0][0] - time.monotonic())) if due else 0.05)

    def stats(self) -> dict[str, Any]:
        return {"t": time.time(), "connected": self.connected, "unacked": self.unacked, "batches": self.batches,
                "acked": self.acked, "recovering": self.recovering, "connects": self.connects,
                "last_recovered": self.last_recovered, "last_reconnected": self.last_reconnected}


async def gateways_main(first: int, count: int, port: int, interval: float, readings: int, seed: int,
                        ack_timeout: float) -> None:
    """One gateway process: connect all, report, produce until told to stop, wait for the last acks."""
    pool = GatewayPool(first, count, "127.0.0.1", port, interval=interval, readings=readings, seed=seed,
                       ack_timeout=ack_timeout)
    t0 = time.time()
    for g in pool.gateways:
        g.start_connect()
    while pool.connected < count:
        await asyncio.sleep(0.05)
    emit({"ready": True, "connect_s": time.time() - t0})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pool.producing = True
    producer = asyncio.create_task(pool.produce())

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            emit(pool.stats())

    reporter = asyncio.create_task(report())
    while (line := (await reader.readline()).decode().strip()) != "stop":
        if not line:
            break
        if line.startswith("phase "):
            pool.phase = int(line.split()[1])
    pool.producing = False
    await producer
    deadline = time.monotonic() + 60
    while pool.unacked and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    reporter.cancel()
    pool.stopping = True
    for g in pool.gateways:
        if g.transport is not None:
            g.send(b"\xe0\x00")  # DISCONNECT: a clean goodbye, no last will
            g.transport.close()
    emit({"final": True, **pool.stats(), "resent": pool.resent, "disconnected": pool.disconnected,
          "resubscribes": pool.resubscribes, "refused": pool.refused, "bad_acks": pool.bad_acks,
          "statuses": pool.statuses, "rejected": pool.rejected[:20], "lat_steady": pool.lat_steady,
          "lat_recovery": pool.lat_recovery, "peak_rss_mb": proc_status(os.getpid()).get("vmhwm", 0.0),
          "cpu_s": proc_status(os.getpid()).get("cpu_s", 0.0)})


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- the ingest node ------------------------------------------------------------------------------------


async def ingest_main(db: str, mqtt: str, ident: str, group: str | None) -> None:
    from carbonlink.cloud.ingest import IngestService
    from carbonlink.cloud.store import open_store

    store = open_store(db)
    await store.open()
    svc = IngestService(store, mqtt, client_id=ident, shared_group=group)
    task = asyncio.create_task(svc.run())
    await asyncio.wait_for(svc.connected.wait(), 20)
    emit({"ready": True})
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()
    c = svc.counters
    emit({"final": True, "peak_rss_mb": proc_status(os.getpid()).get("vmhwm", 0.0), "connects": c.connects,
          "readings_stored": c.readings_stored, "batches": c.batches_committed,
          "duplicates": c.batches_duplicate, "rejected": c.rejected_messages})


# --- the broker -----------------------------------------------------------------------------------------


BROKER_CONF = """listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {data}/
autosave_interval 60
max_connections -1
max_inflight_messages {inflight}
max_queued_messages {queue}
max_queued_bytes 0
set_tcp_nodelay true
log_type error
log_type warning
"""


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Broker:
    """A private Mosquitto that can be stopped and started again on the same port and data."""

    def __init__(self, folder: Path, port: int, queue: int, inflight: int = 100) -> None:
        self.folder, self.port = folder, port
        self.conf = folder / "mosquitto.conf"
        (folder / "data").mkdir()
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(BROKER_CONF.format(port=port, data=folder / "data", queue=queue, inflight=inflight)
                             + user)
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss_mb = 0.0
        self.cpu_s = 0.0

    def start(self) -> float:
        import shutil

        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.folder / "broker.log", "ab"),
                                     preexec_fn=_raise_nofile)
        for _ in range(400):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return time.time()
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.folder / 'broker.log').read_text()[-2000:]}")
            time.sleep(0.025)
        raise RuntimeError("mosquitto did not listen within 10 s")

    def sample(self) -> dict[str, float]:
        s = proc_status(self.proc.pid) if self.proc else {}
        self.peak_rss_mb = max(self.peak_rss_mb, s.get("vmhwm", 0.0))
        return s

    def stop(self, crash: bool = False) -> float:
        assert self.proc is not None
        s = self.sample()
        self.cpu_s += s.get("cpu_s", 0.0)
        self.proc.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
        self.proc.wait(60)
        self.proc = None
        return time.time()


# --- the orchestrating process --------------------------------------------------------------------------


class Child:
    """A child process speaking JSON lines; keeps the latest status line."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc, self.name = proc, name
        self.last: dict[str, Any] = {}
        self.final: dict[str, Any] | None = None
        self.ready: dict[str, Any] | None = None
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("final"):
                self.final = obj
            elif obj.get("ready"):
                self.ready = obj
            else:
                self.last = obj


async def tell(children: list[Child], line: str) -> None:
    for c in children:
        assert c.proc.stdin is not None
        c.proc.stdin.write(line.encode() + b"\n")
        await c.proc.stdin.drain()


async def spawn(name: str, *args: str, ready_within: float = 300, log: Path | None = None) -> Child:
    """A role of this script in its own process; its stderr goes to ``log`` (warnings during the restart)."""
    with open(log or os.devnull, "ab") as err:
        proc = await asyncio.create_subprocess_exec(sys.executable, __file__, *args, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=err, cwd=ROOT,
                                                    limit=2**28, preexec_fn=_raise_nofile)
    child = Child(proc, name)
    deadline = time.monotonic() + ready_within
    while child.ready is None:
        if proc.returncode is not None or child.reader.done():
            raise RuntimeError(f"{name} did not start (exit {proc.returncode})")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} not ready within {ready_within} s")
        await asyncio.sleep(0.05)
    return child


async def wait_until(cond: Callable[[], bool], limit_s: float, every: Callable[[], None] | None = None) -> bool:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        if every is not None:
            every()
        await asyncio.sleep(0.1)
    return True


async def register(db: str, n: int, seed: int) -> float:
    """Every gateway in the registry with its public key: the registry's own call for the first, then the
    same row for the rest in one statement (10,000 single commits take a minute on a loaded machine)."""
    from carbonlink.cloud.store import open_store
    from carbonlink.edge.identity import public_key_hex

    store = open_store(db)
    await store.open()
    t0 = time.perf_counter()
    try:
        await store.registry.register_gateway(gateway_id(0), SITE, "ed25519", public_key_hex(gateway_key(seed,
                                                                                                       gateway_id(0))))
        now = now_ms()
        await store.db.executemany("INSERT INTO gateways(id, site, alg, key, registered_ms) VALUES (?,?,?,?,?)",
                                   [(gateway_id(i), SITE, "ed25519", public_key_hex(gateway_key(seed, gateway_id(i))),
                                     now) for i in range(1, n)])
        assert await store.registry.get_gateway(gateway_id(n - 1)) is not None
    finally:
        await store.close()
    return time.perf_counter() - t0


async def count_store(db: str) -> dict[str, int]:
    from carbonlink.cloud.store import open_store

    store = open_store(db)
    await store.open()
    try:
        return await store.data.counts()
    finally:
        await store.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:

    from carbonlink.cloud.store.postgres import drop_schema, split_url
    from carbonlink.kernel.ports import free_port

    schema = "fleet_" + uuid.uuid4().hex[:10]
    db = f"{args.db}?schema={schema}"
    result: dict[str, Any] = {"gateways": args.gateways, "interval_s": args.interval, "readings_per_batch":
                              args.readings, "procs": args.procs, "steady_s": args.duration,
                              "outage_s": args.outage, "crash": args.crash, "workers": args.workers}
    result["register_s"] = round(await register(db, args.gateways, args.seed), 2)
    children: list[Child] = []
    workers: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as d:
        port = free_port()
        # A queue per client that holds the ingest's backlog after a restart (every gateway's outage batches).
        broker = Broker(Path(d), port, queue=max(10_000, args.gateways * 10), inflight=args.broker_inflight)
        broker.start()
        mqtt = f"mqtt://127.0.0.1:{port}"
        rss: dict[str, float] = {"broker": 0.0, "ingest": 0.0}

        def sample() -> None:
            b = broker.sample()
            rss["broker"] = max(rss["broker"], b.get("vmrss", 0.0))
            for w in workers:
                if w.proc.returncode is None:
                    rss["ingest"] = max(rss["ingest"], proc_status(w.proc.pid).get("vmrss", 0.0))

        def ingest_cpu() -> float:
            return sum(proc_status(w.proc.pid).get("cpu_s", 0.0) for w in workers)

        try:
            group = ["--group", "fleet"] if args.workers > 1 else []
            for k in range(args.workers):
                workers.append(await spawn(f"ingest-{k}", "--role", "ingest", "--db", db, "--mqtt", mqtt, *group,
                                           "--id", f"fleet-ingest-{k}-{schema}", log=Path(d) / f"ingest-{k}.log"))
            per = -(-args.gateways // args.procs)
            t0 = time.time()
            spawns = [spawn(f"gateways-{k}", "--role", "gateways", "--first", str(k * per), "--count",
                            str(min(per, args.gateways - k * per)), "--port", str(port), "--interval",
                            str(args.interval), "--readings", str(args.readings), "--seed", str(args.seed),
                            "--ack-timeout", str(args.ack_timeout), log=Path(d) / f"gateways-{k}.log")
                      for k in range(args.procs) if k * per < args.gateways]
            children = list(await asyncio.gather(*spawns))
            result["connect_all_s"] = round(time.time() - t0, 2)
            sample()
            result["broker_rss_connected_mb"] = round(broker.sample().get("vmrss", 0.0), 1)

            def total(key: str) -> int:
                return sum(int(c.last.get(key, 0)) for c in children)

            # warm-up: every gateway's first batch (its series are created), then steady state
            end = time.monotonic() + args.interval * 1.5
            while time.monotonic() < end:
                sample()
                await asyncio.sleep(0.5)
            await tell(children, f"phase {STEADY}")
            t_steady = time.time()
            cpu0 = {"broker": broker.sample().get("cpu_s", 0.0),
                    "ingest": ingest_cpu()}
            acked0 = 0
            end = time.monotonic() + args.duration
            while time.monotonic() < end:
                sample()
                if time.monotonic() + 1 > end:
                    acked0 = total("acked")
                await asyncio.sleep(0.5)
            steady_wall = time.time() - t_steady
            cpu1 = {"broker": broker.sample().get("cpu_s", 0.0),
                    "ingest": ingest_cpu()}
            result["steady_cpu_share"] = {k: round((cpu1[k] - cpu0[k]) / steady_wall, 3) for k in cpu0}
            result["steady_acked"] = acked0
            result["broker_rss_steady_mb"] = round(rss["broker"], 1)
            result["ingest_rss_steady_mb"] = round(rss["ingest"], 1)

            # the broker restart
            await tell(children, f"phase {RECOVERY}")
            t_down = broker.stop(crash=args.crash)
            await asyncio.sleep(args.outage)
            t_up = broker.start()
            result["broker_down_s"] = round(t_up - t_down, 2)
            await asyncio.sleep(1.0)  # status lines from before the restart are stale

            def all_back() -> bool:
                return all(c.last.get("t", 0) > t_up + 0.5 and c.last.get("recovering", 1) == 0 for c in children)

            recovered = await wait_until(all_back, args.recovery_limit, sample)
            result["recovered"] = recovered
            result["reconnect_all_s"] = round(max(c.last.get("last_reconnected", 0) for c in children) - t_up, 2)
            result["full_recovery_s"] = round(max(c.last.get("last_recovered", 0) for c in children) - t_up, 2)
            await tell(children, f"phase {STEADY}")
            end = time.monotonic() + args.after
            while time.monotonic() < end:
                sample()
                await asyncio.sleep(0.5)
            # stop producing, wait for the last acks
            await tell(children, "stop")
            await wait_until(lambda: all(c.final is not None for c in children), 90, sample)
            sample()
            result["broker_rss_peak_mb"] = round(max(rss["broker"], broker.peak_rss_mb), 1)
            for c in workers:
                c.proc.send_signal(signal.SIGTERM)
            await wait_until(lambda: all(c.final is not None for c in workers), 30)
        finally:
            for c in [*children, *workers]:
                if c.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        c.proc.kill()
                    await c.proc.wait()
            if broker.proc is not None:
                broker.stop()
    finals = [c.final or {} for c in children]
    lat_s = [x for f in finals for x in f.get("lat_steady", [])]
    lat_r = [x for f in finals for x in f.get("lat_recovery", [])]
    statuses: dict[str, int] = {}
    for f in finals:
        for k, v in f.get("statuses", {}).items():
            statuses[k] = statuses.get(k, 0) + v
    batches = sum(f.get("batches", 0) for f in finals)
    unacked = sum(f.get("unacked", 0) for f in finals)
    counts = await count_store(db)
    ings = [w.final or {} for w in workers]
    result.update(
        batches_sent=batches, readings_sent=batches * args.readings,
        readings_stored=counts["readings"], batches_stored=counts["batches"],
        dead_letters=counts["dead_letters"], unacked_at_end=unacked, ack_statuses=statuses,
        # lost: readings of batches the cloud acknowledged that are not in the store (must be 0); batches
        # never acknowledged are still in their gateway's outbox, not lost, and counted apart
        lost=max(0, (batches - unacked) * args.readings - counts["readings"]),
        readings_in_outboxes=unacked * args.readings,
        rejected_examples=[r for f in finals for r in f.get("rejected", [])][:5],
        resent=sum(f.get("resent", 0) for f in finals), resubscribes=sum(f.get("resubscribes", 0) for f in finals),
        connects=sum(f.get("connects", 0) for f in finals),
        ack_steady_ms={p: round(pct(lat_s, p), 1) for p in (50, 95, 99)}, ack_steady_n=len(lat_s),
        ack_recovery_ms={p: round(pct(lat_r, p), 1) for p in (50, 95, 99)}, ack_recovery_n=len(lat_r),
        ingest_rss_peak_mb=round(max([rss["ingest"], *(i.get("peak_rss_mb", 0.0) for i in ings)]), 1),
        ingest_connects=[i.get("connects") for i in ings], ingest_batches=[i.get("batches") for i in ings],
        gateway_proc_peak_rss_mb=round(max((f.get("peak_rss_mb", 0.0) for f in finals), default=0.0), 1),
        gateway_proc_cpu_s=[round(f.get("cpu_s", 0.0), 1) for f in finals],
        readings_per_s=round(args.gateways * args.readings / args.interval),
    )
    if not args.keep:
        await drop_schema(split_url(db)[0], schema)
    return result


def ok(r: dict[str, Any]) -> bool:
    return bool(r.get("recovered")) and r.get("lost") == 0 and r.get("unacked_at_end") == 0 \
        and not r["ack_statuses"].get("rejected")


def print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"fleet bench: {r['gateways']:,} gateways, a batch of {r['readings_per_batch']} readings every"
                    f" {r['interval_s']:g} s each ({r['readings_per_s']:,} readings/s), broker "
                    f"{'killed' if r['crash'] else 'restarted'} for {r['broker_down_s']} s")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("register / connect all gateways", f"{r['register_s']} s / {r['connect_all_s']} s")
    t.add_row("ack latency in steady state p50 / p95 / p99",
              " / ".join(f"{r['ack_steady_ms'][p]:.0f}" for p in (50, 95, 99)) + f" ms ({r['ack_steady_n']:,})")
    t.add_row("broker back up → every gateway reconnected", f"{r['reconnect_all_s']} s")
    t.add_row("broker back up → full recovery (all buffered batches acked)",
              f"{r['full_recovery_s']} s" + ("" if r["recovered"] else " (NOT recovered)"))
    t.add_row("ack latency of resent batches p50 / p95 / p99 (from last send)",
              " / ".join(f"{r['ack_recovery_ms'][p]:.0f}" for p in (50, 95, 99)) + f" ms ({r['ack_recovery_n']:,})")
    t.add_row("broker RSS connected / steady / peak",
              f"{r['broker_rss_connected_mb']} / {r['broker_rss_steady_mb']} / {r['broker_rss_peak_mb']} MB")
    t.add_row(f"ingest RSS steady / peak (largest of {r['workers']} worker(s))",
              f"{r['ingest_rss_steady_mb']} / {r['ingest_rss_peak_mb']} MB")
    t.add_row("CPU share in steady state: broker / ingest (all workers)",
              f"{r['steady_cpu_share']['broker']:.2f} / {r['steady_cpu_share']['ingest']:.2f} of a core")
    t.add_row("gateway processes: peak RSS, CPU s", f"{r['gateway_proc_peak_rss_mb']} MB, {r['gateway_proc_cpu_s']}")
    t.add_row("batches sent / resent / connects / resubscribes",
              f"{r['batches_sent']:,} / {r['resent']:,} / {r['connects']:,} / {r['resubscribes']:,}")
    t.add_row("acks", ", ".join(f"{k} {v:,}" for k, v in sorted(r["ack_statuses"].items())))
    t.add_row("readings sent / stored / lost (acked, not stored) / still in outboxes",
              f"{r['readings_sent']:,} / {r['readings_stored']:,} / {r['lost']:,} / {r['readings_in_outboxes']:,}")
    t.add_row("unacked at the end / dead letters", f"{r['unacked_at_end']} / {r['dead_letters']}")
    Console().print(t)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=["main", "gateways", "ingest"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--mqtt", help=argparse.SUPPRESS)
    ap.add_argument("--id", default="fleet-ingest", help=argparse.SUPPRESS)
    ap.add_argument("--group", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2,
                    help="ingest worker processes on the node, on one shared subscription (one core each)")
    ap.add_argument("--db", default=DEFAULT_DB, help="PostgreSQL URL (a throwaway schema is made in it)")
    ap.add_argument("--gateways", type=int, default=10_000)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between a gateway's batches")
    ap.add_argument("--readings", type=int, default=10, help="readings per batch")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of steady batches before the restart")
    ap.add_argument("--outage", type=float, default=5.0, help="seconds the broker stays down")
    ap.add_argument("--after", type=float, default=20.0, help="seconds of steady batches after recovery")
    ap.add_argument("--crash", action="store_true", help="SIGKILL the broker instead of stopping it")
    ap.add_argument("--procs", type=int, default=4, help="gateway processes")
    ap.add_argument("--broker-inflight", type=int, default=1000,
                    help="the broker's max_inflight_messages: what a worker can hold uncommitted; with small batches"
                         " a worker's rate is this window divided by its commit-and-ack cycle")
    ap.add_argument("--ack-timeout", type=float, default=30.0, help="a gateway resends a batch unacked this long")
    ap.add_argument("--recovery-limit", type=float, default=120.0, help="seconds allowed for full recovery")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep the bench schema")
    ap.add_argument("--json", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "gateways":
        asyncio.run(gateways_main(args.first, args.count, args.port, args.interval, args.readings, args.seed,
                                  args.ack_timeout))
        return 0
    if args.role == "ingest":
        asyncio.run(ingest_main(args.db, args.mqtt, args.id, args.group))
        return 0
    r = asyncio.run(run(args))
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print_table(r)
    return 0 if ok(r) else 1


if __name__ == "__main__":
    sys.exit(main())
