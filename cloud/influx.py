"""Optional export to InfluxDB 2 for users who already run it (``pip install carbonlink[influx]``).

Readings become line protocol, one point each: measurement ``reading``, tags gateway, device,
point, unit and quality, field ``value``, timestamp in milliseconds. influxdb-client's batching
writer cuts the batches, flushes on size or age, and retries 429/503 and connection errors with
exponential backoff (honouring Retry-After); we only choose the numbers and count the outcome.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.write_api import WriteOptions, WriteType

from .store import PendingBatch, ReadingQuery, Row, Store

log = logging.getLogger(__name__)
MEASUREMENT = "reading"


def to_point(gateway: str, row: Row) -> Point:
    device, point, ts_ms, value, unit, quality = row
    p = (Point(MEASUREMENT).tag("gateway", gateway).tag("device", device).tag("point", point)
         .tag("quality", quality).field("value", float(value)).time(ts_ms, WritePrecision.MS))
    if unit:  # an empty tag value is not allowed in line protocol
        p = p.tag("unit", unit)
    return p


def line_protocol(gateway: str, rows: Iterable[Row]) -> list[str]:
    return [to_point(gateway, r).to_line_protocol() for r in rows]


@dataclass
class ExportCounters:
    written: int = 0  # lines in batches the server accepted
    failed: int = 0  # lines in batches given up after the retries
    retries: int = 0
    errors: list[str] = field(default_factory=list)


class InfluxExporter:
    """Queue readings for InfluxDB; ``close()`` flushes what is queued and waits for it."""

    def __init__(self, url: str, token: str, org: str, bucket: str, *, batch_size: int = 5000,
                 flush_interval_ms: int = 1000, retry_interval_ms: int = 1000, max_retries: int = 5,
                 max_retry_delay_ms: int = 30_000, timeout_ms: int = 10_000) -> None:
        self.bucket, self.org = bucket, org
        self.counters = ExportCounters()
        self._lock = threading.Lock()  # the writer's callbacks run on its own threads
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=timeout_ms)
        options = WriteOptions(write_type=WriteType.batching, batch_size=batch_size,
                               flush_interval=flush_interval_ms, retry_interval=retry_interval_ms,
                               max_retries=max_retries, max_retry_delay=max_retry_delay_ms,
                               exponential_base=2, max_close_wait=60_000)
        # Note: the writer's window thread sleeps out the flush interval, so the process may take up to
        # flush_interval_ms to exit after close(); keep the interval short.
        self._write = self._client.write_api(write_options=options, success_callback=self._ok,
                                             error_callback=self._error, retry_callback=self._retry)

    @staticmethod
    def _lines(data: Any) -> int:
        text = data.decode() if isinstance(data, bytes) else str(data)
        return text.count("\n") + 1 if text else 0

    def _ok(self, _conf: tuple[str, str, str], data: Any) -> None:
        with self._lock:
            self.counters.written += self._lines(data)

    def _error(self, _conf: tuple[str, str, str], data: Any, exc: InfluxDBError | Exception) -> None:
        with self._lock:
            self.counters.failed += self._lines(data)
            self.counters.errors.append(str(exc)[:300])
        log.error("InfluxDB export gave up on %d lines: %s", self._lines(data), exc)

    def _retry(self, _conf: tuple[str, str, str], _data: Any, exc: InfluxDBError | Exception) -> None:
        with self._lock:
            self.counters.retries += 1
        log.warning("InfluxDB export retrying: %s", exc)

    def export_rows(self, gateway: str, rows: Iterable[Row]) -> None:
        self._write.write(bucket=self.bucket, org=self.org, record=line_protocol(gateway, rows),
                          # influxdb-client defines WritePrecision.MS as a str but annotates write() with the class
                          write_precision=WritePrecision.MS)  # type: ignore[arg-type]

    def export_batch(self, batch: PendingBatch) -> None:
        """Hook for the ingest: call with each committed batch."""
        self.export_rows(batch.gateway, batch.rows)

    def close(self) -> None:
        self._write.close()  # flushes the queue and waits for the retries to finish
        self._client.close()


async def export_range(store: Store, exporter: InfluxExporter, q: ReadingQuery, page: int = 5000) -> int:
    """Copy stored readings of one device (and range) to InfluxDB, page by page; returns the count."""
    total = 0
    async for rows in store.data.stream_readings(q, chunk=page):
        by_gw: dict[str, list[Row]] = {}
        for r in rows:
            by_gw.setdefault(r["gateway"], []).append(
                (r["device"], r["point"], r["ts_ms"], r["value"], r["unit"], r["quality"]))
        for gw, rs in by_gw.items():
            exporter.export_rows(gw, rs)
        total += len(rows)
    return total
