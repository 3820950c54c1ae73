"""One demo (simulators → gateway → MQTT → cloud) and one Chromium per test module; a fresh page per test.

Every page a test opens is watched: a console error, an uncaught exception or a failed request to the
app fails the test. Screenshots go to ``var/screenshots/`` for people to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import free_port, require

ROOT = Path(__file__).resolve().parents[3]
SHOTS = ROOT / "var" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class Console:
    url: str
    data_dir: Path
    keys: dict[str, str] = field(default_factory=dict)


async def _make_keys(db: Path, tenant: str) -> dict[str, str]:
    from carbonlink.cloud.auth import create_api_key
    from carbonlink.cloud.store import open_store

    store = open_store(f"sqlite:///{db}")
    await store.open()
    try:
        return {role: (await create_api_key(store, tenant, role, f"e2e {role}"))[1]
                for role in ("admin", "operator", "analyst", "installer", "auditor")}
    finally:
        await store.close()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    require(Path(CHROMIUM).exists(), "Chromium", "apt-get install -y chromium")
    from carbonlink.commands.demo import TENANT_ID

    data_dir = tmp_path_factory.mktemp("console-demo")
    port = free_port()
    exe = Path(sys.executable).with_name("carbonlink")
    proc = subprocess.Popen([str(exe), "demo", "--json", "--data-dir", str(data_dir), "--http-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, start_new_session=True,
                            # Cloud rules with no allowed lateness: an alert rises seconds after its reading.
                            env={**os.environ, "CARBONLINK_RULES_LATENESS_S": "0"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # the demo's HTTP server and first readings come up within seconds
            if proc.poll() is not None:
                tail = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                raise AssertionError(f"the demo ended early: {tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("the demo's HTTP server did not come up in 90 s")
            time.sleep(0.2)
        with ThreadPoolExecutor(1) as pool:  # Playwright's sync API may hold this thread's event loop
            keys = pool.submit(asyncio.run, _make_keys(data_dir / "cloud.sqlite", TENANT_ID)).result()
        headers = {"Authorization": f"Bearer {keys['admin']}"}
        while not httpx.get(url + "/api/latest", headers=headers, timeout=5).json():
            if time.monotonic() > deadline:
                raise AssertionError("no reading reached the cloud in 90 s")
            time.sleep(0.2)
        yield Console(url, data_dir, keys)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # the demo drains and stops on Ctrl-C
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(Path(CHROMIUM).exists(), "Chromium", "apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                     "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


class Watched:
    """A page whose console errors, page errors and failed app requests are collected."""

    def __init__(self, page: Any, base: str) -> None:
        self.page, self.base, self.errors = page, base, []
        self.expected: set[tuple[int, str]] = set()  # (status, path) a test provokes on purpose
        # A failed load is reported below with its URL (the console message has none).
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
        page.on("response", lambda r: self.errors.append(f"HTTP {r.status}: {r.url}")
                if r.status >= 400 and r.url.startswith(base)
                and (r.status, r.url.removeprefix(base).split("?")[0]) not in self.expected else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("requestfailed", lambda r: self.errors.append(f"requestfailed: {r.url} {r.failure}")
                if r.url.startswith(base) and "/api/live" not in r.url else None)

    def open(self, route: str, role: str, keys: dict[str, str], lang: str = "en") -> Any:
        """Signed in with the role's key (through the URL fragment, as the demo's link does)."""
        self.page.add_init_script(f"localStorage.setItem('carbonlink.lang', '{lang}')")
        self.page.goto(f"{self.base}/#key={keys[role]}")
        self.page.wait_for_selector("#view[data-ready='1']", timeout=20_000)
        if route != "fleet":
            self.page.evaluate(f"location.hash = '#/{route}'")
        self.page.wait_for_selector(f"#view[data-page='{route.split('/')[0]}'][data-ready='1']", timeout=20_000)
        return self.page

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def watched(browser: Any, console: Console) -> Iterator[Watched]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    w = Watched(ctx.new_page(), console.url)
    yield w
    ctx.close()
    assert not w.errors, "\n".join(w.errors)
