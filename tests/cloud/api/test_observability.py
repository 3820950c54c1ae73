"""Prometheus /metrics (behind its scrape token), request ids in and out, JSON log lines that carry them."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from carbonlink.cloud.api import create_app
from carbonlink.cloud.ingest import IngestProcessor
from carbonlink.cloud.logs import JsonFormatter
from carbonlink.cloud.settings import CloudSettings
from carbonlink.kernel.wire import Reading
from tests.cloud.api.conftest import METRICS_TOKEN, T0, Api, signed
from tests.cloud.api.test_auth import assert_problem


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = s.value
    return out


async def test_metrics_need_the_scrape_token_and_count_ingest_http_and_db(api: Api) -> None:
    assert_problem(await api.client.get("/metrics"), 401)
    assert_problem(await api.client.get("/metrics", headers=api.as_("admin")), 401)  # not a tenant's key
    p = IngestProcessor(api.store)
    api.metrics.attach(p)
    for seq in (10, 11):
        b = signed("gw-a", seq, [Reading.make("cems-1", "so2", T0 + seq * 60_000 + i, 1.0, "mg/m³") for i in range(5)])
        await p.handle_many([("cl/plant-a/gw-a/telemetry", b.to_bytes())])
    bad = signed("gw-a", 12, [Reading.make("cems-1", "so2", T0 + 999_000, 1.0, "ppm")])
    await p.handle("cl/plant-a/gw-a/telemetry", bad.to_bytes())
    await p.handle("cl/plant-a/gw-a/telemetry", b"not json")
    await api.client.get("/api/gateways", headers=api.as_("analyst"))
    r = await api.client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = samples(r.text)
    assert m["carbonlink_ingest_readings_total"] == 10
    assert m["carbonlink_ingest_batch_commits_total{status=committed}"] == 3
    assert m["carbonlink_ingest_batch_readings_count"] == 3 and m["carbonlink_ingest_batch_readings_sum"] == 11
    # Lag: the batches were created in 2026-01-01 (T0), so every one is in the last, +Inf bucket.
    assert m["carbonlink_ingest_lag_seconds_count"] == 3 and m["carbonlink_ingest_lag_seconds_sum"] > 0
    assert m["carbonlink_dead_letters_total{kind=unit}"] == 1 and m["carbonlink_dead_letters_total{kind=refused}"] == 1
    # every statement is timed, labelled by verb and table: three batches inserted, one gateway listing
    assert m["carbonlink_db_seconds_count{op=insert batches}"] == 3
    assert m["carbonlink_db_seconds_count{op=select gateways}"] >= 1
    assert m["carbonlink_http_requests_total{method=GET,route=/api/gateways,status=200}"] == 1
    assert m["carbonlink_http_requests_total{method=GET,route=/metrics,status=401}"] == 2


async def test_metrics_are_off_without_a_token_and_show_the_ingest_state(api: Api) -> None:
    app = create_app(api.store, settings=CloudSettings(environment="development"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert "CARBONLINK_METRICS_TOKEN" in assert_problem(await c.get("/metrics"), 404)["detail"]
    stats = {"ingest": {"state": "connected", "messages": 7, "readings_stored": 5},
             "rules": {"cloud_alerts": 3, "publish_failed": 1}}
    app = create_app(api.store, lambda: stats, settings=api.settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        m = samples((await c.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).text)
        assert m["carbonlink_ingest_connected"] == 1 and m["carbonlink_ingest_messages_total"] == 7
        assert m["carbonlink_rules_cloud_alerts_total"] == 3 and m["carbonlink_rules_publish_failed_total"] == 1
        s = (await c.get("/api/stats", headers=api.as_("analyst"))).json()
        assert s["ingest"] == {"state": "connected"}  # fleet-wide counters are for /metrics only


async def test_request_ids_go_in_and_out_and_into_json_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="carbonlink.cloud.access")
    r = await api.client.get("/api/gateways", headers=api.as_("analyst") | {"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = (await api.client.get("/health")).headers["x-request-id"]
    assert len(generated) == 32 and generated != "abc-123"
    # A header that could forge log lines is replaced, not echoed.
    r = await api.client.get("/health", headers={"X-Request-ID": "x" * 300})
    assert len(r.headers["x-request-id"]) == 32
    # Problems carry the id too.
    assert (await api.client.get("/api/gateways", headers={"X-Request-ID": "e-1"})).headers["x-request-id"] == "e-1"
    lines = [json.loads(JsonFormatter().format(rec)) for rec in caplog.records if rec.name == "carbonlink.cloud.access"]
    ours = next(x for x in lines if x.get("request_id") == "abc-123")
    assert ours["route"] == "/api/gateways" and ours["status"] == 200 and ours["method"] == "GET"
    assert ours["level"] == "info" and ours["ts"].endswith("Z") and ours["duration_ms"] >= 0
    assert any(x.get("request_id") == "e-1" and x["status"] == 401 for x in lines)


def test_json_formatter_keeps_extras_and_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("cloud.x", logging.ERROR, __file__, 1, "failed %s", ("once",), sys.exc_info())
    rec.gateway = "gw-a"
    out = json.loads(JsonFormatter().format(rec))
    assert out["msg"] == "failed once" and out["gateway"] == "gw-a" and "ValueError: boom" in out["exc"]
    assert "request_id" not in out  # outside a request
