"""`carbonlink rules push|alerts|ack|clear|silence|silences|unsilence` against a real cloud API over HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from carbonlink.cli import app
from carbonlink.cloud.api import create_app
from carbonlink.cloud.auth import create_api_key
from carbonlink.cloud.commands import ControlLink
from carbonlink.cloud.settings import CloudSettings
from carbonlink.cloud.store import open_store
from carbonlink.cloud.store.alerts import AlertChange
from carbonlink.rules.alerts import alert_id
from tests.commands.test_rules_cli import BAD, GOOD
from tests.services import free_port

T0 = 1_767_225_600_000


@dataclass
class Live:
    url: str
    operator: str
    analyst: str
    alerts: list[str]

    def run(self, *args: str, role: str = "operator") -> tuple[int, str]:
        token = self.operator if role == "operator" else self.analyst
        res = CliRunner().invoke(app, ["rules", *args, "--api", self.url, "--token", token])
        return res.exit_code, res.output


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The real app under uvicorn on a free port, its store seeded in the server's own event loop."""
    port = free_port()
    ready = threading.Event()
    box: dict[str, object] = {}
    path = tmp_path_factory.mktemp("live") / "cloud.sqlite"

    async def main() -> None:
        store = open_store(f"sqlite:///{path}")
        await store.open()
        await store.registry.register_gateway("gw-a", "plant-a", "ed25519", "00" * 32, tenant="acme")
        await store.registry.register_gateway("gw-c", "plant-a", "ed25519", "00" * 32, tenant="acme")
        ids = []
        for i in range(3):
            subject = f"gw-a/cems-{i}/so2"
            c = AlertChange("raised", alert_id("so2-high", subject, T0 + i), "so2-high", subject, "gw-a", T0 + i,
                            T0 + i, 1, "critical", f"cems-{i}", "so2", {"value": 250.0})
            await store.rules.alerts.merge("acme", c, "gateway", T0)
            ids.append(c.id)
        box["alerts"] = ids
        box["operator"] = (await create_api_key(store, "acme", "operator", "cli"))[1]
        box["analyst"] = (await create_api_key(store, "acme", "analyst", "cli"))[1]
        settings = CloudSettings(environment="production", jwt_secret="j" * 40)
        # A control link that never connects: shadows are stored, and the gateway reads them when it asks.
        control = ControlLink(store, "mqtt://127.0.0.1:1")
        server = uvicorn.Server(uvicorn.Config(create_app(store, settings=settings, control=control),
                                               host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
        box["server"] = server
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        ready.set()
        await task
        await store.close()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(20), "the API did not start"
    yield Live(f"http://127.0.0.1:{port}", str(box["operator"]), str(box["analyst"]), list(box["alerts"]))  # type: ignore[call-overload]
    box["server"].should_exit = True  # type: ignore[attr-defined]
    thread.join(10)


def test_push_a_file_to_a_gateway_and_the_tenants_set_to_all(live: Live, tmp_path: Path) -> None:
    good = tmp_path / "rules.yaml"
    good.write_text(GOOD)
    code, out = live.run("push", str(good), "--gateway", "gw-a", "--json")
    assert code == 0, out
    got = json.loads(out)
    assert got["gateway"] == "gw-a" and got["shadow_version"] == 1 and len(got["hash"]) == 64
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    code, out = live.run("push", str(bad), "--gateway", "gw-a")
    assert code == 2 and "rule broken 3:33" in out and "nothing was applied" in out
    code, out = live.run("push", str(good), "--gateway", "gw-a", role="analyst")
    assert code == 2 and "HTTP 403" in out and "operator or admin" in out
    code, out = live.run("push", str(good), "--gateway", "gw-zz")
    assert code == 2 and "HTTP 404" in out
    code, out = live.run("push")  # the tenant has no rule set yet
    assert code == 2 and "HTTP 404" in out
    # the tenant's own set, after a rule is saved through the API
    import httpx

    r = httpx.post(f"{live.url}/api/rules", headers={"Authorization": f"Bearer {live.operator}"},
                   json={"id": "so2-high", "text": "SELECT value FROM '+/so2' RAISE WHEN value > 200 mg/m3"})
    assert r.status_code == 201, r.text
    code, out = live.run("push", "--json")
    assert code == 0, out
    got = json.loads(out)
    assert sorted(p["gateway"] for p in got["pushed"]) == ["gw-a", "gw-c"] and got["version"] == 1
    code, out = live.run("push", "--gateway", "gw-c")
    assert code == 0 and "gw-c" in out and "pushed" in out and "rule set v1" in out


def test_alerts_ack_clear(live: Live) -> None:
    code, out = live.run("alerts", "--json", role="analyst")
    assert code == 0, out
    assert [a["id"] for a in json.loads(out)["items"]] == list(reversed(live.alerts))
    code, out = live.run("alerts", role="analyst")
    assert code == 0 and "3 raised, 0 acknowledged" in out and "critical" in out
    code, out = live.run("ack", live.alerts[0][:12], "--note", "crew on site", "--json")
    assert code == 0, out
    assert json.loads(out)["state"] == "acknowledged" and json.loads(out)["note"] == "crew on site"
    code, out = live.run("ack", live.alerts[0])
    assert code == 2 and "HTTP 409" in out and "already acknowledged" in out
    code, out = live.run("clear", live.alerts[1], role="analyst")
    assert code == 2 and "HTTP 403" in out
    code, out = live.run("clear", live.alerts[1])
    assert code == 0 and "cleared" in out
    code, out = live.run("alerts", "--state", "cleared", "--json", role="analyst")
    assert [a["id"] for a in json.loads(out)["items"]] == [live.alerts[1]]
    code, out = live.run("ack", "ffff")
    assert code == 2 and "give more of the id" in out


def test_silence_list_and_end(live: Live) -> None:
    code, out = live.run("silence", "--device", "cems-1", "--for", "2h", "--reason", "calibration", "--json")
    assert code == 0, out
    made = json.loads(out)
    assert made["device"] == "cems-1" and made["gateway"] == "every gateway" and made["id"].startswith("sil-")
    code, out = live.run("silences", "--active", "--json", role="analyst")
    assert [s["id"] for s in json.loads(out)["items"]] == [made["id"]]
    code, out = live.run("silence", "--reason", "x")
    assert code == 2 and "--for or --until" in out
    code, out = live.run("silence", "--reason", "x", "--for", "soon")
    assert code == 2 and "like 90m" in out
    code, out = live.run("unsilence", made["id"], "--json")
    assert code == 0 and json.loads(out)["by"].startswith("key:")
    code, out = live.run("silences", "--active", "--json", role="analyst")
    assert json.loads(out)["items"] == []


def test_an_unreachable_api_says_what_to_check() -> None:
    res = CliRunner().invoke(app, ["rules", "alerts", "--api", f"http://127.0.0.1:{free_port()}", "--token", "t"])
    assert res.exit_code == 2 and "cannot reach" in res.output and "--api" in res.output
