"""Headless Chromium opens the dashboard and sees a live value change."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from carbonlink.cloud.auth import create_api_key
from carbonlink.cloud.store import open_store
from carbonlink.commands.demo import TENANT_ID, run_demo
from tests.services import free_port, require


async def test_dashboard_shows_live_values(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    require(Path(chromium).exists(), "Chromium", "apt-get install -y chromium")
    from playwright.async_api import async_playwright

    port = free_port()
    stop = asyncio.Event()
    demo = asyncio.create_task(run_demo(duration=None, data_dir=tmp_path, mqtt_url=None, http_port=port,
                                        live=False, stop=stop))
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=chromium,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = await browser.new_page()
            deadline = asyncio.get_running_loop().time() + 60
            while True:  # the demo's HTTP server comes up within a few seconds
                if demo.done():
                    raise AssertionError(f"the demo ended before the page loaded: {demo.exception()!r}")
                try:
                    await page.goto(f"http://127.0.0.1:{port}/", timeout=2000)
                    break
                except Exception:  # connection refused until uvicorn listens
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            # Without credentials the page asks for a login and shows no data.
            await page.locator("#login").wait_for(timeout=10_000)
            assert await page.locator("#app").is_hidden()
            # A one-time login link, as the demo prints (here an analyst's key: read-only is enough).
            store = open_store(f"sqlite:///{tmp_path / 'cloud.sqlite'}")
            await store.open()
            try:
                _, key = await create_api_key(store, TENANT_ID, "analyst", "e2e")
            finally:
                await store.close()
            page = await browser.new_page()  # a fresh load: a fragment change alone does not reload a page
            await page.goto(f"http://127.0.0.1:{port}/#key={key}")
            assert key not in await page.evaluate("location.href")  # the page took the key out of the URL
            cell = page.locator('[data-testid="value-cems-stack-1-so2"]')
            await cell.wait_for(timeout=20_000)
            first = await cell.inner_text()
            assert float(first) > 0
            # Live: the value changes without a reload as new readings arrive.
            await page.wait_for_function(
                "(old) => { const c = document.querySelector('[data-testid=\"value-cems-stack-1-so2\"]');"
                " return c && c.textContent !== old; }", arg=first, timeout=20_000)
            assert await page.locator(".js-plotly-plot").count() == 1  # the chart rendered from local plotly
            await page.screenshot(path=str(tmp_path / "dashboard.png"))
            await browser.close()
    finally:
        stop.set()
        summary = await asyncio.wait_for(demo, 90)  # it drains and stops; a hang must fail, not block the run
    assert summary.stored == summary.published > 0
