"""The fault lab's parts: a private Mosquitto that can be killed, a TCP proxy that can cut one gateway off,
processes (edge agents, ingest workers) that can be killed with SIGKILL, and the counts of one row."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from carbonlink.kernel.ports import free_port, port_open


@dataclass(frozen=True)
class Profile:
    name: str
    stream_s: float
    ingest_down_s: float
    db_locked_s: float
    buffered: int
    broker_down_s: float


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

        for _ in range(200):
            if port_open(self.port, timeout=0.1):
                return
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
            return subprocess.Popen([sys.executable, "-m", "carbonlink.commands.faults.procs", *self.args],
                                    cwd=self.log.parent, env=dict(os.environ), stdout=subprocess.PIPE, stderr=err)

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
        return Path(self.store_url.removeprefix("sqlite:///").partition("?")[0])

    async def stored(self, gw: str) -> tuple[int, int, int]:
        """(rows, distinct identities, batches stored twice) for one gateway, on either back end."""
        from carbonlink.cloud.store import open_store

        async with open_store(self.store_url) as store:
            row = await store.db.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT r.series || '|' || r.ts_ms) AS d FROM readings r"
                " JOIN series s ON s.id = r.series WHERE s.gateway = ?", gw)
            twice = await store.db.fetchval("SELECT count(*) - count(DISTINCT seq) FROM batches WHERE gateway = ?",
                                            gw)
        assert row is not None
        return int(row["n"]), int(row["d"]), int(twice)


def store_url(store: str | None, folder: Path, prefix: str) -> tuple[str, str | None]:
    """A cloud store URL for a run: SQLite in ``folder`` by default, else PostgreSQL ``store`` in a throwaway
    schema named ``prefix`` and a random part (returned too, for dropping it afterwards)."""
    if store is None:
        return f"sqlite:///{folder / 'cloud.sqlite'}", None
    schema = prefix + uuid.uuid4().hex[:10]
    return f"{store}{'&' if '?' in store else '?'}schema={schema}", schema


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
        await store.registry.register_gateway(self.id, "faults", "ed25519", public_key_hex(key))
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
        rows, distinct, twice = await self.lab.stored(self.id)
        row.produced, row.stored = produced, rows
        row.lost = produced - distinct
        row.duplicated = (rows - distinct) + twice
        if left or out != "drained":
            row.note = (row.note + f"; {left} readings still in the outbox ({out})").strip("; ")
        return row


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], within: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited ``within`` seconds: every helper process the lab starts."""
    proc.terminate()
    try:
        proc.wait(within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextmanager
def own_mosquitto(extra_conf: str = "", port: int | None = None,
                  anonymous: bool = True) -> Iterator[tuple[str, int, Path]]:
    """Start a private mosquitto on a free port with the given extra config; yields (url, port, dir)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise FileNotFoundError("the mosquitto binary is needed: apt-get install -y mosquitto")
    port = port or free_port()
    with tempfile.TemporaryDirectory() as d:
        conf = Path(d) / "mosquitto.conf"
        # Started as root, mosquitto drops to its own user before reading password and ACL files,
        # which then cannot read a test's private temp folder.
        user_line = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous {str(anonymous).lower()}\n"
                        f"persistence false\n{user_line}{extra_conf}\n")
        # The broker's log goes to a file: a pipe nobody reads fills up (64 KB) and then freezes the broker
        # mid-test once hundreds of clients connect and it logs each one.
        log_path = Path(d) / "mosquitto.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            for _ in range(100):
                if port_open(port, timeout=0.1):
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {log_path.read_text(errors='replace')[-2000:]}")
                time.sleep(0.05)
            yield f"mqtt://127.0.0.1:{port}", port, Path(d)
        finally:
            stop_process(proc, 5)
