"""After `carbonlink demo` the console's accounts and balance are not empty: the demo puts a simulated
past day in the gateway's outbox and registers its stack, inverter and forest plot for accounting
(carbonlink/commands/demo_carbon.py), so the API answers with emissions, avoided CO2 and sinks."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import httpx

from carbonlink.cloud.api import create_app
from carbonlink.cloud.auth import create_api_key
from carbonlink.cloud.settings import CloudSettings
from carbonlink.cloud.store import open_store
from carbonlink.commands.demo import TENANT_ID, run_demo


async def test_a_demo_run_ends_with_emissions_avoided_co2_and_sinks_in_the_api(tmp_path: Path, port: int) -> None:
    s = await run_demo(duration=4, data_dir=tmp_path, mqtt_url=None, http_port=port, live=False)
    assert s.drained and s.unacked == 0 and s.history_readings > 0 and s.stored == s.published
    store = open_store(f"sqlite:///{tmp_path / 'cloud.sqlite'}")
    await store.open()
    try:
        _, key = await create_api_key(store, TENANT_ID, "analyst", "test")
        app = create_app(store, settings=CloudSettings(environment="development"))
        auth = {"Authorization": f"Bearer {key}"}
        now = int(time.time() * 1000)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            sources = (await c.get("/api/carbon/sources", headers=auth)).json()["items"]
            kinds = {x["source_id"]: x["kind"] for x in sources}
            assert kinds == {"demo-stack-1": "stack", "demo-pv-1": "inverter", "demo-plot-1": "plot"}
            r = await c.get("/api/carbon/accounts", headers=auth,
                            params={"start": now - 2 * 86_400_000, "end": now, "granularity": "year"})
            assert r.status_code == 200, r.text
            rows = r.json()["items"]
            assert sum(Decimal(x["scope1_t"]) for x in rows) > 0
            assert sum(Decimal(x["avoided_t"]) for x in rows) > 0
            assert sum(Decimal(x["mwh_generated"]) for x in rows) > 0
            assert sum(Decimal(x["sinks_t"]) for x in rows) > 0
            assert sum(x["coverage"]["valid"] for x in rows) >= 20  # a day of complete stack-hours
            r = await c.get("/api/carbon/assets", headers=auth, params={"start": now - 2 * 86_400_000, "end": now})
            got = r.json()
            assert {x["source_id"] for x in got["items"]} == {"demo-pv-1", "demo-plot-1"}
            assert {x["tree"] for x in got["trees"]} == {f"tree-{i:03d}" for i in range(1, 6)}
            hour = now - now % 3_600_000 - 3 * 3_600_000  # a complete hour of the simulated day
            r = await c.get(f"/api/carbon/sources/demo-pv-1/hours/{hour}", headers=auth)
            assert r.status_code == 200 and "CN/average" in r.json()["hours"][0]["factor"]
            assert {x["role"] for x in r.json()["inputs"]} == {"energy", "power"}
            year = time.gmtime(now / 1000 + 8 * 3600).tm_year
            day = time.strftime("%Y-%m-%d", time.gmtime(now / 1000 + 8 * 3600))
            r = await c.get("/api/carbon/balance", headers=auth, params={"year": year, "as_of": day})
            assert r.status_code == 200, r.text
            b = r.json()
            assert b["allowance_t"] is not None and Decimal(b["scope1_t"]) > 0  # a day is too little to forecast
            assert b["forecast"] is None or Decimal(b["forecast"]["ytd_t"]) > 0
            assert Decimal(b["avoided_t"]) > 0 and Decimal(b["sinks_t"]) > 0
    finally:
        await store.close()
