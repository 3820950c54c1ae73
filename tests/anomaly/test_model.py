"""Loading a model checks everything a gateway relies on; every bad file is a ModelError with its code."""

from __future__ import annotations

import numpy as np
import pytest

from carbonlink.anomaly.features import FEATURE_SET, N_FEATURES
from carbonlink.anomaly.model import ModelError, default_model_bytes, load, load_default, sha256_hex
from tests.anomaly import fakes


def test_packaged_model_loads_small_and_self_describing() -> None:
    data = default_model_bytes()
    assert len(data) < 1024 * 1024
    m = load_default()
    assert m.info.model_id and m.info.version >= 1 and m.info.sha256 == sha256_hex(data)
    assert 0.0 < m.info.threshold < 1.0 and m.info.score == "proba"
    assert m.info.extra["feature_set"] == FEATURE_SET
    s = m.score(np.zeros((3, N_FEATURES), dtype=np.float32))
    assert s.shape == (3,) and np.all((s >= 0) & (s <= 1))


def test_hash_checked_when_expected() -> None:
    data = default_model_bytes()
    assert load(data, expect_sha256=sha256_hex(data)).info.sha256 == sha256_hex(data)
    with pytest.raises(ModelError) as e:
        load(data, expect_sha256="0" * 64)
    assert e.value.code == "hash_mismatch"


@pytest.mark.parametrize("data", [b"", b"not onnx at all", b"\x08\x07" + b"\xff" * 40, default_model_bytes()[:5000]])
def test_not_onnx(data: bytes) -> None:
    with pytest.raises(ModelError) as e:
        load(data)
    assert e.value.code == "not_onnx"


def test_wrong_input_width() -> None:
    with pytest.raises(ModelError) as e:
        load(fakes.wrong_width(5))
    assert e.value.code == "wrong_inputs" and f"[n, {N_FEATURES}]" in str(e.value)


def test_other_feature_set_refused() -> None:
    with pytest.raises(ModelError) as e:
        load(fakes.with_meta(feature_set="cl-anomaly-features-0"))
    assert e.value.code == "wrong_inputs"


@pytest.mark.parametrize("change", [{"version": "two"}, {"threshold": "nan"}, {"score": "vibes"}, {"model_id": ""}])
def test_bad_metadata(change: dict[str, str]) -> None:
    with pytest.raises(ModelError) as e:
        load(fakes.with_meta(**change))
    assert e.value.code == "bad_metadata"


def test_model_returning_nan_on_the_probe_is_refused() -> None:
    with pytest.raises(ModelError) as e:
        load(fakes.always_nan())
    assert e.value.code == "bad_output" and "NaN" in str(e.value)


def test_nan_on_some_rows_is_nan_not_a_number() -> None:
    m = load(fakes.nan_above(column=7, limit=3.5))
    rows = np.zeros((2, N_FEATURES), dtype=np.float32)
    rows[1, 7] = 10.0
    s = m.score(rows)
    assert np.isfinite(s[0]) and np.isnan(s[1])


def test_too_large_refused_before_parsing() -> None:
    with pytest.raises(ModelError) as e:
        load(b"\x00" * (9 * 1024 * 1024))
    assert e.value.code == "too_large"
