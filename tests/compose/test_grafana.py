"""Grafana's provisioned dashboards: well-formed JSON, one data source, and every panel's SQL runs on a
migrated CarbonLink PostgreSQL database (Grafana's macros replaced as Grafana would)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cloud.store.conftest import throwaway_store

GRAFANA = Path(__file__).resolve().parents[2] / "compose" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def _datasource_uid() -> str:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "carbonlink.yml").read_text())
    (ds,) = doc["datasources"]
    assert ds["type"] == "grafana-postgresql-datasource" and "password" not in ds  # secrets only from the env
    return str(ds["uid"])


def _panels() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, panel) for p in DASHBOARDS for panel in json.loads(p.read_text())["panels"]]


def test_dashboards_are_well_formed() -> None:
    assert len(DASHBOARDS) >= 2
    uid = _datasource_uid()
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "carbonlink.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    seen = set()
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        assert d["uid"] not in seen and d["title"] and d["schemaVersion"] >= 36
        seen.add(d["uid"])
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))
        for p in d["panels"]:
            assert p["datasource"]["uid"] == uid and set(p["gridPos"]) == {"x", "y", "w", "h"}
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
            for t in p["targets"]:
                assert t["datasource"]["uid"] == uid and t["rawSql"].strip()


def _grafana_sql(sql: str) -> str:
    """What Grafana sends for a day's range and tenant 'acme'."""
    sql = sql.replace("$__unixEpochFrom()", "1767225600").replace("$__unixEpochTo()", "1767312000")
    sql = sql.replace("$tenant", "acme")
    assert not re.search(r"\$\w", sql), sql
    return sql


@pytest.mark.parametrize(("dashboard", "panel"), _panels(), ids=lambda x: x if isinstance(x, str) else x["title"])
async def test_panel_sql_runs_on_postgresql(dashboard: str, panel: dict[str, Any], tmp_path: Path) -> None:
    async with throwaway_store("postgres", tmp_path) as store:
        for t in panel["targets"]:
            await store.db.fetch(_grafana_sql(t["rawSql"]))
