"""Operators at work in Chromium: live values, a shadow edit with a version conflict, a command, a rule
with an error shown in place, an alert acknowledged and cleared, roles, and both languages."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from .conftest import Console, Watched

SO2 = '[data-testid="value-cems-stack-1-so2"]'


def test_live_values_change_without_reload(watched: Watched, console: Console) -> None:
    page = watched.open("fleet", "analyst", console.keys)
    cell = page.locator(SO2)
    first = cell.inner_text()
    page.evaluate("window.__marker = 1")  # gone if the page reloads
    page.wait_for_function("([sel, old]) => document.querySelector(sel).textContent !== old", arg=[SO2, first],
                           timeout=20_000)
    assert page.evaluate("window.__marker") == 1
    assert "on" in (page.locator("#live-dot").get_attribute("class") or "")
    # Completeness per hour for a device
    page.locator('a[data-device="cems-stack-1"]').click()
    page.locator('[data-testid="completeness"] tbody tr').first.wait_for()
    watched.shot("en-fleet-device")


def test_operator_edits_the_shadow_and_sees_a_conflict(watched: Watched, console: Console) -> None:
    page = watched.open("gateway/gw-demo-01", "operator", console.keys)
    editor = page.locator('[data-testid="shadow-editor"]')
    editor.fill("{not json")
    assert "invalid" in (editor.get_attribute("class") or "")  # validated before anything is sent
    editor.fill(json.dumps({"log_level": "LOUD", "batch": {"max_readings": 0}}))
    assert page.locator('[data-testid="shadow-problem"]').count() == 2
    assert "log_level: expected DEBUG | INFO | WARNING | ERROR" in page.locator("#ed-msg").inner_text()
    editor.fill(json.dumps({"log_level": "INFO"}))
    page.get_by_role("button", name="Save desired").click()
    page.get_by_text(re.compile(r"Saved as version \d+")).wait_for()
    row = page.locator('[data-testid="shadow-table"] tr[data-key="log_level"]')
    assert "INFO" in row.inner_text()
    # The gateway applies it: the delta clears and reported says INFO.
    page.wait_for_function("() => { const r = document.querySelector("
                           "'[data-testid=shadow-table] tr[data-key=log_level]');"
                           " return r && !r.classList.contains('delta') && r.textContent.split('INFO').length === 3"
                           " || (document.querySelector('#reload').click(), false); }", timeout=20_000, polling=1000)
    # Someone else changes the shadow meanwhile: saving the stale version shows a conflict, overwrites nothing.
    headers = {"Authorization": f"Bearer {console.keys['admin']}"}
    other = httpx.patch(f"{console.url}/api/gateways/gw-demo-01/shadow", headers=headers,
                        json={"state": {"desired": {"log_level": "WARNING"}}})
    assert other.status_code == 200
    watched.expected.add((409, "/api/gateways/gw-demo-01/shadow"))
    editor.fill(json.dumps({"log_level": "DEBUG"}))
    page.get_by_role("button", name="Save desired").click()
    page.locator('[data-testid="conflict"]').wait_for()
    watched.shot("en-gateway-conflict")
    now = httpx.get(f"{console.url}/api/gateways/gw-demo-01/shadow", headers=headers).json()
    assert now["state"]["desired"]["log_level"] == "WARNING"


def test_operator_sends_a_command(watched: Watched, console: Console) -> None:
    page = watched.open("gateway/gw-demo-01", "operator", console.keys)
    page.locator("#c-name").select_option("read_now")
    page.locator("#c-dev").fill("cems-stack-1")
    page.get_by_role("button", name="Send").click()
    page.locator('[data-testid="command-result"]').wait_for(timeout=20_000)
    assert "ok" in page.locator('[data-testid="command-result"]').inner_text()
    assert page.locator('[data-testid="commands"] tbody tr').count() >= 1
    watched.shot("en-gateway-command")


def test_rule_errors_in_place_then_an_alert_is_acknowledged_and_cleared(watched: Watched, console: Console) -> None:
    page = watched.open("rules", "operator", console.keys)
    editor = page.locator('[data-testid="rule-editor"]')
    page.locator("#r-id").fill("so2-e2e")
    page.locator("#r-place").select_option("cloud")
    editor.fill("SELECT value FROM 'cems-stack-1/so2'\nRAISE WHEN value > 1 furlongs")
    page.locator("#r-check").click()
    err = page.locator('[data-testid="rule-error"]').first
    err.wait_for()
    assert re.search(r"Line 2, column \d+", err.inner_text())
    watched.shot("en-rules-error")
    editor.fill("SELECT value FROM 'cems-stack-1/so2'\nRAISE WHEN value > 1 mg/m3")
    page.locator("#r-save").click()
    page.locator("#r-msg .msg.error").or_(page.get_by_text(re.compile(r"Saved as version \d+"))).first.wait_for()
    # (the click first replaces the check's messages with "Saving…", so what is waited for is the save's answer)
    assert re.search(r"Saved as version \d+", page.locator("#r-msg").inner_text()), page.locator("#r-msg").inner_text()
    assert "so2-e2e" in page.locator('[data-testid="rules"]').inner_text()
    page.get_by_role("button", name="Push the newest set to all gateways").click()  # delivery by the shadow
    page.get_by_text(re.compile(r"Set version \d+ pushed to 1 gateway")).wait_for()
    assert "gw-demo-01" in page.locator('[data-testid="rule-delivery"]').inner_text()

    page.evaluate("location.hash = '#/alerts'")
    page.wait_for_selector("#view[data-page='alerts'][data-ready='1']")
    ack = page.locator("button[data-ack]").first
    ack.wait_for(timeout=30_000)  # the cloud evaluates new readings; the page follows the live alert counts
    ack.click()
    page.locator("tr[data-alert] .pill.acknowledged").first.wait_for()
    page.locator("button[data-clear]").first.click()
    page.locator("#f-state").select_option("cleared")  # the default view lists open alerts only
    page.locator("tr[data-alert] .pill.cleared").first.wait_for()
    page.locator("#s-rule").fill("so2-e2e")
    page.locator("#s-reason").fill("calibration")
    page.get_by_role("button", name="Silence", exact=True).click()
    page.locator('[data-testid="silences"] tbody tr').filter(has_text="calibration").wait_for()
    watched.shot("en-alerts")
    # Leave the demo quiet for the other tests.
    headers = {"Authorization": f"Bearer {console.keys['admin']}"}
    httpx.delete(f"{console.url}/api/rules/so2-e2e", headers=headers)


def test_roles_decide_what_is_shown(watched: Watched, console: Console) -> None:
    page = watched.open("gateway/gw-demo-01", "analyst", console.keys)
    nav = page.locator("#nav").inner_text()
    assert "Dead letters" not in nav and "Provisioning" not in nav and "Emissions" in nav
    assert page.locator('[data-testid="shadow-editor"]').count() == 0
    assert page.locator("#cmd").count() == 0
    assert "may read shadows but not change them" in page.locator("#view").inner_text()
    page.evaluate("location.hash = '#/dead-letters'")
    page.get_by_text("may not open this page").wait_for()


# Latin words allowed in zh-CN text: chemical formulae, units and names of commands and formats.
ALLOWED = re.compile(r"CarbonLink|CO₂|SO₂|NOx|API|JSON|CSV|PDF|ISO|UTC|clk_|carbonlink[\w .\-…]*|make demo|#key"
                     r"|mg/m³|kg|--[a-z-]+|[A-Z]{1,2}\b")


@pytest.mark.parametrize("route", ["fleet", "gateway/gw-demo-01", "alerts", "rules", "dead-letters", "provisioning",
                                   "anchoring", "emissions", "pollutants", "sinks", "balance", "bigscreen"])
def test_switching_language_changes_every_visible_string(watched: Watched, console: Console, route: str) -> None:
    page = watched.open(route, "admin", console.keys)
    page.locator("#lang").select_option("zh-CN")
    page.wait_for_selector(f"html[lang='zh-CN'] #view[data-page='{route.split('/')[0]}'][data-ready='1']")
    # Every text node shown, except data (ids, values, units from the API), must be free of English.
    leftovers = page.evaluate("""() => {
      const out = [];
      const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
      for (let n = walk.nextNode(); n; n = walk.nextNode()) {
        const el = n.parentElement;
        if (!el || el.closest('[data-raw], script, style, option, code, textarea') || !el.checkVisibility()) continue;
        const s = n.textContent.trim();
        if (s) out.push(s);
      }
      for (const el of document.querySelectorAll('[placeholder], [title]')) {
        if (el.closest('[data-raw]')) continue;
        if (el.title) out.push(el.title);
      }
      return out;
    }""")
    english = [s for s in leftovers if re.search(r"[A-Za-z]{2,}", ALLOWED.sub("", s))]
    assert not english, english
    watched.shot(f"zh-{route.split('/')[0]}")


def test_proof_of_an_anchored_reading_downloads(watched: Watched, console: Console) -> None:
    headers = {"Authorization": f"Bearer {console.keys['admin']}"}
    deadline = time.monotonic() + 60
    while not httpx.get(f"{console.url}/api/anchors", params={"state": "anchored"}, headers=headers).json()["items"]:
        assert time.monotonic() < deadline, "no window anchored within 60 s"
        time.sleep(0.5)
    first = None
    for job in httpx.get(f"{console.url}/api/anchors", params={"state": "anchored"}, headers=headers).json()["items"]:
        rows = httpx.get(f"{console.url}/api/readings", headers=headers,
                         params={"device": "cems-stack-1", "point": "so2", "start": job["start_ms"],
                                 "end": job["end_ms"], "limit": 5}).json()["items"]
        for r in rows:  # a window may be split in parts: take a reading whose proof the API can build
            q = {"gateway": "gw-demo-01", "device": "cems-stack-1", "point": "so2", "ts": r["ts"]}
            if httpx.get(f"{console.url}/api/proof", params=q, headers=headers).status_code == 200:
                first = r
                break
        if first:
            break
    assert first is not None, "no anchored so2 reading"
    page = watched.open("anchoring", "auditor", console.keys)
    assert page.locator('[data-testid="anchor-jobs"] tbody tr').count() >= 1
    page.locator("#p-gw").fill("gw-demo-01")
    page.locator("#p-dev").fill("cems-stack-1")
    page.locator("#p-pt").fill("so2")
    page.locator("#p-ts").fill(first["ts"])
    with page.expect_download() as dl:
        page.get_by_role("button", name="proof").click()
    bundle = json.loads(Path(dl.value.path()).read_text())
    assert bundle["reading"]["point"] == "so2" and bundle["proof"] is not None
    watched.shot("en-anchoring-proof")


async def _account_a_stack(db: Path, tenant: str, year: int) -> None:
    """A stack of the demo's tenant with a fortnight of accounted hours in January (the demo accounts none)."""
    import calendar

    from carbonlink.cloud.carbon.sqlstore import refresh_days
    from carbonlink.cloud.store import open_store

    store = open_store(f"sqlite:///{db}")
    await store.open()
    try:
        config = json.dumps({"source_type": "coal_boiler", "o2_ref_pct": None, "p_atm_pa": "101325",
                             "method": "part75", "lookback_h": 720})
        await store.db.execute("INSERT INTO carbon_sources (source_id, src, tenant, site, kind, p_atm_pa, config,"
                               " created_ms) VALUES ('e2e-report-stack', 9001, ?, 'demo-plant', 'stack', 101325, ?,"
                               " 0)", tenant, config)
        t0 = calendar.timegm((year, 1, 2, 0, 0, 0)) * 1000
        rows = [(9001, t0 + h * 3_600_000, "valid" if h % 9 else "substituted", 1_234_567 + h) for h in range(14 * 24)]
        await store.db.executemany("INSERT INTO carbon_hours (src, hour_ms, status, params_valid, readings, co2_g,"
                                   " so2_g, nox_g, dust_g, formula_version) VALUES (?, ?, ?, 5, 60, ?, 2000, 3000,"
                                   " 400, 'e2e')", rows)
        await refresh_days(store.db, [9001], t0, t0 + 14 * 86_400_000)
    finally:
        await store.close()


