"""The shipped Node-RED flow, in a real Node-RED 4.1 from npm, against a private Mosquitto.

Node-RED is installed once into ``var/node-red`` (gitignored; a cold install takes about 15 s
here) and reused. The test starts it on a free port with the flow's own settings, deploys
``compose/node-red/flows.json`` through the admin API, publishes a signed alert event and a signed
telemetry batch the way a gateway does, and waits for what the flow publishes for operators.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.commands.faults.lab import stop_process
from carbonlink.kernel.events import Event, sign_event
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from tests.services import ROOT, free_port, own_mosquitto, port_open, require

pytestmark = pytest.mark.service("node-red")

FLOW_DIR = ROOT / "compose" / "node-red"
INSTALL = ROOT / "var" / "node-red"
VERSION = "~4.1.0"


def _installed() -> Path | None:
    pkg = INSTALL / "node_modules" / "node-red" / "package.json"
    if pkg.exists() and json.loads(pkg.read_text())["version"].startswith("4.1."):
        return pkg.parent / "red.js"
    return None


def node_red() -> Path:
    require(bool(shutil.which("node") and shutil.which("npm")), "node and npm", "apt-get install -y nodejs npm")
    red = _installed()
    if red is None:
        INSTALL.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix",
                               str(INSTALL), f"node-red@{VERSION}"], capture_output=True, text=True, timeout=600)
        red = _installed()
        require(red is not None, "node-red from npm", f"npm install failed: {proc.stderr[-2000:]}")
    assert red is not None
    return red


@pytest.fixture(scope="module")
def broker() -> Iterator[int]:
    with own_mosquitto() as (_url, port, _dir):
        yield port


@pytest.fixture(scope="module")
def nodered(broker: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    red = node_red()
    user_dir = tmp_path_factory.mktemp("node-red")
    shutil.copy(FLOW_DIR / "settings.js", user_dir / "settings.js")
    port = free_port()
    env = {**os.environ, "NODE_RED_PORT": str(port), "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(broker),
           "CARBONLINK_API": "http://127.0.0.1:9", "CARBONLINK_API_TOKEN": "unused"}
    log = (user_dir / "node-red.log").open("w")
    proc = subprocess.Popen(["node", str(red), "--settings", str(user_dir / "settings.js"), "--userDir",
                             str(user_dir)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not port_open(port, timeout=0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Node-RED did not start: {(user_dir / 'node-red.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        stop_process(proc)
        log.close()


def deploy(base: str) -> None:
    flows = (FLOW_DIR / "flows.json").read_bytes()
    req = urllib.request.Request(f"{base}/flows", data=flows, method="POST",
                                 headers={"Content-Type": "application/json", "Node-RED-Deployment-Type": "full"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status in (200, 204)
    with urllib.request.urlopen(f"{base}/flows", timeout=30) as resp:
        deployed = json.loads(resp.read())
    assert {n["id"] for n in deployed} >= {"cl-in-events", "cl-fn-alerts", "cl-out", "cl-http-rule"}


async def test_the_flow_turns_alerts_and_readings_into_operator_messages(broker: int, nodered: str) -> None:
    deploy(nodered)
    key = Ed25519PrivateKey.generate()
    event = sign_event(Event.make("gw-1", "alert.raised", 1_700_000_000_000, severity="critical", device="cems-1",
                                  point="so2", body={"alert": "a" * 32, "rule": "so2-high", "version": 2,
                                                     "subject": "gw-1/cems-1/so2", "since": 1_699_999_999_000,
                                                     "values": {"so2": 250.0}, "evidence": []}), key)
    batch = sign_batch(Batch("gw-1", 1, 1_700_000_000_000, (
        Reading.make("cems-1", "so2", 1_700_000_000_000, 250.5, "mg/m³"),
        Reading.make("cems-1", "so2", 1_700_000_001_000, 120.0, "mg/m³"),
        Reading.make("cems-1", "o2", 1_700_000_000_000, 9.0, "%"))), key)
    got: dict[str, dict] = {}
    async with aiomqtt.Client("127.0.0.1", broker, identifier="nr-test-sub") as sub, \
            aiomqtt.Client("127.0.0.1", broker, identifier="nr-test-pub") as pub:
        await sub.subscribe("carbonlink/nodered/#", qos=1)

        async def publish_until_seen() -> None:
            # Node-RED's MQTT nodes connect a moment after the deploy: publish until the flow answers.
            while len(got) < 2:
                await pub.publish("cl/site-a/gw-1/events", event.to_bytes(), qos=1)
                await pub.publish("cl/site-a/gw-1/telemetry", batch.to_bytes(), qos=1)
                await asyncio.sleep(1)

        async def collect() -> None:
            async for msg in sub.messages:
                got.setdefault(str(msg.topic), json.loads(msg.payload))  # type: ignore[arg-type]
                if len(got) == 2:
                    return

        publisher = asyncio.create_task(publish_until_seen())
        try:
            await asyncio.wait_for(collect(), 60)
        finally:
            publisher.cancel()
    alert = got["carbonlink/nodered/alerts"]
    assert alert["text"] == "CRITICAL RAISED: so2-high on gw-1/cems-1/so2"
    assert (alert["rule"], alert["version"], alert["gateway"]) == ("so2-high", 2, "gw-1")
    reading = got["carbonlink/nodered/readings"]
    assert (reading["device"], reading["value"], reading["unit"]) == ("cems-1", 250.5, "mg/m³")
