"""Features of one window of one series, the same at the edge, in the cloud back-test and in training.

A series is one point of one device. Its buffer holds the last ``2 * WINDOW`` values: the older half is
the reference, the newer half the window being judged, whose last value is the reading just in. Every
feature is scale-free (a ratio to the reference's own spread, squashed with asinh), so one model serves
analysers in mg/m³, inverters in W and dendrometers in µm. A second buffer of the same length carries
the series' *relation residual* — how far the device's points are from a physical relation (NOx as NO₂,
O₂ against CO₂ for the fuel, AC against DC power, a tree against its neighbours) — or zeros where no
relation applies. The functions take many rows at once so the edge scores a whole poll in one call.

Changing anything here changes what a model sees: bump ``FEATURE_SET`` so old models are refused.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import numpy as np

WINDOW = 60  # points judged per window (the reading just in is the last)
BUFFER = 2 * WINDOW  # window plus its reference
FEATURE_SET = "cl-anomaly-features-2"


class Family(enum.IntEnum):
    OTHER = 0
    CEMS = 1
    INVERTER = 2
    FOREST = 3


FEATURES = (
    "flat_frac",  # share of steps that are exactly zero in the window (stuck)
    "flat_tail",  # the final run of equal values, as a share of the window
    "zero_frac_win",  # share of exact zeros in the window (inverters at night)
    "zero_frac_ref",
    "mean_shift",  # window mean against the reference, in reference spreads
    "log_sd_ratio",  # spread of the window over the reference's
    "log_dsd_ratio",  # spread of the steps (noise) over the reference's
    "max_jump",  # largest step in the window, in reference step spreads
    "last_jump",  # the newest step
    "last_dev",  # the newest value against the window's median, in robust spreads
    "slope",  # the window's trend over its length, in reference spreads
    "half_step",  # second half of the window against the first
    "diff_autocorr",  # lag-1 autocorrelation of the steps (white noise added: towards -0.5)
    "last_step_rz",  # the newest step in the window's robust step spread (MAD of the steps): earlier spikes
    #                  do not inflate it as they inflate a standard deviation
    "spike",  # the newest reading alone out of line: the smaller of its robust deviation from the window
    #           median and its robust step, when both point the same way (0 otherwise)
    "max_step_rz",  # the largest step in the window in the same robust spread: a spike seen earlier
    "log_rdsd_ratio",  # robust step spread of the window over the reference's: noise raises it, a few
    #                    spikes (which raise log_dsd_ratio as much) do not
    "rel_level",  # the relation residual now (mean of the last 5 points)
    "rel_shift",  # the residual's window mean against its reference, in its reference spreads
    "rel_applies",
    "fam_cems",
    "fam_inverter",
    "fam_forest",
)
N_FEATURES = len(FEATURES)

# Point roles by the names the bundled point maps and drivers use; a gateway may map others.
CEMS_ROLES = ("so2", "nox", "no", "no2", "o2", "co2", "dust", "flow", "temp")
INVERTER_ROLES = ("ac_power", "dc_power", "temp")
FOREST_ROLES = ("temperature", "humidity", "soil_moisture", "dendrometer")
CO2_MAX_PCT = {"coal": 18.5, "oil": 15.5, "gas": 11.7, "biomass": 20.3}  # dry CO2 at zero excess air


def family_of(points: set[str] | frozenset[str]) -> Family:
    """Guess a device's family from its point names (the edge may be told explicitly)."""
    if {"nox", "no", "no2"} <= points or {"o2", "co2"} <= points:
        return Family.CEMS
    if {"ac_power", "dc_power"} <= points:
        return Family.INVERTER
    if "dendrometer" in points:
        return Family.FOREST
    return Family.OTHER


# --- relations: one residual per instant, ~0 when the physics holds ---------------------------

def nox_residual(nox: np.ndarray | float, no: np.ndarray | float, no2: np.ndarray | float) -> np.ndarray:
    """NOx reported as NO₂ against NO·46/30 + NO₂ (HJ 75-2017 App. A), as a share of the expected value."""
    expected = np.asarray(no) * 46.0 / 30.0 + np.asarray(no2)
    return (np.asarray(nox) - expected) / np.maximum(np.abs(expected), 1.0)


def o2_co2_residual(o2: np.ndarray | float, co2: np.ndarray | float, co2_max: float = CO2_MAX_PCT["coal"]
                    ) -> np.ndarray:
    """Dry CO₂ against what the fuel gives at the measured O₂: CO₂max·(21 − O₂)/21, as a share of CO₂max."""
    expected = co2_max * (21.0 - np.asarray(o2)) / 21.0
    return (np.asarray(co2) - expected) / co2_max


def ac_dc_residual(ac: np.ndarray | float, dc: np.ndarray | float) -> np.ndarray:
    """AC output against DC input; positive means more out than in, which no inverter does."""
    a, d = np.asarray(ac, dtype=float), np.asarray(dc, dtype=float)
    return (a - d) / np.maximum(np.maximum(np.abs(a), np.abs(d)), 1.0)


def small_median(xs: Sequence[float]) -> float:
    """The median of a few finite numbers, equal to ``float(np.median(xs))`` (the two middle values' mean when
    their count is even) at a twentieth of its cost: it runs for every reading (a series' recent steps, a
    tree's neighbours), where numpy's per-call overhead was most of the stream's time."""
    s = sorted(xs)
    h = len(s) // 2
    return float(s[h]) if len(s) % 2 else (s[h - 1] + s[h]) / 2


