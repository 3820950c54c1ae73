"""Fault-injection suite: real Mosquitto, real store, real processes killed with SIGKILL.

``carbonlink faults run --profile ci|full [--json]``. One lab (a private Mosquitto,
a CEMS Modbus simulator, two ingest worker processes on one shared subscription,
a SQLite store file) and one fresh gateway process per fault, so each row counts
its own readings:

- produced: readings the gateway committed to its outbox (the outbox's own
  AUTOINCREMENT counter, which survives kill -9 and counts nothing twice);
- stored: readings the cloud holds for that gateway;
- lost = produced - stored; duplicated = stored rows beyond distinct reading
  identities plus batches stored twice (both must be 0);
- redelivered: messages the cloud received again and dropped as duplicates;
- drain_s: from the end of the fault until every reading buffered before it
  was acknowledged.

The gateway reaches the broker through a TCP proxy owned by the runner, so
"cut off" is a real dead link. For the cut-off row the readings the gateway
would have buffered during hours offline are added to its outbox in one go
(synthetic device ``buffered``), exactly as the agent would have stored them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import typer
import yaml

from carbonlink.kernel.ports import free_port

ROOT = Path(__file__).resolve().parents[2]

app = typer.Typer(help="Inject faults into a running pipeline and count what was lost or doubled.",
                  no_args_is_help=True)


@dataclass(frozen=True)
class Profile:
    name: str
    stream_s: float
    ingest_down_s: float
    db_locked_s: float
    buffered: int
    broker_down_s: float


PROFILES = {
    "ci": Profile("ci", stream_s=2.0, ingest_down_s=5.0, db_locked_s=6.0, buffered=50_000, broker_down_s=2.0),
    "full": Profile("full", stream_s=5.0, ingest_down_s=300.0, db_locked_s=60.0, buffered=1_000_000,
                    broker_down_s=5.0),
}


@dataclass
class Row:
    fault: str
    produced: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    redelivered: int = 0
    drain_s: float = 0.0
    note: str = ""


# --- the parts of the lab ---------------------------------------------------------------------


class Broker:
    """A private Mosquitto that can be killed and restarted on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             "max_inflight_messages 100\nmax_queued_messages 100000\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        import socket

        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.1).close()
                return
            except OSError:
                time.sleep(0.025)
        raise RuntimeError("mosquitto did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class Proxy:
    """TCP proxy between one gateway and the broker; ``cut`` kills the link for real."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w.close()
            return
        self.links |= {w, uw}

        async def pipe(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
            try:
                while data := await a.read(1 << 16):
                    b.write(data)
                    await b.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                b.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        self.links -= {w, uw}

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.links):
            w.transport.abort()
        self.links.clear()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class Proc:
    def __init__(self, *args: str, log: Path) -> None:
        self.args = args
        self.log = log
        self.p: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as err:
            return subprocess.Popen([sys.executable, "-m", "carbonlink.commands.faults.procs", *self.args], cwd=ROOT,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                                    stderr=err)

    async def start(self) -> None:
        self.p = self._spawn()
        assert self.p.stdout is not None
        line = await asyncio.to_thread(self.p.stdout.readline)
        if line.strip() != b"ready":
            raise RuntimeError(f"{self.args[0]} process did not start: {line!r}")

    def kill(self) -> None:
        if self.p is not None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()
            self.p = None

    async def stop(self, within: float = 90) -> str:
        if self.p is None:
            return ""
        self.p.send_signal(signal.SIGTERM)
        try:
            out = await asyncio.to_thread(self.p.communicate, None, within)
        except subprocess.TimeoutExpired:
            self.kill()
            return "killed after not stopping in time"
        self.p = None
        return out[0].decode().strip()


@dataclass
class Lab:
    dir: Path
    profile: Profile
    broker: Broker
    store_url: str
    workers: list[Proc] = field(default_factory=list)
    modbus_port: int = 0

    @property
    def db_path(self) -> Path:
        return Path(self.store_url.removeprefix("sqlite:///"))

    def stored(self, gw: str) -> tuple[int, int, int]:
        """(rows, distinct identities, batches stored twice) for one gateway."""
        db = sqlite3.connect(self.db_path, timeout=30)
        try:
            rows, distinct = db.execute(
                "SELECT count(*), count(DISTINCT device || '|' || point || '|' || ts_ms) FROM readings"
                " WHERE gateway = ?", (gw,)).fetchone()
            twice = db.execute("SELECT count(*) - count(DISTINCT seq) FROM batches WHERE gateway = ?",
                               (gw,)).fetchone()[0]
            return int(rows), int(distinct), int(twice)
        finally:
            db.close()


def _outbox_state(path: Path, before_ms: int) -> tuple[int, int]:
    """(readings buffered before ``before_ms`` still pending, unacked batches)."""
    db = sqlite3.connect(path, timeout=30)
    try:
        pending = db.execute("SELECT count(*) FROM pending WHERE added_ms < ?", (before_ms,)).fetchone()[0]
        batches = db.execute("SELECT count(*) FROM batches").fetchone()[0]
        return int(pending), int(batches)
    finally:
        db.close()


def _produced(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(path, timeout=30)
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'pending'").fetchone()
        left = db.execute("SELECT (SELECT count(*) FROM pending) + (SELECT coalesce(sum(n), 0) FROM batches)"
                          ).fetchone()[0]
        return (int(row[0]) if row else 0), int(left)
    finally:
        db.close()


class Gateway:
    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.id = f"gw-{name}"
        self.dir = lab.dir / self.id
        self.dir.mkdir()
        self.proxy = Proxy(lab.broker.port)
        self.proc = Proc("edge", str(self.dir / "gateway.yaml"), log=self.dir / "edge.log")
        self.outbox = self.dir / "edge" / "outbox.sqlite"

    async def setup(self) -> None:
        from carbonlink.cloud.store import open_store
        from carbonlink.edge.identity import load_or_create_key, public_key_hex

        await self.proxy.start()
        cfg = {"gateway": {"id": self.id, "site": "faults", "key_file": "gw.key", "data_dir": "edge"},
               "mqtt": {"url": self.proxy.url, "ack_timeout_s": 3, "keepalive_s": 5},
               "batch": {"max_readings": 500, "max_age_s": 0.2},
               "outbox": {"synchronous": "NORMAL"},
               "delivery": {"live_window_s": 5, "backlog_rate": 50_000, "backlog_inflight": 8},
               "devices": [{"id": "cems", "driver": "modbus_tcp", "host": "127.0.0.1", "port": self.lab.modbus_port,
                            "poll_interval_s": 0.05, "pointmap": "cems"}]}
        (self.dir / "gateway.yaml").write_text(yaml.safe_dump(cfg))
        key = load_or_create_key(self.dir / "gw.key")
        store = open_store(self.lab.store_url)
        await store.open()
        await store.register_gateway(self.id, "faults", "ed25519", public_key_hex(key))
        await store.close()

    async def wait_drained(self, since_ms: int, within: float = 600) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < within:
            pending, batches = _outbox_state(self.outbox, since_ms)
            if pending == 0 and batches == 0:
                return round(time.monotonic() - t0, 2)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.id} did not drain within {within} s")

    async def finish(self, row: Row) -> Row:
        out = await self.proc.stop()
        await self.proxy.cut()
        produced, left = _produced(self.outbox)
        rows, distinct, twice = self.lab.stored(self.id)
        row.produced, row.stored = produced, rows
        row.lost = produced - distinct
        row.duplicated = (rows - distinct) + twice
        if left or out != "drained":
            row.note = (row.note + f"; {left} readings still in the outbox ({out})").strip("; ")
        return row


# --- the faults ---------------------------------------------------------------------------------


async def _stream(lab: Lab) -> None:
    await asyncio.sleep(lab.profile.stream_s)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def fault_edge_kill(lab: Lab, gw: Gateway, row: Row) -> int:
    for _ in range(3):
        await asyncio.sleep(random.uniform(0.3, 1.0))  # mid-stream: a batch is always being cut or in flight
        gw.proc.kill()
        await asyncio.sleep(0.5)
        await gw.proc.start()
    row.note = "3 x kill -9 of the edge agent, restarted after 0.5 s"
    return _now_ms()


async def fault_broker_restart(lab: Lab, gw: Gateway, row: Row) -> int:
    lab.broker.kill()
    await asyncio.sleep(lab.profile.broker_down_s)
    end = _now_ms()
    lab.broker.start()
    row.note = f"mosquitto killed, down {lab.profile.broker_down_s:g} s (drain includes the gateway's backoff)"
    return end


async def fault_ingest_stopped(lab: Lab, gw: Gateway, row: Row) -> int:
    await asyncio.gather(*(w.stop() for w in lab.workers))
    await asyncio.sleep(lab.profile.ingest_down_s)
    end = _now_ms()
    await asyncio.gather(*(w.start() for w in lab.workers))
    row.note = f"both ingest workers stopped {lab.profile.ingest_down_s:g} s (drain includes their start-up)"
    return end


async def fault_db_refusing(lab: Lab, gw: Gateway, row: Row) -> int:
    lock = sqlite3.connect(lab.db_path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # every writer now gets 'database is locked'
    await asyncio.sleep(lab.profile.db_locked_s)
    lock.execute("ROLLBACK")
    lock.close()
    row.note = f"store file exclusively locked {lab.profile.db_locked_s:g} s"
    return _now_ms()


async def fault_cut_off(lab: Lab, gw: Gateway, row: Row) -> int:
    from carbonlink.edge.outbox import Outbox
    from carbonlink.kernel.wire import Reading

    await gw.proxy.cut()
    await asyncio.sleep(0.5)
    ob = Outbox(gw.outbox, gw.id, synchronous="NORMAL")
    t0 = 1_600_000_000_000
    step = 100_000
    added = _now_ms() - 3_600_000  # buffered an hour ago: the backlog lane
    for start in range(0, lab.profile.buffered, step):
        n = min(step, lab.profile.buffered - start)
        ob.append([Reading("buffered", f"p{i % 10}", t0 + start + i, float(i % 1000), "u")
                   for i in range(n)], added_ms=added)
    ob.close()
    await asyncio.sleep(1.0)
    await gw.proxy.start()
    row.note = f"link cut; {lab.profile.buffered:,} readings buffered, then reconnected"
    return _now_ms()


async def fault_dup_reorder(lab: Lab, gw: Gateway, row: Row) -> int:
    import aiomqtt

    captured: list[bytes] = []
    async with aiomqtt.Client("127.0.0.1", lab.broker.port, identifier=f"spy-{gw.id}") as spy:
        await spy.subscribe(f"cl/faults/{gw.id}/telemetry", qos=1)

        async def capture() -> None:
            async for m in spy.messages:
                captured.append(bytes(m.payload))  # type: ignore[arg-type]

        task = asyncio.create_task(capture())
        await asyncio.sleep(2.0)
        task.cancel()
        replay = captured * 2
        random.shuffle(replay)
        for payload in replay:
            await spy.publish(f"cl/faults/{gw.id}/telemetry", payload, qos=1)
    row.redelivered = len(replay)
    row.note = f"{len(captured)} batches each replayed twice, shuffled"
    return _now_ms()


async def fault_worker_killed(lab: Lab, gw: Gateway, row: Row) -> int:
    await asyncio.sleep(0.5)
    lab.workers[0].kill()
    await asyncio.sleep(3.0)
    end = _now_ms()
    await lab.workers[0].start()
    row.note = "kill -9 of one of two ingest workers (shared subscription), restarted after 3 s"
    return end


FAULTS: dict[str, Callable[[Lab, Gateway, Row], Awaitable[int]]] = {
    "edge kill -9 mid-batch": fault_edge_kill,
    "broker restart": fault_broker_restart,
    "ingest stopped": fault_ingest_stopped,
    "database refusing writes": fault_db_refusing,
    "gateway cut off, buffering": fault_cut_off,
    "duplicated + reordered batches": fault_dup_reorder,
    "one of two ingest workers killed": fault_worker_killed,
}


async def run_profile(profile: Profile, only: list[str] | None = None, progress: bool = False) -> list[Row]:
    from carbonlink.simulators.cems import CemsStack
    from carbonlink.simulators.modbus_host import ModbusDeviceHost

    rows: list[Row] = []
    keep = os.environ.get("CARBONLINK_FAULTS_DIR")  # keep the lab (logs, databases) for a post-mortem
    with tempfile.TemporaryDirectory(prefix="carbonlink-faults-", dir=keep) as d:
        work = Path(d)
        broker = Broker(work)
        broker.start()
        lab = Lab(work, profile, broker, f"sqlite:///{work / 'cloud.sqlite'}")
        from carbonlink.cloud.store import open_store

        store = open_store(lab.store_url)
        await store.open()  # migrate once before the workers race to
        await store.close()
        lab.workers = [Proc("ingest", lab.store_url, broker.url, f"ingest-{i}", "faults", log=work / f"ingest-{i}.log")
                       for i in (1, 2)]
        try:
            await asyncio.gather(*(w.start() for w in lab.workers))
            async with ModbusDeviceHost(CemsStack().fill, port=free_port()) as sim:
                lab.modbus_port = sim.port
                for i, (name, fault) in enumerate(FAULTS.items()):
                    if only and not any(o in name for o in only):
                        continue
                    gw = Gateway(lab, f"row{i}")
                    await gw.setup()
                    await gw.proc.start()
                    await _stream(lab)
                    row = Row(name)
                    t0 = time.monotonic()
                    fault_end = await fault(lab, gw, row)
                    row.drain_s = await gw.wait_drained(fault_end)
                    await asyncio.sleep(0.5)
                    rows.append(await gw.finish(row))
                    if progress:
                        print(f"{name}: {time.monotonic() - t0:.1f} s", file=sys.stderr)
        finally:
            for w in lab.workers:
                if w.p is not None:
                    await w.stop()
            broker.kill()
    return rows


def render(rows: list[Row], profile: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"CarbonLink fault injection, profile {profile}")
    for col in ("fault", "produced", "stored", "lost", "duplicated", "redelivered", "drain s", "what was done"):
        t.add_column(col, justify="left" if col in ("fault", "what was done") else "right")
    for r in rows:
        bad = "bold red" if r.lost or r.duplicated else "green"
        t.add_row(r.fault, f"{r.produced:,}", f"{r.stored:,}", f"[{bad}]{r.lost}[/]", f"[{bad}]{r.duplicated}[/]",
                  f"{r.redelivered:,}", f"{r.drain_s:.2f}", r.note)
    Console().print(t)


@app.callback()
def _group() -> None:
    """Fault injection against the real pipeline."""


@app.command("run")
def run(
    profile: Annotated[str, typer.Option(help="ci (a few minutes) or full (5-minute ingest outage, 1M buffered)")]
    = "ci",
    json_out: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
    only: Annotated[list[str] | None, typer.Option(help="run only faults whose name contains this")] = None,
) -> None:
    """Run every fault against a private Mosquitto, ingest workers and a store; exit 1 on any loss."""
    if profile not in PROFILES:
        typer.echo(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}", err=True)
        raise typer.Exit(2)
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        typer.echo("mosquitto is needed: apt-get install -y mosquitto", err=True)
        raise typer.Exit(2)
    rows = asyncio.run(run_profile(PROFILES[profile], only, progress=not json_out))
    if json_out:
        print(json.dumps({"profile": profile, "rows": [asdict(r) for r in rows]}))
    else:
        render(rows, profile)
    if any(r.lost or r.duplicated for r in rows):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
