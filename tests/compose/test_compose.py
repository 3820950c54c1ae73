"""The production compose file is valid (checked by docker-compose itself; no Docker engine here)."""

from __future__ import annotations

import os
import shutil
import subprocess

import yaml

from tests.services import ROOT, require

COMPOSE = ROOT / "compose" / "docker-compose.yml"
SECRETS = ("POSTGRES_PASSWORD", "CARBONLINK_JWT_SECRET", "CARBONLINK_METRICS_TOKEN", "GRAFANA_DB_PASSWORD")


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
