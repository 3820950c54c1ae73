"""Reports to download (cloud/routes_reports.py) on both back ends: PDF, CSV and JSON of the stored
accounts, an attachment with its name, read by any role of the tenant, bad parameters refused (422)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

from carbonlink.cloud.carbon import sqlstore
from carbonlink.cloud.carbon.errors import CarbonInputError
from carbonlink.cloud.carbon.report import find_font
from carbonlink.cloud.store import Store
from tests.services import require

from .conftest import Api

T0 = 1_740_758_400_000  # 2025-03-01 00:00 +08:00
H = 3_600_000
CONFIG = ('{"source_type": "coal_boiler", "o2_ref_pct": null, "p_atm_pa": "101325", "method": "part75",'
          ' "lookback_h": 720, "gateway": "gw-a", "device": "cems-1"}')


async def seed(store: Store) -> int:
    """Two stacks of acme over March 2025 (and a few hours of February and April); returns March's CO2 grams."""
    db = store.db
    for source_id, src, site in (("stack-1", 71, "plant-a"), ("stack-2", 72, "plant-a")):
        await db.execute("INSERT INTO carbon_sources (source_id, src, tenant, site, kind, p_atm_pa, config,"
                         " created_ms) VALUES (?, ?, 'acme', ?, 'stack', 101325, ?, 0)", source_id, src, site, CONFIG)
    rows, march = [], 0
    for src in (71, 72):
        for h in range(-5, 31 * 24 + 5, 3):
            status = "valid" if h % 7 else "substituted"
            co2 = 1_000_003 * src + h * 17
            rows.append((src, T0 + h * H, status, co2, 20_000 + h, 30_000, 1_500))
            march += co2 if 0 <= h < 31 * 24 else 0
    await db.executemany("INSERT INTO carbon_hours (src, hour_ms, status, params_valid, readings, co2_g, so2_g,"
                         " nox_g, dust_g, formula_version) VALUES (?, ?, ?, 5, 60, ?, ?, ?, ?, 't')", rows)
    await sqlstore.refresh_days(db, [71, 72], T0 - 86_400_000, T0 + 32 * 86_400_000)
    return march


def pdf_tools() -> None:
    require(bool(shutil.which("pdftoppm")), "poppler-utils", "apt-get install poppler-utils")
    try:
        find_font()
    except CarbonInputError as exc:
        require(False, "a CJK font for reports", exc.fix)


