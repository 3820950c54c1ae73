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
