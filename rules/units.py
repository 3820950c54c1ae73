"""Units the rules understand: a closed table of the units our devices report, with conversions.

A unit is a scale and an offset onto the SI base of its dimension (exponents of kg, m, s, K, A)
plus two dimensionless families kept apart on purpose: ratios (%, ppm: a fraction of a whole) and
plain numbers (""). ppm by volume and mg/m³ are different dimensions: converting between them needs
a molar mass (HJ 75-2017 App. A: C = M/22.4·Cv), which a comparison must not guess.

The table is small and explicit rather than a general units library: a gateway imports it on a
Raspberry Pi, every unit in it occurs in our point maps, codecs or standards, and a unit it does
not know is refused by name at compile time instead of being interpreted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Dimension vector: exponents of (kg, m, s, K, A, ratio)
Dim = tuple[int, int, int, int, int, int]
_NONE: Dim = (0, 0, 0, 0, 0, 0)


class UnitError(ValueError):
    """An unknown unit, or two units that cannot be compared or converted."""


@dataclass(frozen=True, slots=True)
class Unit:
    symbol: str
    dim: Dim
    scale: float = 1.0  # value in SI base = value * scale + offset
    offset: float = 0.0

    def compatible(self, other: Unit) -> bool:
        return self.dim == other.dim

    def times(self, other: Unit) -> Unit:
        if self.offset or other.offset:
            raise UnitError(f"cannot multiply by an absolute temperature ({self.symbol}, {other.symbol})")
        dim = tuple(a + b for a, b in zip(self.dim, other.dim, strict=True))
        return Unit(f"{self.symbol}·{other.symbol}", dim, self.scale * other.scale)  # type: ignore[arg-type]

    def per(self, other: Unit) -> Unit:
        if self.offset or other.offset:
            raise UnitError(f"cannot divide by or into an absolute temperature ({self.symbol}, {other.symbol})")
        dim = tuple(a - b for a, b in zip(self.dim, other.dim, strict=True))
        return Unit(f"{self.symbol}/{other.symbol}", dim, self.scale / other.scale)  # type: ignore[arg-type]

    @property
    def dimensionless(self) -> bool:
        return self.dim == _NONE


def _d(kg: int = 0, m: int = 0, s: int = 0, k: int = 0, a: int = 0, r: int = 0) -> Dim:
    return (kg, m, s, k, a, r)


_MASS_CONC = _d(kg=1, m=-3)
_TABLE: dict[str, tuple[Dim, float, float]] = {
    "": (_NONE, 1.0, 0.0),
    # ratios
    "%": (_d(r=1), 0.01, 0.0), "ppm": (_d(r=1), 1e-6, 0.0), "ppb": (_d(r=1), 1e-9, 0.0),
    "%RH": (_d(r=1), 0.01, 0.0),
    # mass concentration (CEMS, HJ 212 mg/m³)
    "g/m³": (_MASS_CONC, 1e-3, 0.0), "mg/m³": (_MASS_CONC, 1e-6, 0.0), "µg/m³": (_MASS_CONC, 1e-9, 0.0),
    "kg/m³": (_MASS_CONC, 1.0, 0.0),
    # temperature
    "K": (_d(k=1), 1.0, 0.0), "°C": (_d(k=1), 1.0, 273.15),
    # pressure
    "Pa": (_d(kg=1, m=-1, s=-2), 1.0, 0.0), "hPa": (_d(kg=1, m=-1, s=-2), 100.0, 0.0),
    "kPa": (_d(kg=1, m=-1, s=-2), 1e3, 0.0), "MPa": (_d(kg=1, m=-1, s=-2), 1e6, 0.0),
    "bar": (_d(kg=1, m=-1, s=-2), 1e5, 0.0), "mbar": (_d(kg=1, m=-1, s=-2), 100.0, 0.0),
    # power and energy
    "W": (_d(kg=1, m=2, s=-3), 1.0, 0.0), "kW": (_d(kg=1, m=2, s=-3), 1e3, 0.0),
    "MW": (_d(kg=1, m=2, s=-3), 1e6, 0.0),
    "J": (_d(kg=1, m=2, s=-2), 1.0, 0.0), "kJ": (_d(kg=1, m=2, s=-2), 1e3, 0.0),
    "MJ": (_d(kg=1, m=2, s=-2), 1e6, 0.0), "Wh": (_d(kg=1, m=2, s=-2), 3600.0, 0.0),
    "kWh": (_d(kg=1, m=2, s=-2), 3.6e6, 0.0), "MWh": (_d(kg=1, m=2, s=-2), 3.6e9, 0.0),
    # electricity
    "V": (_d(kg=1, m=2, s=-3, a=-1), 1.0, 0.0), "mV": (_d(kg=1, m=2, s=-3, a=-1), 1e-3, 0.0),
    "A": (_d(a=1), 1.0, 0.0), "mA": (_d(a=1), 1e-3, 0.0),
    # flow, velocity, length, mass, mass rate, time
    "m³/s": (_d(m=3, s=-1), 1.0, 0.0), "m³/h": (_d(m=3, s=-1), 1 / 3600, 0.0),
    "L/s": (_d(m=3, s=-1), 1e-3, 0.0), "L/min": (_d(m=3, s=-1), 1e-3 / 60, 0.0),
    "m/s": (_d(m=1, s=-1), 1.0, 0.0), "km/h": (_d(m=1, s=-1), 1 / 3.6, 0.0),
    "m": (_d(m=1), 1.0, 0.0), "cm": (_d(m=1), 1e-2, 0.0), "mm": (_d(m=1), 1e-3, 0.0),
    "µm": (_d(m=1), 1e-6, 0.0),
    "kg": (_d(kg=1), 1.0, 0.0), "g": (_d(kg=1), 1e-3, 0.0), "mg": (_d(kg=1), 1e-6, 0.0),
    "t": (_d(kg=1), 1e3, 0.0),
    "kg/h": (_d(kg=1, s=-1), 1 / 3600, 0.0), "t/h": (_d(kg=1, s=-1), 1 / 3.6, 0.0),
    "g/s": (_d(kg=1, s=-1), 1e-3, 0.0),
    "s": (_d(s=1), 1.0, 0.0), "min": (_d(s=1), 60.0, 0.0), "h": (_d(s=1), 3600.0, 0.0),
    "Hz": (_d(s=-1), 1.0, 0.0),
}
# Spellings devices and people use for the same unit.
_ALIASES = {"℃": "°C", "degC": "°C", "celsius": "°C", "percent": "%", "pct": "%",
            "ug/m³": "µg/m³", "μg/m³": "µg/m³", "μm": "µm", "um": "µm", "l/s": "L/s", "l/min": "L/min"}
UNITS: dict[str, Unit] = {sym: Unit(sym, dim, scale, off) for sym, (dim, scale, off) in _TABLE.items()}
ONE = UNITS[""]
SECOND = UNITS["s"]


def normalise(symbol: str) -> str:
    s = symbol.strip().replace("^3", "³").replace("^2", "²")
    if s.endswith("m3") or "m3/" in s:
        s = s.replace("m3", "m³")
    if s.endswith("m2"):
        s = s[:-2] + "m²"
    return _ALIASES.get(s, s)


def lookup(symbol: str) -> Unit:
    """The unit a symbol names (``mg/m3`` and ``mg/m³`` are one unit); UnitError names the known ones."""
    unit = UNITS.get(normalise(symbol))
    if unit is None:
        raise UnitError(f"unknown unit {symbol!r}; known units: {', '.join(sorted(s for s in UNITS if s))}")
    return unit


def known(symbol: str) -> bool:
    return normalise(symbol) in UNITS


def converter(src: Unit, dst: Unit) -> tuple[float, float]:
    """(a, b) with value_in_dst = value_in_src * a + b; UnitError if the dimensions differ."""
    if src.dim != dst.dim:
        raise UnitError(f"{src.symbol or 'no unit'} cannot be converted to {dst.symbol or 'no unit'}")
    # Rounded to 15 digits: 1e-3 / 1e-6 is 1000, not 999.9999999999999.
    a = float(f"{src.scale / dst.scale:.15g}")
    b = float(f"{(src.offset - dst.offset) / dst.scale:.15g}")
    return a, b


def convert(value: float, src: Unit, dst: Unit) -> float:
    a, b = converter(src, dst)
    return value * a + b


def named(unit: Unit) -> Unit | None:
    """The table unit equal to a computed one (mg/m³·%/% is mg/m³), or None."""
    if unit.symbol in UNITS:
        return UNITS[unit.symbol]
    for u in UNITS.values():
        if u.dim == unit.dim and u.offset == unit.offset and math.isclose(u.scale, unit.scale, rel_tol=1e-12):
            return u
    return None