async def test_pdf_report_downloads_and_renders(api: Api, tmp_path: Path) -> None:
    pdf_tools()
    await seed(api.store)
    r = await api.client.get("/api/carbon/report", params={"year": 2025, "month": 3, "format": "pdf"},
                             headers=api.as_("analyst"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"] == 'attachment; filename="emissions-acme-2025-03-zh-CN.pdf"'
    assert r.content.startswith(b"%PDF")
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(r.content)
    subprocess.run(["pdftoppm", "-r", "40", "-f", "1", "-l", "1", "-png", str(pdf), str(tmp_path / "page")],
                   check=True, capture_output=True, timeout=60)
    (page,) = tmp_path.glob("page*.png")
    assert page.read_bytes().startswith(b"\x89PNG") and page.stat().st_size > 1000
    again = await api.client.get("/api/carbon/report", params={"year": 2025, "month": 3, "format": "pdf"},
                                 headers=api.as_("auditor"))
    assert again.content == r.content  # the same stored hours, the same bytes


async def test_csv_and_json_carry_the_stored_figures(api: Api) -> None:
    march = await seed(api.store)
    r = await api.client.get("/api/carbon/report", params={"year": 2025, "month": 3, "format": "json", "lang": "en"},
                             headers=api.as_("analyst"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["content-disposition"] == 'attachment; filename="emissions-acme-2025-03-en.json"'
    doc = json.loads(r.content)
    acc = doc["accounts"]
    assert Decimal(acc["total"]["scope1_t"]) == Decimal(march) / 1_000_000
    assert len(acc["periods"]) == 31 and acc["periods"][0]["period"] == "2025-03-01"
    assert acc["as_of"] == "2025-03-31T23:00:00+08:00" and acc["sites"] == ["plant-a"]
    accounts = await api.client.get("/api/carbon/accounts", headers=api.as_("analyst"),
                                    params={"start": T0, "end": T0 + 31 * 86_400_000, "granularity": "month"})
    assert Decimal(accounts.json()["items"][0]["scope1_t"]) == Decimal(acc["total"]["scope1_t"])  # one set of figures
    c = await api.client.get("/api/carbon/report", params={"year": 2025, "format": "csv", "lang": "en"},
                             headers=api.as_("auditor"))
    assert c.status_code == 200 and c.headers["content-type"].startswith("text/csv")
    assert c.headers["content-disposition"] == 'attachment; filename="emissions-acme-2025-en.csv"'
    table = list(csv.reader(io.StringIO(c.content.decode("utf-8-sig"))))
    assert len(table) > 12 and any("2025-03" in row for row in table)


async def test_report_is_read_within_the_tenant_and_checks_its_parameters(api: Api) -> None:
    await seed(api.store)
    assert (await api.client.get("/api/carbon/report", params={"year": 2025})).status_code == 401
    other = await api.client.get("/api/carbon/report", params={"year": 2025, "format": "csv"},
                                 headers=api.as_("other-admin"))
    assert other.status_code == 404 and "no accounted sources" in other.json()["detail"]
    for bad in ({"year": 1999}, {"year": 2025, "month": 13}, {"year": 2025, "month": 0}, {"year": "x"},
                {"year": 2025, "format": "docx"}, {"year": 2025, "lang": "fr"}, {"year": 2025, "tz_offset_min": 7},
                {}):
        r = await api.client.get("/api/carbon/report", params=bad, headers=api.as_("analyst"))
        assert r.status_code == 422, (bad, r.status_code)


async def test_a_report_carries_the_solar_and_forest_hours(api: Api) -> None:
    """An inverter's avoided CO2 (with its MWh) and a plot's sinks are lines of the report beside the stacks,
    from the same kept asset-days as /api/carbon/accounts; net = scope 1 - sinks, avoided beside it."""
    march = await seed(api.store)
    db = api.store.db
    for source_id, src, kind in (("pv-1", 81, "inverter"), ("plot-1", 82, "plot")):
        await db.execute("INSERT INTO carbon_sources (source_id, src, tenant, site, kind, p_atm_pa, config,"
                         " created_ms) VALUES (?, ?, 'acme', 'plant-a', ?, 101325, '{\"grid\": \"CN\"}', 0)",
                         source_id, src, kind)
    rows = [(81, "", T0 + h * H, "valid" if h % 5 else "missing", 12, 12_000_000 + h, 0, 6_367 + h, None,
             "grid:CN/2023", "", "t") for h in range(0, 31 * 24, 2)]
    rows += [(82, f"tree-{t}", T0 + h * H, "valid", 60, 0, 0, 41 + t, 1.5, "", "", "t")
             for t in range(3) for h in range(0, 31 * 24, 4)]
    await db.executemany("INSERT INTO carbon_asset_hours (src, member, hour_ms, status, readings, wh_milli,"
                         " est_wh_milli, co2_g, max_um, factor, note, formula_version)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    from carbonlink.cloud.carbon.assets import refresh_asset_days

    await refresh_asset_days(db, [81, 82], T0 - 86_400_000, T0 + 32 * 86_400_000)
    avoided = sum(r[7] for r in rows if r[0] == 81)
    sinks = sum(r[7] for r in rows if r[0] == 82)
    mwh = Decimal(sum(r[5] for r in rows if r[0] == 81)).scaleb(-9)
    r = await api.client.get("/api/carbon/report", params={"year": 2025, "month": 3, "format": "json", "lang": "en"},
                             headers=api.as_("analyst"))
    assert r.status_code == 200, r.text
    acc = json.loads(r.content)["accounts"]
    total = acc["total"]
    assert Decimal(total["scope1_t"]) == Decimal(march) / 1_000_000
    assert Decimal(total["avoided_t"]) == Decimal(avoided) / 1_000_000
    assert Decimal(total["sinks_t"]) == Decimal(sinks) / 1_000_000
    assert Decimal(total["net_t"]) == (Decimal(march) - sinks) / 1_000_000
    assert Decimal(total["mwh_generated"]) == mwh
    lines = {s["source_id"]: s for s in total["sources"]}
    assert lines["pv-1"]["category"] == "avoided" and Decimal(lines["pv-1"]["detail"]["mwh"]) == mwh
    assert lines["pv-1"]["coverage"]["missing"] == sum(1 for r in rows if r[0] == 81 and r[3] == "missing")
    assert lines["plot-1"]["category"] == "sink" and lines["plot-1"]["method"] == "forest"
    assert {m["name"] for m in acc["methods"]} >= {"cems", "solar", "forest"}
    assert any(f["table"] == "grid" for f in acc["factors"])
    accounts = await api.client.get("/api/carbon/accounts", headers=api.as_("analyst"),
                                    params={"start": T0, "end": T0 + 31 * 86_400_000, "granularity": "month"})
    item = accounts.json()["items"][0]
    assert Decimal(item["avoided_t"]) == Decimal(total["avoided_t"])  # one set of figures
    assert Decimal(item["sinks_t"]) == Decimal(total["sinks_t"])
    for fmt in ("pdf", "csv"):  # both renderings take the asset lines
        if fmt == "pdf":
            pdf_tools()
        got = await api.client.get("/api/carbon/report", params={"year": 2025, "month": 3, "format": fmt,
                                                                  "lang": "en"}, headers=api.as_("analyst"))
        assert got.status_code == 200 and (got.content.startswith(b"%PDF") if fmt == "pdf" else b"pv-1" in got.content)
