"""Sensor protocols under MicroPython, against the fakes that speak them: good frames and bad ones."""

from __future__ import annotations

import json
from pathlib import Path

from carbonlink.commands.firmwarelab.node import SIM, bthome_advert, make_node, run_node

from .conftest import assert_all_ok, run_mp


def test_modbus_bthome_soil_watchdog(tmp_path: Path) -> None:
    sim = dict(SIM)
    sim["modbus"] = {**SIM["modbus"], "2": {"0": 1}, "9": {"0": 1}}
    sim["modbus_bad_crc"] = [2]
    sim["modbus_silent"] = [9]
    (tmp_path / "sim.json").write_text(json.dumps(sim))
    res = run_mp("t_sensors.py", bthome_advert(2150, 5055, 97), env={"CL_SIM": str(tmp_path / "sim.json")})
    assert_all_ok(res)
    assert len(res.lines("ok ")) >= 25


def test_config_validation_names_the_bad_key(tmp_path: Path) -> None:
    make_node(tmp_path, 1883)
    assert_all_ok(run_mp("t_config.py", str(tmp_path / "config.json")))


async def test_a_failing_sensor_is_counted_and_the_rest_still_report(tmp_path: Path) -> None:
    sim = {k: v for k, v in SIM.items() if k != "i2c"}  # the I2C probe does not answer
    make_node(tmp_path, 1883, uplink_every=288, _sim=sim)
    out, stats = await run_node(tmp_path, 2)
    assert out.count("sensor soil2") == 2 and stats["pending"] == 2
    raw = b"".join(p.read_bytes() for p in sorted((tmp_path / "buf").glob("*.seg")))
    assert raw.count(b'"device":"soil-2"') == 0 and raw.count(b'"device":"flow-1"') == 6
