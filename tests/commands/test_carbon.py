"""`carbonlink carbon`: the auditor's calculator (no cloud extra needed), activity checks, reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carbonlink.cli import app
from tests.services import ROOT

runner = CliRunner()
# The cloud extra's libraries and the PDF library: none may be needed for the calculator.
CLOUD_ONLY = ("fastapi", "uvicorn", "aiosqlite", "asyncpg", "fpdf", "msgspec", "pydantic_settings", "amqtt")


def test_formula_list_names_every_formula_with_keys_unit_and_standard() -> None:
    res = runner.invoke(app, ["carbon", "formula", "--list", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert {"std_dry_flow", "o2_correction", "mass_rate", "co2_cems", "co2_fuel", "co2_part75", "grid_avoided",
            "tree_co2"} <= set(rows)
    assert all(r["standard"] and r["unit"] and r["keys"] for r in rows.values())
    table = runner.invoke(app, ["carbon", "formula", "--list"])
    assert table.exit_code == 0 and "co2_part75" in table.output


def test_formula_prints_result_unit_and_standard() -> None:
    res = runner.invoke(app, ["carbon", "formula", "co2_fuel", "fuel_t=100", "ncv_gj_t=20.908",
                              "cc_tc_gj=0.02618", "oxidation=0.98", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    # 100 t × 20.908 GJ/t × 0.02618 t C/GJ × 0.98 × 44/12
    assert out["result"] == "196.688804" and out["unit"] == "t" and "IPCC 2006" in out["standard"]
    text = runner.invoke(app, ["carbon", "formula", "grid_avoided", "mwh=10", "year=2023"])
    assert text.exit_code == 0 and "5.306000 t" in text.output and "MEE" in text.output


@pytest.mark.parametrize("args, says", [
    (["grid_avoided", "mwh=10", "year=2030"], "add a [[factor]]"),
    (["co2_fuel", "fuel_t=1", "ncv_gj_t=20", "cc_tc_gj=0.03", "oxidation=98"], "98 % is 0.98"),
    (["mass_rate", "conc_mg_m3"], "key=value"),
    (["nope"], "use one of"),
])
def test_bad_formula_input_exits_2_with_the_fix(args: list[str], says: str) -> None:
    res = runner.invoke(app, ["carbon", "formula", *args])
    assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output


def test_the_calculator_runs_without_the_cloud_extra() -> None:
    code = ("import sys, json\n"
            f"for m in {CLOUD_ONLY!r}: sys.modules[m] = None\n"
            "sys.argv = ['carbonlink', 'carbon', 'formula', 'mass_rate', 'conc_mg_m3=35', 'q_std_dry_m3h=320000',"
            " '--json']\n"
            "from carbonlink.cli import main\n"
            "try: main()\n"
            "except SystemExit as e: assert not e.code, e.code\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == "11.200000"


def test_formulas_import_only_the_standard_library() -> None:
    code = ("import sys; before = set(sys.modules)\n"
            "import carbonlink.cloud.carbon.calculator, carbonlink.cloud.carbon.factors\n"
            "new = sorted(m.split('.')[0] for m in set(sys.modules) - before)\n"
            "print(' '.join(sorted(set(new) - set(sys.stdlib_module_names))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["carbonlink"]


def test_activity_check_lists_row_errors_and_exits_1(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("date,site,source,fuel,quantity,unit\n2024-03-01,plant-a,stack-1,cn_raw_coal,10,t\n")
    res = runner.invoke(app, ["carbon", "activity-check", str(good), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["rows"][0]["co2_t"] == "19.668880"
    bad = tmp_path / "bad.csv"
    bad.write_text("date,site,source,fuel,quantity,unit\n2024-13-01,plant-a,stack-1,peat,-1,t\n")
    res = runner.invoke(app, ["carbon", "activity-check", str(bad)])
    assert res.exit_code == 1 and "row 2" in res.output and "peat" in res.output


def test_report_renders_an_accounts_file(tmp_path: Path) -> None:
    from carbonlink.cloud.carbon.accounts import accounts_to_json
    from carbonlink.cloud.carbon.build import Organisation, build_accounts

    acc = build_accounts(Organisation("acme", "Acme", None), kind="annual", year=2023,
                         as_of="2024-01-01T00:00:00+08:00")
    src = tmp_path / "acc.json"
    src.write_bytes(accounts_to_json(acc))
    res = runner.invoke(app, ["carbon", "report", "--accounts", str(src), "--format", "csv", "--lang", "en"])
    assert res.exit_code == 0 and res.output.startswith("Category,Period,Source,Item,Value,Unit")
    assert "2023-12" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"organisation": "x"}')
    res = runner.invoke(app, ["carbon", "report", "--accounts", str(bad), "--format", "json"])
    assert res.exit_code == 2 and "accounts JSON" in res.output
    res = runner.invoke(app, ["carbon", "report", "--accounts", str(src), "--format", "pdf"])
    assert res.exit_code == 2 and "--out" in res.output


def test_accounts_from_a_store_register_account_list_and_allowance(tmp_path: Path) -> None:
    import asyncio

    from carbonlink.cloud.store import open_store
    from carbonlink.simulators.cems import CemsStack
    from tests.cloud.carbon.simdata import MARCH, stack_hours
    from tests.cloud.carbon.sqldata import add_series, rollup_rows, write_rollups

    db = f"sqlite:///{tmp_path / 'c.sqlite'}"

    async def seed() -> None:
        store = open_store(db)
        await store.open()
        try:
            series = await add_series(store.db, "gw-1", "cems-1")
            hours = stack_hours(CemsStack(seed=7, clock=lambda: MARCH), MARCH, 48, step_s=900, fuel=False)
            await write_rollups(store.db, rollup_rows(series, hours))
        finally:
            await store.close()

    asyncio.run(seed())
    res = runner.invoke(app, ["carbon", "accounts", "--db", db, "--tenant", "acme", "--start", str(MARCH * 1000),
                              "--end", str((MARCH + 86400) * 1000)])
    assert res.exit_code == 0  # nothing registered yet: an empty table
    res = runner.invoke(app, ["carbon", "account", "--db", db, "--tenant", "acme", "--start", str(MARCH * 1000),
                              "--end", str((MARCH + 2 * 86400) * 1000)])
    assert res.exit_code == 2 and "register-stack" in res.output
    res = runner.invoke(app, ["carbon", "register-stack", "--db", db, "--tenant", "acme", "--site", "plant-a",
                              "--gateway", "gw-1", "--device", "cems-1", "--source-id", "stack-1",
                              "--pressure", "static"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["carbon", "account", "--db", db, "--tenant", "acme", "--start", str(MARCH * 1000),
                              "--end", str((MARCH + 2 * 86400) * 1000), "--json"])
    assert res.exit_code == 0 and json.loads(res.output) == {"valid": 48}
    res = runner.invoke(app, ["carbon", "accounts", "--db", db, "--tenant", "acme", "--start", str(MARCH * 1000),
                              "--end", str((MARCH + 2 * 86400) * 1000), "--granularity", "day", "--json"])
    days = json.loads(res.output)
    assert [d["period"] for d in days] == ["2023-03-01", "2023-03-02"] and float(days[0]["scope1_t"]) > 1000
    assert runner.invoke(app, ["carbon", "sources", "--db", db, "--tenant", "acme"]).exit_code == 0
    res = runner.invoke(app, ["carbon", "allowance", "--db", db, "--tenant", "acme", "--year", "2023", "--t", "-5"])
    assert res.exit_code == 2 and "allowance" in res.output
    res = runner.invoke(app, ["carbon", "register-stack", "--db", db, "--tenant", "acme", "--site", "plant-a",
                              "--gateway", "gw-1", "--device", "nope", "--source-id", "stack-2"])
    assert res.exit_code == 2 and "no series gw-1/nope" in res.output
