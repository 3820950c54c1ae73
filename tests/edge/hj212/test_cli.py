"""`carbonlink hj212 decode/encode` as installers use them."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from carbonlink.codecs.hj212.codec import decode_frame
from carbonlink.commands.hj212 import app

runner = CliRunner()
STD = "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80"


def test_decode_json_of_the_standard_example() -> None:
    res = runner.invoke(app, ["decode", STD, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] and doc["crc"] == {"given": "1C80", "computed": "1C80", "ok": True} and doc["length"] == 101
    assert doc["header"]["MN"] == "010000A8900016F000169DC0" and doc["cp"] == [{"RtdInterval": "30"}]
    assert doc["flag"] == {"value": 5, "version": 1, "reply_requested": True, "split": False}
    assert "readings" not in doc  # 1062 is a command, not data


def test_decode_accepts_a_literal_crlf_and_shows_readings() -> None:
    res = runner.invoke(app, ["encode", "--cn", "2051", "--mn", "CEMS01", "--pw", "123456", "--qn",
                              "20240315103000123", "--datatime", "20240315103000", "--value", "a21026-Avg=12.3",
                              "--value", "a21026-Flag=C", "--value", "a99999-Avg=1"])
    assert res.exit_code == 0, res.output
    packet = res.stdout.strip()
    assert decode_frame(packet.encode() + b"\r\n").cn == "2051"
    res = runner.invoke(app, ["decode", packet + "\\r\\n", "--json", "--device", "stack-1"])
    doc = json.loads(res.stdout)
    assert doc["readings"] == [{"device": "stack-1", "point": "so2_avg_1m", "quality": "C",
                                "ts": "2024-03-15T02:30:00.000Z", "unit": "mg/m³", "value": 12.3}]
    assert doc["skipped"][0]["field"] == "a99999-Avg"
    res = runner.invoke(app, ["decode", packet])
    assert res.exit_code == 0 and "so2_avg_1m" in res.stdout and "left out" in res.stdout


def test_decode_bad_crc_says_what_to_check() -> None:
    res = runner.invoke(app, ["decode", STD.replace("1C80", "1C81"), "--json"])
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["reason"] == "crc" and doc["crc"]["computed"] == "1C80" and "not Modbus" in doc["hint"]
    assert doc["header"]["CN"] == "1062"
    res = runner.invoke(app, ["decode", STD[:40]])
    assert res.exit_code == 1 and "truncated" in res.stderr and "hint" in res.stderr


def test_encode_json_and_errors() -> None:
    res = runner.invoke(app, ["encode", "--cn", "2011", "--mn", "M1", "--pw", "1", "--value", "a21026-Rtd=1",
                              "--no-reply", "--json"])
    doc = json.loads(res.stdout)
    p = decode_frame(doc["packet"].encode())
    assert p.flag == 4 and p.cp_fields()["a21026-Rtd"] == "1" and "DataTime" in p.cp_fields()
    res = runner.invoke(app, ["encode", "--cn", "2011", "--mn", "M1", "--pw", "1234567"])
    assert res.exit_code == 1 and "PW" in res.stderr
    res = runner.invoke(app, ["encode", "--cn", "2011", "--mn", "M1", "--pw", "1", "--value", "oops"])
    assert res.exit_code == 1 and "KEY=VALUE" in res.stderr
    many = [a for i in range(100) for a in ("--value", f"a2{i:04d}-Rtd=123.456")]
    res = runner.invoke(app, ["encode", "--cn", "2011", "--mn", "M1", "--pw", "1", *many])
    assert res.exit_code == 1 and "split" in res.stderr