def test_analyst_downloads_reports(watched: Watched, console: Console) -> None:
    import asyncio
    import datetime as dt
    from concurrent.futures import ThreadPoolExecutor

    from carbonlink.commands.demo import TENANT_ID

    year = dt.date.today().year  # the year the emissions page opens on
    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
        pool.submit(asyncio.run, _account_a_stack(console.data_dir / "cloud.sqlite", TENANT_ID, year)).result()
    page = watched.open("emissions", "analyst", console.keys)
    page.locator("#r-month").select_option("1")
    with page.expect_download() as dl:
        page.get_by_test_id("report-download").click()
    assert dl.value.suggested_filename == f"emissions-{TENANT_ID}-{year}-01-en.pdf"
    assert Path(dl.value.path()).read_bytes().startswith(b"%PDF")
    page.get_by_text("Report saved").wait_for()
    watched.shot("en-emissions-report")
    page.locator("#lang").select_option("zh-CN")
    page.wait_for_selector("html[lang='zh-CN'] #view[data-page='emissions'][data-ready='1']")
    page.locator("#r-format").select_option("csv")
    with page.expect_download() as dl:
        page.get_by_test_id("report-download").click()
    assert dl.value.suggested_filename == f"emissions-{TENANT_ID}-{year}-zh-CN.csv"
    text = Path(dl.value.path()).read_text("utf-8-sig")
    assert f"{year}-01" in text and "e2e-report-stack" in text
