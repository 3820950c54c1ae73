"""Prometheus metrics for the cloud (prometheus-client), one registry per app.

What is measured and where:
- ``instrument(store, metrics)``: database latency per statement (label: verb and table).
- The ingest reports every committed batch (``observe_commit``): its size, its lag (now minus the batch's
  ``created`` time, i.e. edge to committed) and readings stored; and dead letters by kind.
  ``rate(carbonlink_ingest_readings_total[1m])`` is the ingest rate.
- ``Metrics.observe_http`` is fed by ``cloud.logs.RequestContext``: requests by route template and status.
- ``stats`` (the service's ingest state and counters) is read at scrape time.

``/metrics`` is not open: it answers only to ``Authorization: Bearer <CARBONLINK_METRICS_TOKEN>``, a
scrape credential of its own (Prometheus ``authorization: {credentials: ...}``), because its figures
are fleet-wide, across tenants. Without that setting, /metrics is off (404).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .store import CommitResult, Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)
_DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _StatsCollector(Collector):
    """The ingest service's own counters, read when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.stats()
        ingest = stats.get("ingest", {})
        up = GaugeMetricFamily("carbonlink_ingest_connected", "1 while the ingest is connected to the broker")
        up.add_metric([], 1.0 if ingest.get("state") == "connected" else 0.0)
        yield up
        for group, counters in stats.items():  # ingest, rules: each service's own counters
            for name, value in counters.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    yield CounterMetricFamily(f"carbonlink_{group}_{name}", f"{group} counter {name}", value=value)


class Metrics:
    def __init__(self, stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.registry = r = CollectorRegistry()
        self.http_requests = Counter("carbonlink_http_requests", "HTTP requests", ["method", "route", "status"],
                                     registry=r)
        self.http_seconds = Histogram("carbonlink_http_request_seconds", "HTTP request latency",
                                      ["method", "route"], registry=r)
        self.db_seconds = Histogram("carbonlink_db_seconds", "storage call latency", ["op"], buckets=_DB_BUCKETS,
                                    registry=r)
        self.batches = Counter("carbonlink_ingest_batch_commits", "batches by commit outcome", ["status"],
                               registry=r)
        self.readings = Counter("carbonlink_ingest_readings", "readings committed to storage", registry=r)
        self.batch_size = Histogram("carbonlink_ingest_batch_readings", "readings per committed batch",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.lag = Histogram("carbonlink_ingest_lag_seconds", "commit time minus the batch's created time",
                             buckets=_LAG_BUCKETS, registry=r)
        self.dead_letters = Counter("carbonlink_dead_letters", "dead letters written", ["kind"], registry=r)
        if stats is not None:
            r.register(_StatsCollector(stats))

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_seconds.labels(method, route).observe(seconds)

    def attach(self, processor: Any) -> None:
        """Count what an ``IngestProcessor`` commits and refuses (its ``on_commit`` and ``on_dead`` hooks)."""
        processor.on_commit = self.observe_commit
        processor.on_dead = lambda kind: self.dead_letters.labels(kind).inc()

    def observe_commit(self, created_ms: int, size: int, result: CommitResult, now: int) -> None:
        self.batches.labels(result.status).inc()
        if result.status == "committed":
            self.readings.inc(result.inserted)
            self.batch_size.observe(size)
            self.lag.observe(max(0, now - created_ms) / 1000)
        if result.unit_mismatches:
            self.dead_letters.labels("unit").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def instrument(store: Store, metrics: Metrics) -> None:
    """Time every statement of ``store`` (label: verb and table, e.g. ``insert batches``)."""
    def observe(label: str, seconds: float) -> None:
        metrics.db_seconds.labels(label).observe(seconds)

    store.db.observer = observe
