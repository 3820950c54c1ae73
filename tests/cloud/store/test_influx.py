"""InfluxDB export against a small local server speaking /api/v2/write: line protocol, batches, retries."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from carbonlink.cloud.influx import InfluxExporter, export_range, line_protocol
from carbonlink.cloud.store import ReadingQuery, open_store
from carbonlink.kernel.wire import Batch, Reading, parse_ts, sign_batch

T0 = parse_ts("2024-03-01T00:00:00.000Z")


class FakeInflux:
    """Records each accepted write; answers 503 with Retry-After to the first `fail_first` requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[str] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.fail_first = fail_first
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                owner.requests.append((self.path, dict(self.headers)))
                if not self.path.startswith("/api/v2/write"):
                    self.send_response(404)
                    self.end_headers()
                    return
                if owner.fail_first > 0:
                    owner.fail_first -= 1
                    self.send_response(503)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    return
                owner.bodies.append(body.decode())
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def lines(self) -> list[str]:
        return [line for b in self.bodies for line in b.split("\n") if line]


@pytest.fixture
def influx(request: pytest.FixtureRequest) -> Iterator[FakeInflux]:
    f = FakeInflux(getattr(request, "param", 0))
    t = threading.Thread(target=f.server.serve_forever, daemon=True)
    t.start()
    yield f
    f.server.shutdown()


def test_line_protocol_escapes_and_units() -> None:
    rows = [("cems 1", "so2,dry", T0, 12.5, "mg/m³", "N"), ("cems-1", "flow", T0 + 1, 3.0, "", "M")]
    assert line_protocol("gw=1", rows) == [
        r"reading,device=cems\ 1,gateway=gw\=1,point=so2\,dry,quality=N,unit=mg/m³ value=12.5 1709251200000",
        "reading,device=cems-1,gateway=gw\\=1,point=flow,quality=M value=3 1709251200001",  # no "i" suffix: a float
    ]


def test_batches_by_size(influx: FakeInflux) -> None:
    ex = InfluxExporter(influx.url, "tok", "org", "carbon", batch_size=100, flush_interval_ms=1500)
    ex.export_rows("gw-1", [("d", "p", T0 + i, float(i), "u", "N") for i in range(250)])
    ex.close()
    assert sorted(len([x for x in b.split("\n") if x]) for b in influx.bodies) == [50, 100, 100]
    assert len(influx.lines) == 250 and len(set(influx.lines)) == 250
    path, headers = influx.requests[0]
    assert "bucket=carbon" in path and "org=org" in path and "precision=ms" in path
    assert headers["Authorization"] == "Token tok"
    assert ex.counters.written == 250 and ex.counters.failed == 0


@pytest.mark.parametrize("influx", [2], indirect=True)
def test_retries_until_accepted(influx: FakeInflux) -> None:
    ex = InfluxExporter(influx.url, "tok", "org", "carbon", batch_size=1000, flush_interval_ms=50,
                        retry_interval_ms=20, max_retries=5)
    ex.export_rows("gw-1", [("d", "p", T0 + i, 1.0, "u", "N") for i in range(10)])
    ex.close()
    assert len(influx.requests) == 3  # two 503s, then accepted
    assert len(influx.lines) == 10 and ex.counters.retries == 2 and ex.counters.written == 10


@pytest.mark.parametrize("influx", [100], indirect=True)
def test_gives_up_and_counts(influx: FakeInflux) -> None:
    ex = InfluxExporter(influx.url, "tok", "org", "carbon", batch_size=1000, flush_interval_ms=50,
                        retry_interval_ms=10, max_retries=2, max_retry_delay_ms=20)
    ex.export_rows("gw-1", [("d", "p", T0, 1.0, "u", "N")])
    ex.close()
    assert influx.lines == [] and ex.counters.failed == 1 and ex.counters.written == 0


async def test_export_range_from_store(influx: FakeInflux, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    store = open_store(f"sqlite:///{tmp_path / 'c.sqlite'}")
    await store.open()
    rs = tuple(Reading.make("cems-1", "so2", T0 + i * 1000, float(i), "mg/m³") for i in range(120))
    b = sign_batch(Batch("gw-1", 1, T0, rs), Ed25519PrivateKey.generate())
    await store.data.commit_batch(b, b.to_bytes(), T0)
    ex = InfluxExporter(influx.url, "tok", "org", "carbon", batch_size=50, flush_interval_ms=1500)
    assert await export_range(store, ex, ReadingQuery("cems-1"), page=40) == 120
    ex.close()
    await store.close()
    assert len(influx.lines) == 120 and influx.lines[0].startswith("reading,device=cems-1,gateway=gw-1,point=so2")
