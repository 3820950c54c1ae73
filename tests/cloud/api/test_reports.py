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
    assert other.status_code == 404 and "no accounted stacks" in other.json()["detail"]
    for bad in ({"year": 1999}, {"year": 2025, "month": 13}, {"year": 2025, "month": 0}, {"year": "x"},
                {"year": 2025, "format": "docx"}, {"year": 2025, "lang": "fr"}, {"year": 2025, "tz_offset_min": 7},
                {}):
        r = await api.client.get("/api/carbon/report", params=bad, headers=api.as_("analyst"))
        assert r.status_code == 422, (bad, r.status_code)