def neighbour_residual(own: float, others: list[float]) -> float:
    """One tree's value against the median of its neighbours' (same point, same instant)."""
    if not others:
        return 0.0
    med = small_median(others)
    spread = small_median([abs(o - med) for o in others]) * 1.4826 if len(others) > 2 else 0.0
    return (own - med) / max(spread, 0.01 * abs(med), 1e-6)


RELATIONS: Mapping[Family, Mapping[str, str]] = {
    Family.CEMS: {"nox": "nox", "no": "nox", "no2": "nox", "o2": "o2co2", "co2": "o2co2"},
    Family.INVERTER: {"ac_power": "acdc", "dc_power": "acdc"},
    Family.FOREST: {p: "neighbours" for p in FOREST_ROLES},
}


# --- the features ---------------------------------------------------------------------------

def _asinh(x: np.ndarray) -> np.ndarray:
    return np.arcsinh(np.clip(x, -1e6, 1e6))


def _median_rows(a: np.ndarray) -> np.ndarray:
    """Row medians of an odd number of columns (the 59 steps of a window): one partition, no averaging."""
    k = a.shape[1] // 2
    return np.partition(a, k, axis=1)[:, k]


def window_features(x: np.ndarray, res: np.ndarray, rel_applies: np.ndarray, family: np.ndarray) -> np.ndarray:
    """Rows of ``BUFFER`` values (and residuals) to rows of ``N_FEATURES`` float32 features.

    ``x`` and ``res`` are [n, BUFFER] and finite; ``rel_applies`` and ``family`` are [n].
    """
    x = np.asarray(x, dtype=np.float64)
    res = np.asarray(res, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != BUFFER or res.shape != x.shape:
        raise ValueError(f"windows must be [n, {BUFFER}] values and residuals, got {x.shape} and {res.shape}")
    n, w = x.shape[0], WINDOW
    r, cur = x[:, :w], x[:, w:]
    floor = 1e-2 * np.max(np.abs(x), axis=1) + 1e-6  # 1 % of the buffer's magnitude: flat zeros stay finite
    sr = r.std(axis=1) + floor
    sw = cur.std(axis=1) + floor
    dr_ = np.diff(r, axis=1)
    dw = np.diff(cur, axis=1)
    dsr = dr_.std(axis=1) + floor
    dsw = dw.std(axis=1) + floor
    out = np.empty((n, N_FEATURES), dtype=np.float64)
    out[:, 0] = np.mean(dw == 0.0, axis=1)
    # the final run of equal values: positions from the end until the first non-zero step
    nz = dw[:, ::-1] != 0.0
    first = np.where(nz.any(axis=1), nz.argmax(axis=1), w - 1)
    out[:, 1] = first / (w - 1)
    out[:, 2] = np.mean(cur == 0.0, axis=1)
    out[:, 3] = np.mean(r == 0.0, axis=1)
    mean_r = r.mean(axis=1)
    mean_w = cur.mean(axis=1)
    out[:, 4] = _asinh((mean_w - mean_r) / sr)
    out[:, 5] = np.log(sw / sr)
    out[:, 6] = np.log(dsw / dsr)
    out[:, 7] = _asinh(np.max(np.abs(dw), axis=1) / dsr)
    out[:, 8] = _asinh(np.abs(dw[:, -1]) / dsr)
    med = np.median(cur, axis=1)
    mad = np.median(np.abs(cur - med[:, None]), axis=1) * 1.4826 + floor
    out[:, 9] = _asinh((cur[:, -1] - med) / mad)
    t = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
    slope = (cur - mean_w[:, None]) @ t / float(t @ t)
    out[:, 10] = _asinh(slope * w / sr)
    half = w // 2
    out[:, 11] = _asinh((cur[:, half:].mean(axis=1) - cur[:, :half].mean(axis=1)) / sr)
    dc = dw - dw.mean(axis=1, keepdims=True)
    num = np.sum(dc[:, 1:] * dc[:, :-1], axis=1)
    den = np.sum(dc * dc, axis=1)
    out[:, 12] = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    # robust step spread: 1.4826 · MAD of the window's steps (a few spikes leave it where it was)
    dmed = _median_rows(dw)
    dmad = _median_rows(np.abs(dw - dmed[:, None])) * 1.4826 + floor
    step_rz = (dw[:, -1] - dmed) / dmad
    dev_rz = (cur[:, -1] - med) / mad
    out[:, 13] = _asinh(np.abs(step_rz))
    out[:, 14] = np.where(step_rz * dev_rz > 0, _asinh(np.minimum(np.abs(step_rz), np.abs(dev_rz))), 0.0)
    out[:, 15] = _asinh(np.max(np.abs(dw - dmed[:, None]), axis=1) / dmad)
    rmed = _median_rows(dr_)
    out[:, 16] = np.log(dmad / (_median_rows(np.abs(dr_ - rmed[:, None])) * 1.4826 + floor))
    rr, rw = res[:, :w], res[:, w:]
    out[:, 17] = _asinh(rw[:, -5:].mean(axis=1) * 10.0)
    out[:, 18] = _asinh((rw.mean(axis=1) - rr.mean(axis=1)) / (rr.std(axis=1) + 1e-3))
    out[:, 19] = np.asarray(rel_applies, dtype=np.float64)
    fam = np.asarray(family)
    out[:, 20] = fam == Family.CEMS
    out[:, 21] = fam == Family.INVERTER
    out[:, 22] = fam == Family.FOREST
    return out.astype(np.float32)


def sliding(series: np.ndarray) -> np.ndarray:
    """Every buffer of a whole series at once: row i ends at point ``i + BUFFER - 1`` (a view, no copy)."""
    return np.lib.stride_tricks.sliding_window_view(np.asarray(series, dtype=np.float64), BUFFER)
