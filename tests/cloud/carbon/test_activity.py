"""Fuel and activity CSV uploads: checked row by row; a bad row names its row, column and fix."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from carbonlink.cloud.carbon.activity import MAX_BYTES, parse_activity_csv

GOOD = ("date,site,source,fuel,quantity,unit,ncv,cc,oxidation,note\n"
        "2024-03-01,plant-a,stack-1,cn_raw_coal,1000,t,,,,daily ledger\n"
        "2024-03-02,plant-a,stack-1,cn_raw_coal,950.5,t,22.35,0.0265,0.99,lab values\n"
        "2024-03-01,plant-a,site,cn_natural_gas,12.5,1e4 Nm3,,,,\n")


def test_good_rows_get_their_co2_with_table_or_measured_factors() -> None:
    res = parse_activity_csv(("\ufeff" + GOOD).encode())  # a spreadsheet's BOM is fine
    assert res.ok and len(res.rows) == 3
    r1, r2, r3 = res.rows
    # 1000 t × 20.908 GJ/t × 0.02618 t C/GJ × 0.98 × 44/12
    assert r1.co2_t == (D(1000) * D("20.908") * D("0.02618") * D("0.98") * D(44) / D(12)).quantize(D("0.000001"))
    assert r2.as_dict()["measured"] == ["ncv", "cc", "oxidation"] and r2.as_dict()["ncv"] == "22.35"
    assert r3.unit == "1e4 Nm3" and r3.co2_t > 0
    assert res.as_dict()["ok"] is True


@pytest.mark.parametrize("row, column, says", [
    ("2024-02-30,plant-a,stack-1,cn_raw_coal,10,t,,,,", "date", "YYYY-MM-DD"),
    ("01/03/2024,plant-a,stack-1,cn_raw_coal,10,t,,,,", "date", "not a date"),
    ("2024-03-01,plant-a,stack-1,cn_raw_coal,-10,t,,,,", "quantity", "≥ 0"),
    ("2024-03-01,plant-a,stack-1,cn_raw_coal,ten,t,,,,", "quantity", "not a quantity"),
    ("2024-03-01,plant-a,stack-1,peat,10,t,,,,", "fuel", "not in the fuel table"),
    ("2024-03-01,plant-a,stack-1,cn_raw_coal,10,kg,,,,", "unit", "does not match"),
    ("2024-03-01,plant-a,stack-1,cn_raw_coal,10,t,,,98,", "oxidation", "0.98"),
    ("2024-03-01,plant-a,stack-1,cn_raw_coal,10,t,,26.18,,", "cc", "0.02618"),
    ("2024-03-01,,stack-1,cn_raw_coal,10,t,,,,", "site", "empty"),
    ("2024-03-01,plant-a,stack-1,cn_raw_coal,10,t", "-", "6 cells"),
    ("2024-03-01,plant-a,stack-1,cn_raw_coal,1000,t,,,,", "date", "same day"),
])
def test_each_bad_row_is_an_error_with_row_column_and_fix(row: str, column: str, says: str) -> None:
    res = parse_activity_csv((GOOD + row + "\n").encode())
    assert not res.ok and len(res.rows) == 3  # the good rows are still checked and shown
    (err,) = res.errors
    assert (err.row, err.column) == (5, column) and says in err.problem + err.fix and err.fix


def test_one_row_with_several_problems_lists_them_all() -> None:
    res = parse_activity_csv(b"date,site,source,fuel,quantity,unit\nyesterday,a,b,peat,-1,t\n")
    assert {e.column for e in res.errors} == {"date", "fuel", "quantity"} and not res.rows


@pytest.mark.parametrize("data, says", [
    (b"", "no header"),
    (b"date,site,fuel\n", "missing source, quantity, unit"),
    (b"date,site,source,fuel,quantity,unit,price\n", "unknown price"),
    (b"\xff\xfe\x00d", "not UTF-8"),
    (b"x" * (MAX_BYTES + 1), "over"),
])
def test_files_that_cannot_be_read_say_why(data: bytes, says: str) -> None:
    res = parse_activity_csv(data)
    assert not res.ok and says in res.errors[0].problem
