"""HJ 212-2017 pollutant codes, data flags, and data packets turned into readings.

Naming rule (``packet_to_readings``):

* CN 2011 (real-time): ``<name>`` from ``Rtd`` and ``<name>_zs`` from ``ZsRtd``
  (O2-corrected), e.g. ``a21026-Rtd`` → ``so2``.
* CN 2051 / 2061 / 2031 (minute / hour / day): ``<name>_<stat>_<period>`` with
  stat avg/min/max/cou (``Zs`` fields: ``<name>_zs_<stat>_<period>``) and period
  1m / 1h / 1d, e.g. ``a21026-Avg`` in 2061 → ``so2_avg_1h``. The period is part
  of the name because a minute and an hour record share the same DataTime; without
  it they would have the same reading key.
* ``<code>-Flag`` gives the quality of every value of that code (absent → N).
  ``Cou`` uses the code's total unit (kg for gases, m³ for flow).
* DataTime is local time at ``utc_offset_minutes`` (China Standard Time, +480,
  by default) and becomes the reading's UTC timestamp.
* Fields that cannot be mapped safely (unknown code, unknown data flag, a suffix
  that does not belong to the CN, a value that is not a plain decimal) are left
  out and reported in ``Conversion.skipped``; nothing is guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from carbonlink.codecs.hj212.codec import CN_REALTIME, DATA_CNS, PERIOD, Hj212Error, Packet, Reason
from carbonlink.kernel.wire import Quality, Reading, WireError

_NUMBER_RE = re.compile(r"^-?\d{1,15}(\.\d{1,15})?$")  # plain decimals only: no exponent, nan or inf


@dataclass(frozen=True)
class Code:
    code: str
    name: str  # point name
    unit: str
    cou_unit: str | None  # unit of the Cou (total) field; None: a total makes no sense
    label: str


# HJ 212-2017 Appendix B (air codes); units per the standard's table.
CODES: dict[str, Code] = {c.code: c for c in (
    Code("a21026", "so2", "mg/m³", "kg", "SO2"),
    Code("a21002", "nox", "mg/m³", "kg", "NOx (as NO2)"),
    Code("a21003", "no", "mg/m³", "kg", "NO"),
    Code("a21004", "no2", "mg/m³", "kg", "NO2"),
    Code("a21005", "co", "mg/m³", "kg", "CO"),
    Code("a05001", "co2", "mg/m³", "kg", "CO2"),
    Code("a34013", "dust", "mg/m³", "kg", "particulate matter"),
    Code("a19001", "o2", "%", None, "O2"),
    Code("a00000", "flow", "m³/s", "m³", "flue gas flow"),
    Code("a01011", "velocity", "m/s", None, "flue gas velocity"),
    Code("a01012", "temp", "°C", None, "flue gas temperature"),
    Code("a01013", "pressure", "kPa", None, "flue gas pressure"),
    Code("a01014", "moisture", "%", None, "flue gas humidity"),
)}
CODE_BY_NAME = {c.name: c for c in CODES.values()}

DATA_FLAGS: dict[str, Quality] = {q.value: q for q in Quality}  # N F M S D C T B, the same letters

_RTD_SUFFIX = {"Rtd": "", "ZsRtd": "_zs"}
_STAT_SUFFIX = {"Avg": "_avg", "Min": "_min", "Max": "_max", "Cou": "_cou",
                "ZsAvg": "_zs_avg", "ZsMin": "_zs_min", "ZsMax": "_zs_max"}
_META_SUFFIX = frozenset({"Flag", "EFlag", "SampleTime"})


def point_name(code: Code, suffix: str, cn: str) -> str | None:
    """The reading point for ``<code>-<suffix>`` in a packet of CN ``cn`` (None: not a value there)."""
    if cn == CN_REALTIME:
        s = _RTD_SUFFIX.get(suffix)
        return None if s is None else code.name + s
    if cn in PERIOD:
        s = _STAT_SUFFIX.get(suffix)
        return None if s is None else f"{code.name}{s}_{PERIOD[cn]}"
    return None


def parse_point(point: str) -> tuple[Code, str, str] | None:
    """Inverse of ``point_name``: (code, suffix, cn), or None when the point has no HJ 212 field."""
    for cn, period in PERIOD.items():
        tail = f"_{period}"
        if point.endswith(tail):
            stem = point[: -len(tail)]
            for suffix, s in _STAT_SUFFIX.items():
                if stem.endswith(s) and stem[: -len(s)] in CODE_BY_NAME:
                    return CODE_BY_NAME[stem[: -len(s)]], suffix, cn
    for suffix, s in _RTD_SUFFIX.items():
        base = point[: len(point) - len(s)] if s else point
        if (not s or point.endswith(s)) and base in CODE_BY_NAME:
            return CODE_BY_NAME[base], suffix, CN_REALTIME
    return None


def parse_datatime(text: str, utc_offset_minutes: int) -> int:
    """``yyyyMMddHHmmss`` local time to UTC epoch milliseconds."""
    if not re.fullmatch(r"\d{14}", text):
        raise Hj212Error(Reason.CP, f"DataTime {text!r} must be 14 digits yyyyMMddHHmmss")
    try:
        local = datetime.strptime(text, "%Y%m%d%H%M%S")
    except ValueError:
        raise Hj212Error(Reason.CP, f"DataTime {text!r} is not a valid date and time") from None
    utc = local.replace(tzinfo=UTC) - timedelta(minutes=utc_offset_minutes)
    ms = int(utc.timestamp() * 1000)
    if not 0 <= ms < 253402300800000:
        raise Hj212Error(Reason.CP, f"DataTime {text!r} is outside 1970-9999")
    return ms


def format_datatime(ts_ms: int, utc_offset_minutes: int) -> str:
    local = datetime.fromtimestamp(ts_ms / 1000, UTC) + timedelta(minutes=utc_offset_minutes)
    return local.strftime("%Y%m%d%H%M%S")


def make_qn(ts_ms: int, utc_offset_minutes: int) -> str:
    return format_datatime(ts_ms, utc_offset_minutes) + f"{ts_ms % 1000:03d}"


@dataclass
class Conversion:
    readings: list[Reading] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (CP key, why)


def packet_to_readings(packet: Packet, device: str, *, utc_offset_minutes: int = 480,
                       codes: Mapping[str, Code] = CODES) -> Conversion:
    """Turn a data packet (CN 2011/2051/2061/2031) into readings (rule in the module docstring)."""
    if packet.cn not in DATA_CNS:
        raise Hj212Error(Reason.CN, f"CN {packet.cn} is not a data upload (2011, 2051, 2061, 2031)")
    cp = packet.cp_fields()
    if "DataTime" not in cp:
        raise Hj212Error(Reason.CP, "data packet without DataTime")
    ts = parse_datatime(cp["DataTime"], utc_offset_minutes)
    out = Conversion()
    for key, value in cp.items():
        code_text, dash, suffix = key.partition("-")
        if not dash:
            continue  # DataTime and other packet-level fields
        if suffix in _META_SUFFIX:
            continue
        code = codes.get(code_text)
        if code is None:
            out.skipped.append((key, f"pollutant code {code_text} is not in the code table"))
            continue
        point = point_name(code, suffix, packet.cn)
        if point is None:
            out.skipped.append((key, f"field {suffix} does not belong in CN {packet.cn}"))
            continue
        unit = code.unit
        if suffix == "Cou":
            if code.cou_unit is None:
                out.skipped.append((key, f"{code.label} has no total (Cou)"))
                continue
            unit = code.cou_unit
        letter = cp.get(f"{code_text}-Flag", "N")
        quality = DATA_FLAGS.get(letter)
        if quality is None:
            out.skipped.append((key, f"data flag {letter!r} is not one of N F M S D C T B"))
            continue
        if not _NUMBER_RE.match(value):
            out.skipped.append((key, f"value {value!r} is not a plain decimal number"))
            continue
        try:
            out.readings.append(Reading.make(device, point, ts, float(value), unit, quality.value))
        except WireError as exc:
            out.skipped.append((key, str(exc)))
    return out


def format_value(value: float, decimals: int = 3) -> str:
    """A value as HJ 212 writes it: plain decimal, fixed decimals (no exponent, no '-0')."""
    text = f"{value:.{decimals}f}"
    if text.lstrip("-").strip("0.") == "":
        text = text.lstrip("-")
    return text


