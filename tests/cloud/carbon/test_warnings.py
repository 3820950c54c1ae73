"""Allowance warnings raised by the cloud after a refresh round: recorded once per level and year, published."""

from __future__ import annotations

import calendar
import json
from decimal import Decimal as D

from carbonlink.cloud.carbon import warnings
from carbonlink.cloud.carbon.cems import StackConfig
from carbonlink.cloud.carbon.sqlstore import refresh_days, register_stack, set_allowance
from carbonlink.cloud.store import Store
from tests.cloud.carbon.sqldata import add_series

HOUR_MS = 3_600_000
OFF_MS = 8 * HOUR_MS  # local time UTC+8, the accounts' default


def local_ms(y: int, m: int, d: int, h: int = 0) -> int:
    return calendar.timegm((y, m, d, h, 0, 0)) * 1000 - OFF_MS


async def seed(db: object, tenant: str, tonnes_per_month: int) -> int:
    await add_series(db, f"gw-{tenant}", "stack-1")
    src = (await register_stack(db, tenant=tenant, site=f"site-{tenant}", gateway=f"gw-{tenant}", device="stack-1",
                               config=StackConfig(f"{tenant}-stack-1", p_atm_pa=D(101325)), pressure_kind="static")).src
    rows = [(src, local_ms(y, m, 1, 12), tonnes_per_month * 1_000_000)
            for y in (2022, 2023) for m in range(1, 13) if (y, m) < (2023, 7)]
    for s, hour, grams in rows:  # one accounted hour per month carries that month's tonnes
        await db.execute("INSERT INTO carbon_hours (src, hour_ms, status, params_valid, readings, qsn_m3, co2_g,"  # type: ignore[attr-defined]
                         " so2_g, nox_g, dust_g, note, formula_version) VALUES (?, ?, 'valid', 1, 60, 1.0, ?, 0, 0, 0,"
                         " '', 'test')", s, hour, grams)
    await refresh_days(db, [src], local_ms(2022, 1, 1), local_ms(2023, 7, 1))  # as the accounting keeps them
    return src


async def test_forecast_warnings_are_recorded_once_and_published(any_store: Store) -> None:
    db = any_store.db
    await seed(db, "acme", 1000)  # 12,000 t a year
    await seed(db, "calm", 100)  # 1,200 t a year, far below its allowance
    await seed(db, "nolimit", 5000)  # no allowance: never warned
    await set_allowance(db, "acme", 2023, D(12_000))  # forecast 11,548 t = 96 %: notice and warning
    await set_allowance(db, "calm", 2023, D(100_000))
    sent: list[tuple[str, dict[str, object], bool]] = []

    async def publish(topic: str, payload: bytes, retain: bool) -> None:
        sent.append((topic, json.loads(payload), retain))

    now = local_ms(2023, 7, 15, 9)  # the forecast is as of 14 July, the last complete local day
    new = await warnings.check(db, now, publish)
    assert [(w["tenant"], w["level"], w["as_of"]) for w in new] == [("acme", "notice", "2023-07-14"),
                                                                    ("acme", "warning", "2023-07-14")]
    assert [t for t, _, _ in sent] == ["cl/~tenant/acme/carbon/warnings"] * 2
    assert [p["level"] for _, p, _ in sent] == ["notice", "warning"] and not any(r for _, _, r in sent)
    assert await warnings.check(db, now + HOUR_MS, publish) == [] and len(sent) == 2  # each level once a year
    rows = await db.fetch("SELECT tenant, level FROM carbon_warnings ORDER BY tenant, level")
    assert [(r["tenant"], r["level"]) for r in rows] == [("acme", "notice"), ("acme", "warning")]


async def test_a_failing_publisher_keeps_the_record_and_new_year_day_waits(any_store: Store) -> None:
    db = any_store.db
    await seed(db, "acme", 2000)
    await set_allowance(db, "acme", 2023, D(12_000))  # 200 %: every level

    async def broken(topic: str, payload: bytes, retain: bool) -> None:
        raise ConnectionError("broker away")

    assert await warnings.check(db, local_ms(2023, 1, 1, 10), broken) == []  # no complete day this year yet
    new = await warnings.check(db, local_ms(2023, 7, 2, 0), broken)
    assert [w["level"] for w in new] == ["notice", "warning", "exceeded"]
    assert len(await db.fetch("SELECT level FROM carbon_warnings")) == 3  # recorded although not published
