"""A bad gateway.yaml stops start-up with a message naming the file, the key and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from carbonlink.edge.config import load_gateway_config
from carbonlink.kernel.configfile import ConfigError

GOOD = """
gateway: {id: gw-1, site: plant-a, key_file: gw.key}
devices:
  - {id: cems-1, driver: modbus_tcp, host: 127.0.0.1, port: 5020, pointmap: cems}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gateway.yaml"
    p.write_text(text)
    return p


def test_good_config_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    cfg = load_gateway_config(write(tmp_path, GOOD))
    assert cfg.gateway.key_file == tmp_path / "gw.key"
    assert cfg.devices[0].resolved_points()[0].name == "so2"


@pytest.mark.parametrize("text, key, fix", [
    (GOOD.replace("site: plant-a", "site: plant-a, colour: red"), "gateway.colour", "remove it or check"),
    (GOOD.replace("port: 5020", "port: twenty"), "devices.0", "whole number"),
    (GOOD.replace("port: 5020", "port: 5020, poll_interval_s: -1"), "poll_interval_s", "larger value"),
    (GOOD.replace("driver: modbus_tcp", "driver: carrier_pigeon"), "devices.0", "allowed values"),
    (GOOD.replace("pointmap: cems", "pointmap: nope"), "devices.0", "unknown point map"),
    (GOOD + "batch: {max_readings: 0}\n", "batch.max_readings", "larger value"),
])
def test_bad_config_names_file_key_and_fix(tmp_path: Path, text: str, key: str, fix: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path)
    msg = str(info.value)
    assert str(path) in msg
    assert key in msg
    assert fix in msg


def test_duplicate_device_ids_refused(tmp_path: Path) -> None:
    text = GOOD + "  - {id: cems-1, driver: modbus_tcp, host: 127.0.0.1, port: 5021, pointmap: inverter}\n"
    with pytest.raises(ConfigError, match="appears twice"):
        load_gateway_config(write(tmp_path, text))


def test_yaml_syntax_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_gateway_config(write(tmp_path, "gateway: [unclosed"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_gateway_config(tmp_path / "missing.yaml")


def test_cli_exits_2_with_the_message(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("site: plant-a", "site: plant-a, colour: red"))
    proc = subprocess.run([sys.executable, "-m", "carbonlink.cli", "edge", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "gateway.colour" in proc.stderr and str(path) in proc.stderr.replace("\n", "")
