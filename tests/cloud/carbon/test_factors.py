"""Factor tables: versioned, sourced, checked at load; lookups that find nothing say what to do."""

from __future__ import annotations

import shutil
from decimal import Decimal as D
from pathlib import Path

import pytest

from carbonlink.cloud.carbon.errors import CarbonInputError
from carbonlink.cloud.carbon.factors import DEFAULT_DIR, TABLES, FactorSet, FactorTableError


def test_default_tables_load_with_versions_sources_and_the_issue_defaults() -> None:
    fs = FactorSet.default()
    assert set(fs.versions) == set(TABLES)
    assert fs.grid_factor(2022).value == D("0.5366") and fs.grid_factor(2023).value == D("0.5306")
    assert fs.grid_factor(2023).status == "verified" and "2023" in fs.grid_factor(2023).source
    assert fs.o2_ref("coal_boiler").value == 6 and fs.o2_ref("gas_turbine").value == 15
    assert fs.tree_species("generic_ipcc").carbon_fraction.value == D("0.47")
    every = [*fs.grid.values(), *fs.reference_o2.values(), *fs.limits.values()]
    every += [r for fu in fs.fuels.values() for r in (fu.ncv, fu.cc, fu.oxidation)]
    assert all(r.source and r.status in ("verified", "unverified") for r in every)


def test_chave_species_get_their_coefficients_from_wood_density() -> None:
    sp = FactorSet.default().tree_species("pinus_massoniana")
    assert sp.form == "D2H" and sp.needs_height and sp.b == D("0.976")
    assert float(sp.a) == pytest.approx(0.0673 * 0.380**0.976, rel=1e-12)
    assert FactorSet.default().tree_species("brown1997_moist").form == "D"


@pytest.mark.parametrize("call, names, fix", [
    (lambda fs: fs.grid_factor(2024), "2024", "add a [[factor]]"),
    (lambda fs: fs.grid_factor(2023, grid="EU"), "EU", "grid.toml"),
    (lambda fs: fs.tree_species("baobab"), "baobab", "species.toml"),
    (lambda fs: fs.fuel("peat"), "peat", "fuels.toml"),
    (lambda fs: fs.o2_ref("volcano"), "volcano", "o2_ref_pct"),
])
def test_lookups_that_find_nothing_fail_loudly(call, names: str, fix: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CarbonInputError) as err:
        call(FactorSet.default())
    assert names in err.value.input and fix in err.value.fix


def copy_tables(tmp_path: Path) -> Path:
    for t in TABLES:
        shutil.copy(DEFAULT_DIR / f"{t}.toml", tmp_path / f"{t}.toml")
    return tmp_path


@pytest.mark.parametrize("table, old, new, says", [
    ("grid", 'unit = "t CO2/MWh"', 'unit = "kg CO2/kWh"', "grid.toml [[factor]] #1 key 'unit'"),
    ("grid", "value = 0.5366", "value = 5366", "key 'value'"),
    ("grid", "year = 2023\nkind = \"average\"", "year = 2022\nkind = \"average\"", "appears twice"),
    ("grid", 'version = "2025.1"', "", "no 'version'"),
    ("fuels", "oxidation = 0.98", "oxidation = 98", "key 'oxidation'"),
    ("fuels", 'unit = "1e4 Nm3"', 'unit = "m3"', "key 'unit'"),
    ("species", 'form = "D"', 'form = "exp"', "key 'form'"),
    ("species", "carbon_fraction = 0.47", "carbon_fraction = \"high\"", "not a number"),
    ("limits", 'unit = "mg/m3"', 'unit = "ppm"', "key 'unit'"),
    ("reference_o2", 'table = "reference_o2"', 'table = "o2"', "'table' must be"),
    ("reference_o2", "o2_ref_pct = 6", "o2_ref_pct = 6 6", "not valid TOML"),
])
def test_a_bad_table_names_file_entry_and_key(tmp_path: Path, table: str, old: str, new: str, says: str) -> None:
    folder = copy_tables(tmp_path)
    path = folder / f"{table}.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(FactorTableError) as err:
        FactorSet.load(folder)
    assert says in str(err.value) and "Fix:" in str(err.value)


def test_a_folder_of_ones_own_can_add_a_year(tmp_path: Path) -> None:
    folder = copy_tables(tmp_path)
    with (folder / "grid.toml").open("a") as fh:
        fh.write('\n[[factor]]\ngrid = "CN"\nyear = 2024\nkind = "average"\nvalue = 0.5\nunit = "t CO2/MWh"\n'
                 'source = "own estimate for the test"\nstatus = "unverified"\n')
    fs = FactorSet.load(folder)
    assert fs.grid_factor(2024).value == D("0.5") and fs.grid_factor(2024).status == "unverified"
    (folder / "limits.toml").unlink()
    with pytest.raises(FactorTableError, match=r"limits\.toml"):
        FactorSet.load(folder)


def test_a_later_year_may_use_the_newest_factor_only_as_a_marked_proxy() -> None:
    fs = FactorSet.default()
    proxy = fs.grid_factor(2025, latest_as_proxy=True)
    assert proxy.value == D("0.5306") and proxy.status == "unverified" and "proxy for 2025" in proxy.key
    assert fs.grid_factor(2023, latest_as_proxy=True) == fs.grid_factor(2023)
    with pytest.raises(CarbonInputError):
        fs.grid_factor(2019, latest_as_proxy=True)  # an earlier year is never guessed
