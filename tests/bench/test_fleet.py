"""bench/fleet.py: its MQTT framing, and a small fleet through a broker restart (lost 0, every batch acked)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bench.fleet import MiniMqtt, _varint, connect_packet, packet, publish_packet
from tests.services import ROOT, require, require_postgres


@pytest.mark.parametrize(("n", "encoded"), [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"),
                                            (16_384, b"\x80\x80\x01"), (268_435_455, b"\xff\xff\xff\x7f")])
def test_remaining_length_as_in_the_standard(n: int, encoded: bytes) -> None:
    assert _varint(n) == encoded  # MQTT 3.1.1 section 2.2.3, table 2.4


def test_packets_are_framed_across_reads() -> None:
    got: list[tuple[int, bytes]] = []

    class Recorder(MiniMqtt):
        def on_packet(self, first: int, body: bytes) -> None:
            got.append((first, body))

    stream = publish_packet("cl/s/g/ack", b"x" * 300, 7) + b"\x20\x02\x01\x00" + packet(0xD0, b"")
    r = Recorder()
    for i in range(0, len(stream), 5):  # arrives five bytes at a time
        r.data_received(stream[i:i + 5])
    assert [f for f, _ in got] == [0x32, 0x20, 0xD0]
    assert got[0][1] == b"\x00\x0acl/s/g/ack\x00\x07" + b"x" * 300 and got[1][1] == b"\x01\x00"


def test_connect_asks_for_a_persistent_session_with_a_retained_will() -> None:
    p = connect_packet("site.gw-1", 60, "cl/site/gw-1/status", b"offline")
    assert p[0] == 0x10 and p[2:10] == b"\x00\x04MQTT\x04" + bytes((0x2C,))  # will retain, QoS 1, will; not clean


@pytest.mark.service("postgres")
def test_fifty_gateways_through_a_broker_restart() -> None:
    db = require_postgres()
    require(shutil.which("mosquitto") is not None, "mosquitto", "apt-get install -y mosquitto")
    proc = subprocess.run([sys.executable, "bench/fleet.py", "--gateways", "50", "--interval", "1", "--duration", "3",
                           "--outage", "1", "--after", "2", "--procs", "2", "--workers", "1", "--readings", "5",
                           "--db", db, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    r = json.loads(proc.stdout)
    assert r["recovered"] and r["lost"] == 0 and r["unacked_at_end"] == 0
    assert r["readings_stored"] == r["readings_sent"] == r["batches_sent"] * 5 > 0
    assert "rejected" not in r["ack_statuses"] and r["dead_letters"] == 0
    assert r["connects"] >= 100  # every gateway connected twice: before and after the restart
    assert r["ack_steady_n"] > 0 and r["ack_steady_ms"]["99"] >= r["ack_steady_ms"]["50"]
