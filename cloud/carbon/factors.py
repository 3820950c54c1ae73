"""Versioned factor tables: grid emission factors, fuel properties, tree species, reference O2, limits.

Tables are TOML data files (``cloud/carbon/factors/*.toml``, or a folder of your own with the same
files), each with a ``version`` and every entry with its ``source`` and a ``status`` (``verified``: a
source in the project's domain notes confirms it; ``unverified``: a default to check before a compliance
report; reports mark such factors). Numbers are read as Decimal straight from the text.

Everything is checked at load: required keys, types, ranges, units, duplicates. A bad table stops with
the file, the entry and the key; a lookup that finds nothing (a year the grid table lacks, an unknown
species or fuel) raises ``CarbonInputError`` naming the input and the fix, never a silent default.
Only the standard library is imported.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from functools import cache
from pathlib import Path
from typing import Any

from .errors import CarbonInputError
from .formulas import CONTEXT

DEFAULT_DIR = Path(__file__).with_name("factors")
TABLES = ("grid", "fuels", "species", "reference_o2", "limits")
STATUSES = ("verified", "unverified")
FUEL_UNITS = ("t", "1e4 Nm3")  # what the NCV is per
SPECIES_FORMS = ("D", "D2H", "chave2014")
CHAVE_A, CHAVE_B = Decimal("0.0673"), Decimal("0.976")  # Chave et al. 2014 Eq. 4


class FactorTableError(ValueError):
    """A factor table that cannot be used: names the file, the entry and the key."""


@dataclass(frozen=True)
class FactorRef:
    """One factor as used in a figure: enough to find it again and to judge it."""

    table: str
    version: str
    key: str
    value: Decimal
    unit: str
    source: str
    status: str

    def as_dict(self) -> dict[str, str]:
        return {"table": self.table, "version": self.version, "key": self.key, "value": str(self.value),
                "unit": self.unit, "source": self.source, "status": self.status}


@dataclass(frozen=True)
class Fuel:
    code: str
    name_en: str
    name_zh: str
    unit: str
    ncv: FactorRef  # GJ per unit
    cc: FactorRef  # t C/GJ
    oxidation: FactorRef  # fraction


@dataclass(frozen=True)
class Species:
    code: str
    name_en: str
    name_zh: str
    form: str  # "D" or "D2H" after loading (chave2014 becomes D2H with a and b derived)
    a: Decimal
    b: Decimal
    root_shoot: FactorRef
    carbon_fraction: FactorRef
    rel_uncertainty: Decimal
    max_radial_growth_um_day: Decimal
    equation: FactorRef  # value = a; key names the form and b; source and status of the equation

    @property
    def needs_height(self) -> bool:
        return self.form == "D2H"


@dataclass(frozen=True)
class Table:
    name: str
    version: str
    path: str
    entries: list[dict[str, Any]] = field(repr=False)


class _Reader:
    """Checks one entry of one file; every error names file, entry and key."""

    def __init__(self, path: Path, kind: str, index: int, entry: dict[str, Any]) -> None:
        self.where = f"{path.name} [[{kind}]] #{index + 1}"
        self.entry = entry

    def fail(self, key: str, problem: str, fix: str) -> FactorTableError:
        return FactorTableError(f"{self.where} key '{key}': {problem}. Fix: {fix}")

    def text(self, key: str, choices: tuple[str, ...] | None = None) -> str:
        v = self.entry.get(key)
        if not isinstance(v, str) or not v.strip():
            raise self.fail(key, "missing or not a text", f"add {key} = \"...\"")
        if choices is not None and v not in choices:
            raise self.fail(key, f"{v!r} is not one of {', '.join(choices)}", f"use one of {', '.join(choices)}")
        return v

    def number(self, key: str, lo: Decimal | int, hi: Decimal | int, *, lo_open: bool = False) -> Decimal:
        v = self.entry.get(key)
        if isinstance(v, bool) or not isinstance(v, Decimal | int):
            raise self.fail(key, "missing or not a number", f"add {key} = <number>")
        d = Decimal(v)
        if not d.is_finite() or d < lo or d > hi or (lo_open and d == lo):
            raise self.fail(key, f"{d} is outside {'(' if lo_open else '['}{lo}, {hi}]",
                            f"give {key} within that range, in the unit the table's header names")
        return d

    def integer(self, key: str, lo: int, hi: int) -> int:
        v = self.entry.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(key, f"{v!r} is not a whole number in {lo}-{hi}", f"give {key} = <{lo}..{hi}>")
        return v


def _load_file(path: Path, name: str, kind: str) -> Table:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except FileNotFoundError:
        raise FactorTableError(f"{path}: factor table '{name}' not found. Fix: add {path.name} to the factor "
                               f"folder (copy it from {DEFAULT_DIR})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FactorTableError(f"{path}: not valid TOML ({exc}). Fix: correct the file") from None
    if raw.get("table") != name:
        raise FactorTableError(f"{path}: 'table' must be {name!r}, got {raw.get('table')!r}. Fix: set table = "
                               f"\"{name}\" (or put the file under its own name)")
    version = raw.get("version")
    if not isinstance(version, str) or not version:
        raise FactorTableError(f"{path}: no 'version'. Fix: add version = \"YYYY.N\"; every figure records it")
    entries = raw.get(kind)
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise FactorTableError(f"{path}: no [[{kind}]] entries. Fix: add at least one [[{kind}]] table")
    return Table(name, version, str(path), entries)


@dataclass(frozen=True)
class FactorSet:
    """All five tables, checked, with lookups that fail loudly."""

    folder: str
    versions: dict[str, str]
    grid: dict[tuple[str, int, str], FactorRef]
    fuels: dict[str, Fuel]
    species: dict[str, Species]
    reference_o2: dict[str, FactorRef]
    limits: dict[tuple[str, str, str], FactorRef]

    @classmethod
    def load(cls, folder: str | Path | None = None) -> FactorSet:
        base = Path(folder) if folder is not None else DEFAULT_DIR
        return cls(str(base), *(_parse(base)))

    @classmethod
    def default(cls) -> FactorSet:
        return _default()

    @property
    def version(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.versions.items()))

    def grid_factor(self, year: int, grid: str = "CN", kind: str = "average", *,
                    latest_as_proxy: bool = False) -> FactorRef:
        """The factor for ``year``. Official factors appear a year or two late; with ``latest_as_proxy`` a
        year after the newest one uses the newest, marked as a proxy (status ``unverified``, the key says
        which year stands for which), never silently."""
        ref = self.grid.get((grid, year, kind))
        years = sorted(y for g, y, k in self.grid if g == grid and k == kind)
        if ref is None and latest_as_proxy and years and year > years[-1]:
            newest = self.grid[(grid, years[-1], kind)]
            return FactorRef(newest.table, newest.version, f"{grid}/{kind}/{years[-1]} as proxy for {year}",
                             newest.value, newest.unit, f"{newest.source} (proxy: no {year} factor published)",
                             "unverified")
        if ref is None:
            grids = sorted({g for g, _, _ in self.grid})
            have = (f"it has {grid}/{kind} for {', '.join(map(str, years))}" if years
                    else f"it has no {grid}/{kind} factors (grids: {', '.join(grids)})")
            raise CarbonInputError(f"grid factor {grid}/{kind} {year}",
                                   f"the grid table (version {self.versions['grid']}) has no factor for {year}; "
                                   f"{have}",
                                   f"add a [[factor]] for grid {grid!r}, year {year}, kind {kind!r} with its "
                                   "source to grid.toml in your factor folder, or give the factor explicitly")
        return ref

    def fuel(self, code: str) -> Fuel:
        try:
            return self.fuels[code]
        except KeyError:
            raise CarbonInputError(f"fuel {code!r}", "not in the fuel table",
                                   f"use one of {', '.join(sorted(self.fuels))}, or add it to fuels.toml "
                                   "with its NCV, carbon content, oxidation and source") from None

    def tree_species(self, code: str) -> Species:
        try:
            return self.species[code]
        except KeyError:
            raise CarbonInputError(f"species {code!r}", "not in the species table",
                                   f"use one of {', '.join(sorted(self.species))}, or add it to species.toml "
                                   "with its allometric equation and source") from None

    def o2_ref(self, source_type: str) -> FactorRef:
        try:
            return self.reference_o2[source_type]
        except KeyError:
            raise CarbonInputError(f"source type {source_type!r}", "has no reference O2",
                                   f"use one of {', '.join(sorted(self.reference_o2))}, or add it to "
                                   "reference_o2.toml, or set o2_ref_pct on the stack") from None

    def limit(self, source_type: str, pollutant: str, regime: str) -> FactorRef | None:
        """The limit, or None when the table has none for that pollutant (nothing to compare with)."""
        return self.limits.get((source_type, regime, pollutant))


def _parse(base: Path) -> tuple[Any, ...]:
    versions: dict[str, str] = {}

    def table(name: str, kind: str) -> tuple[Path, Table]:
        path = base / f"{name}.toml"
        t = _load_file(path, name, kind)
        versions[name] = t.version
        return path, t

    def ref(r: _Reader, t: Table, key: str, value: Decimal, unit: str) -> FactorRef:
        return FactorRef(t.name, t.version, key, value, unit, r.text("source"), r.text("status", STATUSES))

    path, t = table("grid", "factor")
    grid: dict[tuple[str, int, str], FactorRef] = {}
    for i, e in enumerate(t.entries):
        r = _Reader(path, "factor", i, e)
        key = (r.text("grid"), r.integer("year", 1990, 2100), r.text("kind"))
        r.text("unit", ("t CO2/MWh",))
        if key in grid:
            raise r.fail("year", f"{key[0]}/{key[2]} {key[1]} appears twice", "keep one entry per grid, year, kind")
        grid[key] = ref(r, t, f"{key[0]}/{key[2]}/{key[1]}", r.number("value", 0, 2), "t CO2/MWh")

    path, t = table("fuels", "fuel")
    fuels: dict[str, Fuel] = {}
    for i, e in enumerate(t.entries):
        r = _Reader(path, "fuel", i, e)
        code = r.text("code")
        if code in fuels:
            raise r.fail("code", f"{code!r} appears twice", "keep one entry per fuel code")
        unit = r.text("unit", FUEL_UNITS)
        fuels[code] = Fuel(code, r.text("name_en"), r.text("name_zh"), unit,
                           ref(r, t, f"{code}/ncv", r.number("ncv", 0, 1000, lo_open=True), f"GJ/{unit}"),
                           ref(r, t, f"{code}/cc", r.number("cc", 0, Decimal("0.2"), lo_open=True), "t C/GJ"),
                           ref(r, t, f"{code}/oxidation", r.number("oxidation", 0, 1, lo_open=True), "fraction"))

    path, t = table("species", "species")
    species: dict[str, Species] = {}
    for i, e in enumerate(t.entries):
        r = _Reader(path, "species", i, e)
        code = r.text("code")
        if code in species:
            raise r.fail("code", f"{code!r} appears twice", "keep one entry per species code")
        form = r.text("form", SPECIES_FORMS)
        if form == "chave2014":
            rho = r.number("wood_density", Decimal("0.05"), Decimal("1.5"))
            with localcontext(CONTEXT):
                a, b = CHAVE_A * rho ** CHAVE_B, CHAVE_B
            form, eq_key = "D2H", f"{code}/chave2014 rho={rho}: B = 0.0673*(rho*D^2*H)^0.976"
        else:
            a, b = r.number("a", 0, 1000, lo_open=True), r.number("b", 0, 5, lo_open=True)
            eq_key = f"{code}/{form}: B = {a}*{'D' if form == 'D' else '(D^2*H)'}^{b}"
        species[code] = Species(
            code, r.text("name_en"), r.text("name_zh"), form, a, b,
            ref(r, t, f"{code}/root_shoot", r.number("root_shoot", 0, 5), "ratio"),
            ref(r, t, f"{code}/carbon_fraction", r.number("carbon_fraction", 0, 1, lo_open=True), "fraction"),
            r.number("rel_uncertainty", 0, 2), r.number("max_radial_growth_um_day", 1, 5000),
            ref(r, t, eq_key, a, "kg"))

    path, t = table("reference_o2", "source")
    o2: dict[str, FactorRef] = {}
    for i, e in enumerate(t.entries):
        r = _Reader(path, "source", i, e)
        st = r.text("type")
        if st in o2:
            raise r.fail("type", f"{st!r} appears twice", "keep one entry per source type")
        o2[st] = ref(r, t, st, r.number("o2_ref_pct", 0, 20), "%")

    path, t = table("limits", "limit")
    limits: dict[tuple[str, str, str], FactorRef] = {}
    for i, e in enumerate(t.entries):
        r = _Reader(path, "limit", i, e)
        lkey = (r.text("source_type"), r.text("regime"), r.text("pollutant"))
        r.text("unit", ("mg/m3",))
        if lkey in limits:
            raise r.fail("pollutant", f"{'/'.join(lkey)} appears twice", "keep one limit per source type, regime "
                                                                          "and pollutant")
        limits[lkey] = ref(r, t, "/".join(lkey), r.number("value", 0, 100_000), "mg/m³")
    return versions, grid, fuels, species, o2, limits


@cache
def _default() -> FactorSet:
    return FactorSet.load(DEFAULT_DIR)
