"""The console in a real Chromium against the running demo: every page, live data, language, roles."""

from __future__ import annotations

import pytest

from .conftest import Console, Watched

PAGES = ["fleet", "gateway/gw-demo-01", "alerts", "rules", "dead-letters", "provisioning", "anchoring",
         "emissions", "pollutants", "sinks", "balance", "bigscreen"]


@pytest.mark.parametrize("route", PAGES)
def test_every_page_loads_without_errors(watched: Watched, console: Console, route: str) -> None:
    page = watched.open(route, "admin", console.keys)
    assert page.locator("#view .msg.error").count() == 0, page.locator("#view .msg.error").all_inner_texts()
    watched.shot(f"en-{route.split('/')[0]}")


def test_sinks_and_balance_show_the_demo_s_stored_figures(watched: Watched, console: Console) -> None:
    """The demo registers its stack, inverter and plot and accounts its simulated day (commands/demo_carbon.py):
    the sinks page shows avoided CO2 and sinks per asset and tree, the balance page the year so far."""
    import time

    import httpx

    headers = {"Authorization": f"Bearer {console.keys['admin']}"}
    now = int(time.time() * 1000)
    deadline = time.monotonic() + 120
    while True:  # the simulated day reaches the cloud as a backlog first, then it is accounted
        got = httpx.get(f"{console.url}/api/carbon/assets", headers=headers,
                        params={"start": now - 2 * 86_400_000, "end": now + 3_600_000}).json()
        if {x["source_id"] for x in got["items"]} == {"demo-pv-1", "demo-plot-1"} and got["trees"]:
            break
        assert time.monotonic() < deadline, f"the demo's assets were not accounted within 120 s: {got}"
        time.sleep(1)
    page = watched.open("sinks", "analyst", console.keys)
    pv = page.locator('[data-testid="asset-demo-pv-1"]').inner_text()
    assert float(pv.replace(",", "")) > 0
    assert page.locator('[data-testid="trees"] tbody tr').count() == 5
    watched.shot("en-sinks-accounted")
    page = watched.open("balance", "analyst", console.keys)
    assert float(page.locator('[data-testid="ytd-scope1_t"]').inner_text().replace(",", "")) > 0
    assert page.locator("#view .msg.error").count() == 0
    page = watched.open("pollutants", "analyst", console.keys)  # the registered stack's corrected hours
    page.locator('[data-testid="above-demo-stack-1-so2"]').wait_for(timeout=15_000)
    assert page.locator('[data-testid^="above-demo-stack-1-"]').count() == 3
    watched.shot("en-pollutants-accounted")
