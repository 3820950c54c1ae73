"""The scale-out overlay is valid on top of the production file (docker-compose itself checks it)."""

from __future__ import annotations

import os
import shutil
import subprocess

import yaml

from tests.services import ROOT, require

FILES = ("-f", str(ROOT / "compose" / "docker-compose.yml"), "-f", str(ROOT / "compose" / "docker-compose.scale.yml"))
SECRETS = ("POSTGRES_PASSWORD", "CARBONLINK_JWT_SECRET", "CARBONLINK_METRICS_TOKEN", "GRAFANA_DB_PASSWORD",
           "CARBONLINK_SECRET_KEY",
           "EMQX_COOKIE", "EMQX_DASHBOARD_PASSWORD")


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose") or ("/usr/bin/docker-compose" if os.path.exists("/usr/bin/docker-compose")
                                             else None)
    require(exe is not None, "docker-compose", "apt-get install -y docker-compose")
    return subprocess.run([str(exe), *FILES, "config"], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k not in SECRETS} | env)


def test_overlay_is_an_emqx_cluster_behind_one_address_with_four_workers() -> None:
    proc = _config(dict.fromkeys(SECRETS, "s3cret-for-the-test"))
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert {"emqx1", "emqx2", "mosquitto", "ingest", "api", "timescaledb"} <= set(services)
    for name in ("citus-coordinator", "citus-worker1", "citus-worker2"):  # started only with --profile citus
        assert services[name]["profiles"] == ["citus"]
    assert services["mosquitto"]["image"].startswith("haproxy")
    assert set(services["mosquitto"]["depends_on"]) == {"emqx1", "emqx2"}
    seeds = services["emqx1"]["environment"]["EMQX_CLUSTER__STATIC__SEEDS"]
    for node in ("emqx1", "emqx2"):
        env = services[node]["environment"]
        assert env["EMQX_NODE__NAME"].split("@")[1] in seeds
        assert env["EMQX_BROKER__SHARED_SUBSCRIPTION_STRATEGY"] == "hash_clientid"
    assert services["ingest"]["deploy"]["replicas"] == 4
    assert "--shared-group ingest" in " ".join(services["ingest"]["command"])
    cfg = (ROOT / "compose" / "haproxy" / "haproxy.cfg").read_text()
    assert "server emqx1 emqx1:1883" in cfg and "server emqx2 emqx2:1883" in cfg


def test_overlay_refuses_to_start_without_the_cluster_secret() -> None:
    env = dict.fromkeys(SECRETS, "s3cret-for-the-test")
    del env["EMQX_COOKIE"]
    proc = _config(env)
    assert proc.returncode != 0 and "set EMQX_COOKIE" in proc.stderr
