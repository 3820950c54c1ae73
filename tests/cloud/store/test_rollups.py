"""Rollups and completeness give the same answers on SQLite and PostgreSQL (HJ 76-2017 App. B rules)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.completeness import availability, late_batches, seq_gaps
from carbonlink.cloud.rollups import DAY_MS, HOUR_MS, ValidityRules, roll_months, rollups
from carbonlink.cloud.store import PendingBatch, SeriesQuery, Store
from carbonlink.kernel.wire import Batch, Reading, parse_ts, sign_batch

KEY = Ed25519PrivateKey.generate()
T0 = parse_ts("2024-03-01T00:00:00.000Z")


def signed(gw: str, seq: int, readings: list[Reading], created_ms: int = T0) -> tuple[Batch, bytes]:
    b = sign_batch(Batch(gw, seq, created_ms, tuple(readings)), KEY)
    return b, b.to_bytes()


async def put(store: Store, gw: str, readings: list[Reading], first_seq: int = 1, size: int = 500) -> int:
    seq = first_seq
    for i in range(0, len(readings), size):
        b, raw = signed(gw, seq, readings[i:i + size])
        assert (await store.data.commit_batch(b, raw, T0)).status == "committed"
        seq += 1
    return seq


def hour_of(start: int, valid_minutes: int, flag_minutes: dict[str, int] | None = None,
            point: str = "so2") -> list[Reading]:
    """One reading per minute: `valid_minutes` flagged N (value = minute index), then other flags."""
    out = [Reading.make("cems-1", point, start + m * 60_000, float(m), "mg/m³") for m in range(valid_minutes)]
    m = valid_minutes
    for flag, count in (flag_minutes or {}).items():
        for _ in range(count):
            out.append(Reading.make("cems-1", point, start + m * 60_000, 999.0, "mg/m³", flag))
            m += 1
    return out


async def test_hour_validity_and_flags(store: Store) -> None:
    data = hour_of(T0, 45, {"M": 10, "C": 5}) + hour_of(T0 + HOUR_MS, 44, {"D": 16})
    await put(store, "gw-1", data)
    hours = await rollups(store, SeriesQuery("cems-1", T0, T0 + 2 * HOUR_MS))
    assert [(h["start"], h["valid_minutes"], h["valid"]) for h in hours] == [
        ("2024-03-01T00:00:00.000Z", 45, True), ("2024-03-01T01:00:00.000Z", 44, False)]
    h = hours[0]
    assert h["n"] == 60 and h["n_valid"] == 45
    assert h["counts"] == {"N": 45, "F": 0, "M": 10, "S": 0, "D": 0, "C": 5, "T": 0, "B": 0}
    assert (h["min"], h["max"], h["mean"]) == (0.0, 44.0, 22.0)  # the 999s flagged M and C do not count
    assert hours[1]["counts"]["D"] == 16
    # Configurable: a looser rule makes the second hour valid.
    loose = await rollups(store, SeriesQuery("cems-1", T0, T0 + 2 * HOUR_MS), rules=ValidityRules(min_valid_minutes=40))
    assert [x["valid"] for x in loose] == [True, True]


async def test_day_needs_twenty_valid_hours_and_redelivery_counts_once(store: Store) -> None:
    day1 = [r for h in range(20) for r in hour_of(T0 + h * HOUR_MS, 45)]
    day1 += hour_of(T0 + 20 * HOUR_MS, 30)  # an invalid hour: counted, not averaged
    day2 = [r for h in range(19) for r in hour_of(T0 + DAY_MS + h * HOUR_MS, 50)]
    next_seq = await put(store, "gw-1", day1 + day2)
    # Redelivery of a whole batch and the same readings under a new seq change nothing.
    b, raw = signed("gw-1", 1, (day1 + day2)[:500])
    assert (await store.data.commit_batch(b, raw, T0)).status == "duplicate"
    b, raw = signed("gw-1", next_seq, (day1 + day2)[:10])
    res = await store.data.commit_batch(b, raw, T0)
    assert (res.status, res.inserted, res.duplicates) == ("committed", 0, 10)
    days = await rollups(store, SeriesQuery("cems-1", T0, T0 + 2 * DAY_MS), "day")
    assert [(d["start"], d["valid_hours"], d["valid"]) for d in days] == [
        ("2024-03-01T00:00:00.000Z", 20, True), ("2024-03-02T00:00:00.000Z", 19, False)]
    assert days[0]["n"] == 20 * 45 + 30 and days[0]["mean"] == 22.0 and days[0]["max"] == 44.0
    # Local days (UTC+8) cut the same data elsewhere.
    local = await rollups(store, SeriesQuery("cems-1", T0, T0 + 2 * DAY_MS), "day", ValidityRules(tz_offset_min=480))
    assert local[0]["start"] == "2024-02-29T16:00:00.000Z"


async def test_group_commit_attribution(store: Store) -> None:
    rs = hour_of(T0, 10)
    b1, raw1 = signed("gw-1", 1, rs[:6])
    b2, raw2 = signed("gw-1", 2, rs[4:])  # overlaps b1 by two readings
    b3, raw3 = signed("gw-1", 1, rs[:3])  # seq 1 again with other content: a conflict, not a duplicate
    p1 = PendingBatch.from_batch(b1, raw1, T0)
    res = await store.data.commit_many([p1, PendingBatch.from_batch(b2, raw2, T0), p1,
                                   PendingBatch.from_batch(b3, raw3, T0)])
    assert [(r.status, r.inserted, r.duplicates) for r in res] == [
        ("committed", 6, 0), ("committed", 4, 2), ("duplicate", 0, 6), ("conflict", 0, 3)]
    assert (await store.data.counts())["readings"] == 10
    (h,) = await rollups(store, SeriesQuery("cems-1", T0, T0 + HOUR_MS))
    assert h["n"] == 10 and h["valid_minutes"] == 10


def test_month_rules() -> None:
    rules = ValidityRules()

    def days(month_start: int, n_valid: int, n: int) -> list[dict[str, object]]:
        return [{"gateway": "g", "device": "d", "point": "p", "start_ms": month_start + i * DAY_MS, "n": 1,
                 "n_valid": 1, "counts": dict.fromkeys("NFMSDCTB", 0), "min": 1.0, "max": 2.0,
                 "mean": 1.5, "valid": i < n_valid} for i in range(n)]

    feb, mar = parse_ts("2023-02-01T00:00:00.000Z"), parse_ts("2023-03-01T00:00:00.000Z")
    out = roll_months(days(feb, 23, 28) + days(mar, 24, 31), rules)
    assert [(m["start"], m["valid_days"], m["required"], m["valid"]) for m in out] == [
        ("2023-02-01T00:00:00.000Z", 23, 23, True), ("2023-03-01T00:00:00.000Z", 24, 25, False)]


async def test_gaps_and_late_batches(store: Store) -> None:
    await store.registry.register_gateway("gw-1", "site-1", "ed25519", "00" * 32)
    for seq in (3, 4, 7, 9):
        b, raw = signed("gw-1", seq, [Reading.make("cems-1", "so2", T0 + seq, 1.0, "mg/m³")])
        await store.data.commit_batch(b, raw, T0 + (3_600_000 if seq == 4 else 1_000))
    gaps = await seq_gaps(store, "gw-1")
    assert gaps["missing"] == [[1, 2], [5, 6], [8, 8]] and gaps["missing_batches"] == 5
    assert gaps["last_seq"] == 9 and gaps["batches"] == 4
    late = await late_batches(store, "gw-1", 60_000)
    assert [(x["seq"], x["delay_ms"]) for x in late] == [(4, 3_600_000)]
    assert (await seq_gaps(store, "gw-none"))["missing"] == []


async def test_availability_per_hour(store: Store) -> None:
    every10s = [Reading.make("cems-1", "flow", T0 + i * 10_000, 5.0, "m³/s") for i in range(360)]
    half = [Reading.make("cems-1", "flow", T0 + 2 * HOUR_MS + i * 10_000, 5.0, "m³/s",
                         "N" if i % 2 else "B") for i in range(180)]
    await put(store, "gw-1", every10s + half)
    (s,) = await availability(store, SeriesQuery("cems-1", T0, T0 + 3 * HOUR_MS, "flow"))
    assert s["interval_ms"] == 10_000 and s["missing_hours"] == 1
    assert [(h["expected"], h["received"], h["valid"]) for h in s["hours"]] == [
        (360, 360, 360), (360, 0, 0), (360, 180, 90)]
    assert s["availability"] == 540 / 1080
    (none,) = await availability(store, SeriesQuery("cems-1", T0, T0 + HOUR_MS, "nothing"))
    assert none["received"] == 0 and none["interval_ms"] is None
