"""The production compose file is valid (checked by docker-compose itself; no Docker engine here)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from carbonlink.cloud.provisioning import INGEST_USER, mosquitto_password_hash
from carbonlink.commands.faults.lab import stop_process
from carbonlink.kernel.mqtturl import MqttUrl
from carbonlink.kernel.ports import port_open
from tests.services import ROOT, free_port, require
from tests.tlsfiles import make_ca

COMPOSE = ROOT / "compose" / "docker-compose.yml"
SECRETS = ("POSTGRES_PASSWORD", "CARBONLINK_JWT_SECRET", "CARBONLINK_METRICS_TOKEN", "GRAFANA_DB_PASSWORD",
           "CARBONLINK_SECRET_KEY")


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    require(exe is not None, "docker-compose", "apt-get install -y docker-compose")
    return subprocess.run([str(exe), "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k not in SECRETS} | env)


def test_compose_file_is_valid_and_scales_ingest() -> None:
    proc = _config(dict.fromkeys(SECRETS, "s3cret-for-the-test"))
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    services = cfg["services"]
    assert {"mosquitto", "timescaledb", "ingest", "api", "migrate", "node-red"} <= set(services)
    assert services["ingest"]["deploy"]["replicas"] == 2
    assert "--shared-group" in " ".join(services["ingest"]["command"])
    assert services["api"]["environment"]["CARBONLINK_ENVIRONMENT"] == "production"


def test_compose_refuses_to_start_without_secrets() -> None:
    proc = _config({})
    assert proc.returncode != 0 and "set POSTGRES_PASSWORD" in proc.stderr


def _stack() -> dict[str, Any]:
    proc = _config(dict.fromkeys(SECRETS, "s3cret-for-the-test"))
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_the_cloud_uses_its_own_credentials_and_tls() -> None:
    cfg = _stack()
    services = cfg["services"]
    for name in ("ingest", "api"):
        svc = services[name]
        env = svc["environment"]
        assert '--mqtt "$$CARBONLINK_MQTT_URL"' in " ".join(svc["command"])
        url = MqttUrl.parse(env["CARBONLINK_MQTT_URL"])
        assert url.tls and url.cafile == Path("/run/secrets/mqtt_ca") and url.host == "mosquitto"
        assert env["CARBONLINK_MQTT_USERNAME"] == INGEST_USER
        assert env["CARBONLINK_MQTT_PASSWORD_FILE"] == "/run/secrets/mqtt_ingest_password"
        assert "CARBONLINK_MQTT_PASSWORD" not in env and url.password is None  # a secret file, never a variable
        assert {s["source"] for s in svc["secrets"]} == {"mqtt_ingest_password", "mqtt_ca"}
    assert set(cfg["secrets"]) == {"mqtt_ingest_password", "mqtt_ca"}
    published = [int(p["published"]) for p in services["mosquitto"]["ports"]]
    assert published == [8883]  # the plain listener stays inside the stack


def test_the_stacks_mosquitto_conf_works_with_generated_files(tmp_path: Path) -> None:
    """compose/mosquitto/mosquitto.conf, paths moved to a temp folder, on a real Mosquitto: no listener lets
    anyone in without a password; the cloud's account works over TLS with the stack's own URL and password
    file; a gateway on its listener cannot take over the cloud's session with the cloud's client id."""
    mosquitto = shutil.which("mosquitto")
    require(mosquitto is not None, "the mosquitto binary", "apt-get install -y mosquitto")
    assert mosquitto is not None
    root = tmp_path / "m"
    pki = make_ca(root / "certs")
    (root / "auth").mkdir()
    (root / "data").mkdir()
    ingest_pw, gw_pw = "ingest-" + "x" * 20, "gw-" + "y" * 20
    (root / "auth" / "passwd").write_text(f"{INGEST_USER}:{mosquitto_password_hash(ingest_pw, iterations=10)}\n"
                                          f"gw-1:{mosquitto_password_hash(gw_pw, iterations=10)}\n")
    (root / "auth" / "acl").write_text(f"user {INGEST_USER}\ntopic readwrite cl/#\n\n"
                                       "user gw-1\ntopic write cl/s/gw-1/telemetry\n")
    gw_port, cloud_port, plain_port = free_port(), free_port(), free_port()
    conf = (ROOT / "compose" / "mosquitto" / "mosquitto.conf").read_text()
    for needed in ("allow_anonymous false", "listener 8883", "listener 8884", "listener 1883", "password_file",
                   "use_username_as_clientid true"):
        assert needed in conf, needed
    conf = (conf.replace("/mosquitto/", f"{root}/").replace("listener 8883", f"listener {gw_port} 127.0.0.1")
            .replace("listener 8884", f"listener {cloud_port} 127.0.0.1")
            .replace("listener 1883", f"listener {plain_port} 127.0.0.1"))
    if os.geteuid() == 0:
        conf = "user root\n" + conf  # the temp folder is private to this user
    (root / "mosquitto.conf").write_text(conf)
    secret = root / "ingest.password"
    secret.write_text(ingest_pw + "\n")
    stack_url = _stack()["services"]["ingest"]["environment"]["CARBONLINK_MQTT_URL"]
    assert "mosquitto:8884" in stack_url
    url = MqttUrl.from_env(stack_url.replace("mosquitto:8884", f"127.0.0.1:{cloud_port}")
                           .replace("/run/secrets/mqtt_ca", str(pki.ca)),
                           {"CARBONLINK_MQTT_USERNAME": INGEST_USER, "CARBONLINK_MQTT_PASSWORD_FILE": str(secret)})
    gateway = MqttUrl.parse(f"mqtts://127.0.0.1:{gw_port}?cafile={pki.ca}").client_kwargs() | {
        "username": "gw-1", "password": gw_pw}
    proc = subprocess.Popen([mosquitto, "-c", str(root / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if all(port_open(p, timeout=0.1) for p in (gw_port, cloud_port, plain_port)) \
                    or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""

        async def check() -> None:
            for port in (gw_port, cloud_port, plain_port):  # no listener lets anyone in without a password
                kw = url.client_kwargs() | {"port": port, "username": None, "password": None}
                if port == plain_port:
                    kw["tls_context"] = None
                with pytest.raises(aiomqtt.MqttError):
                    async with aiomqtt.Client(**kw, identifier="anon"):
                        pass
            async with aiomqtt.Client(**url.client_kwargs(), identifier="carbonlink-ingest-w1") as cloud:
                await cloud.subscribe("cl/#", qos=1)
                # A gateway claiming the cloud's client id gets its own instead (its user name)...
                async with aiomqtt.Client(**gateway, identifier="carbonlink-ingest-w1") as gw:
                    await gw.publish("cl/s/gw-1/telemetry", b"batch", qos=1)
                    # ...so the cloud is still connected and receives the gateway's message.
                    async with asyncio.timeout(5):
                        async for m in cloud.messages:
                            assert (str(m.topic), m.payload) == ("cl/s/gw-1/telemetry", b"batch")
                            break
                    await cloud.publish("cl/s/gw-1/ack", b"{}", qos=1, timeout=5)

        asyncio.run(check())
    finally:
        stop_process(proc, 5)
