"""`carbonlink rules validate|list|show|push` on rule files."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from carbonlink.cli import app
from tests.services import free_port

GOOD = """rules:
  - id: so2-high
    version: 2
    severity: critical
    text: >-
      SELECT avg(value) AS so2 FROM '+/so2' GROUP BY device, TUMBLING(1m)
      RAISE WHEN so2 > 200 mg/m3
    actions: [{type: webhook, url: "https://ops.example/hook", secret: ops-hook}]
  - id: so2-ref
    text: "SELECT convert(so2, 'mg/m3') * (21 % - 6 %) / (21 % - o2) AS c FROM '+/so2'"
    actions: [{type: derive, point: so2_o2ref6}]
"""
BAD = """rules:
  - id: broken
    text: |-
      SELECT value
      FROM '+/so2'
      WHERE value > 200 kPa AND value < 3 mg/m3
"""


def test_validate_list_show(tmp_path: Path) -> None:
    good = tmp_path / "rules.yaml"
    good.write_text(GOOD)
    runner = CliRunner()
    res = runner.invoke(app, ["rules", "validate", str(good), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["ok"] and data["rules"] == 2 and len(data["hash"]) == 64
    res = runner.invoke(app, ["rules", "list", str(good), "--json"])
    rows = json.loads(res.output)["rules"]
    assert [(r["id"], r["window"], r["alert"], r["actions"]) for r in rows] == [
        ("so2-high", "tumbling", True, "webhook"), ("so2-ref", "", False, "derive")]
    res = runner.invoke(app, ["rules", "show", str(good), "--id", "so2-ref", "--json"])
    info = json.loads(res.output)
    assert info["column_units"] == {"c": "mg/m³"} and info["derives"] == ["rule:so2-ref:so2_o2ref6"]
    res = runner.invoke(app, ["rules", "show", str(good), "--id", "nope"])
    assert res.exit_code == 2 and "rules list" in res.output


def test_validate_names_rule_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    res = CliRunner().invoke(app, ["rules", "validate", str(bad)])
    assert res.exit_code == 2
    assert "rule broken 3:33: incompatible units: kPa and mg/m³" in res.output
    res = CliRunner().invoke(app, ["rules", "validate", str(bad), "--json"])
    err = json.loads(res.output)["errors"][0]
    assert (err["rule"], err["line"], err["column"]) == ("broken", 3, 33)
    (tmp_path / "x.yaml").write_text("rules: [{id: UPPER, text: x}]")
    res = CliRunner().invoke(app, ["rules", "validate", str(tmp_path / "x.yaml")])
    assert res.exit_code == 2 and "rules.0.id" in res.output


def test_push_to_an_unreachable_api_says_what_to_check(tmp_path: Path) -> None:
    good = tmp_path / "rules.yaml"
    good.write_text(GOOD)
    res = CliRunner().invoke(app, ["rules", "push", str(good), "--gateway", "gw-1", "--api",
                                   f"http://127.0.0.1:{free_port()}", "--token", "t"])
    assert res.exit_code == 2 and "cannot reach" in res.output and "--api" in res.output
