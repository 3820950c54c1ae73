"""`carbonlink cloud migrate` and friends, and the data-quality HTTP endpoints."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from typer.testing import CliRunner

from carbonlink.cloud.api import create_app
from carbonlink.cloud.auth import create_api_key
from carbonlink.cloud.routes_data import create_data_router
from carbonlink.cloud.store import Store
from carbonlink.cloud.store.postgres import drop_schema
from carbonlink.commands.storage import app
from carbonlink.kernel.wire import Batch, Reading, parse_ts, sign_batch
from tests.services import require_postgres

T0 = parse_ts("2024-03-01T00:00:00.000Z")
runner = CliRunner()


def test_migrate_postgres_twice_and_sqlite(tmp_path: Path) -> None:
    base = require_postgres()
    schema = "cltest_" + uuid.uuid4().hex[:12]
    try:
        for _ in range(2):  # the second run finds nothing to do
            res = runner.invoke(app, ["migrate", "--db", f"{base}?schema={schema}", "--json"])
            assert res.exit_code == 0, res.output
            out = json.loads(res.output)
            assert out["layout"] == "partitioned" and out["schema_version"] >= 2
    finally:
        asyncio.run(drop_schema(base, schema))
    res = runner.invoke(app, ["migrate", "--db", f"sqlite:///{tmp_path / 'x.sqlite'}", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["layout"] == "sqlite"
    res = runner.invoke(app, ["migrate", "--db", "mysql://nope"])
    assert res.exit_code == 2 and "must start with" in res.output


def test_cli_gaps_and_bad_time(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'x.sqlite'}"
    res = runner.invoke(app, ["gaps", "gw-1", "--db", db, "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["missing"] == []
    res = runner.invoke(app, ["availability", "cems-1", "yesterday", "now", "--db", db])
    assert res.exit_code == 2 and "--start must be" in res.output


async def test_data_endpoints(store: Store) -> None:
    await store.registry.register_gateway("gw-1", "site-1", "ed25519", "00" * 32, tenant="t1")
    key = Ed25519PrivateKey.generate()
    rs = tuple(Reading.make("cems-1", "so2", T0 + m * 60_000, float(m), "mg/m³") for m in range(50))
    for seq in (1, 3):
        b = sign_batch(Batch("gw-1", seq, T0, rs if seq == 1 else rs[:1]), key)
        await store.data.commit_batch(b, b.to_bytes(), T0 + 1000)
    app_ = create_app(store)
    app_.include_router(create_data_router(store))
    assert isinstance(app_, FastAPI)
    _, key = await create_api_key(store, "t1", "auditor", "test")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_), base_url="http://t",
                                 headers={"X-API-Key": key}) as c:
        r = await c.get("/api/rollups", params={"device": "cems-1", "start": "2024-03-01T00:00:00.000Z",
                                                "end": "2024-03-01T01:00:00.000Z"})
        assert r.status_code == 200, r.text
        (h,) = r.json()["items"]
        assert h["valid_minutes"] == 50 and h["valid"] and h["mean"] == 24.5
        r = await c.get("/api/rollups", params={"device": "cems-1", "start": "2024-03-01T00:00:00.000Z",
                                                "end": "2024-03-02T00:00:00.000Z", "granularity": "day"})
        assert r.json()["items"][0]["valid"] is False  # one valid hour of the 20 a day needs
        r = await c.get("/api/availability", params={"device": "cems-1", "point": "so2", "start": str(T0),
                                                     "end": str(T0 + 2 * 3_600_000)})
        s = r.json()["items"][0]
        assert [(x["expected"], x["received"]) for x in s["hours"]] == [(60, 50), (60, 0)]
        r = await c.get("/api/gateways/gw-1/gaps")
        assert r.json()["missing"] == [[2, 2]]
        assert (await c.get("/api/gateways/nobody/gaps")).status_code == 404
        for bad in ({"start": "2024-03-02T00:00:00.000Z", "end": "2024-03-01T00:00:00.000Z"},
                    {"start": "1' OR 1=1 --", "end": "2024-03-01T00:00:00.000Z"},
                    {"start": "0", "end": "99999999999999"}):
            r = await c.get("/api/rollups", params={"device": "cems-1", **bad})
            assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
