"""The installer's path through the CLI against a running cloud: token → claim → a config that validates."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from carbonlink.cloud.broker import EmbeddedBroker
from carbonlink.cloud.service import running_cloud
from carbonlink.edge.config import load_gateway_config
from tests.services import free_port

CLI = [sys.executable, "-m", "carbonlink.cli", "provision"]


async def run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*CLI, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_token_claim_and_broker_files(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    port = free_port()
    async with EmbeddedBroker() as broker, running_cloud(db, broker.url, http_port=port):
        api = f"http://127.0.0.1:{port}"
        rc, out, err = await run("token", "--tenant", "acme", "--site", "plant-a", "--db", db, "--json")
        assert rc == 0, err
        token = json.loads(out)["token"]
        gw_dir = tmp_path / "gw"
        gw_dir.mkdir()
        rc, out, err = await run("claim", "--api", api, "--token", token, "--gateway", "gw-a1",
                                 "--device", "cems-1=cems@10.0.0.20:502", "--device", "inv-1=inverter@10.0.0.21",
                                 "--out", str(gw_dir), "--json")
        assert rc == 0, err
        summary = json.loads(out)
        assert summary["site"] == "plant-a" and summary["devices"] == 2
        cfg = load_gateway_config(gw_dir / "gateway.yaml")
        assert cfg.gateway.id == "gw-a1" and cfg.mqtt.username == "gw-a1" and cfg.mqtt.password
        assert [d.id for d in cfg.devices] == ["cems-1", "inv-1"] and cfg.devices[1].port == 502
        assert (gw_dir / "gateway.key").stat().st_mode & 0o077 == 0  # private key readable by owner only
        # The same token again: refused with a reason, and no config is written.
        other = tmp_path / "gw2"
        other.mkdir()
        rc, _out, err = await run("claim", "--api", api, "--token", token, "--gateway", "gw-a2",
                                  "--out", str(other), "--json")
        assert rc == 2 and "already used" in err and not (other / "gateway.yaml").exists()
        rc, _out, err = await run("claim", "--api", api, "--token", "x", "--gateway", "g",
                                  "--device", "bad-spec", "--out", str(other))
        assert rc == 2 and "ID=TEMPLATE@HOST" in err
        rc, out, err = await run("broker-files", "--db", db, "--out", str(tmp_path / "auth"), "--json")
        assert rc == 0, err
        acl = (tmp_path / "auth" / "acl").read_text()
        assert "user gw-a1" in acl and "topic write cl/plant-a/gw-a1/telemetry" in acl
        assert json.loads(out)["accounts"] == 2  # ingest + gw-a1
