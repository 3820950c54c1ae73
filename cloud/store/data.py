"""The data plane: the point registry (series), group commit, latest values, readings, hour rollups, gaps.

Readings are keyed by (series, ts_ms): a series is one point of one device of one gateway, numbered on
first sight, and carries the point's registered unit (the first one stored; a later reading in another
unit is refused into a dead letter). Integer keys instead of four text columns are what lets one
PostgreSQL take a few hundred thousand readings a second.

Hour rollups (HJ 76 validity needs valid minutes per hour) live in ``rollup_hour``. The ingest marks
every (gateway, hour) it touches in ``rollup_dirty`` in the same transaction; ``refresh_hours`` later
recomputes closed hours from the raw readings and clears a mark only if no commit touched the hour
meanwhile (``gen``), so a late reading is never lost from a rollup. Queries read materialised hours
and compute dirty or still-open hours from the raw readings, so answers are always exact.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from itertools import chain, repeat
from typing import Any

from carbonlink.kernel.wire import Batch, format_ts, now_ms

from .db import Conn, Database
from .model import (
    FLAG_COLS,
    HOUR_MS,
    QUALITY_FLAGS,
    CommitResult,
    Group,
    PendingBatch,
    ReadingQuery,
    Series,
    SeriesQuery,
    seq_gap_summary,
    unit_reason,
)
from .registry import IN_TENANT

log = logging.getLogger(__name__)

READING_COLS = ("series", "ts_ms", "value", "quality", "seq")
SeriesKey = tuple[str, str, str]  # gateway, device, point
HoursListener = Callable[[list[tuple[str, int]]], Awaitable[None]]

_HOUR_AGG = (
    "count(*) AS n, "
    + ", ".join(f"count(CASE WHEN quality = '{f}' THEN 1 END) AS q_{f.lower()}" for f in QUALITY_FLAGS)
    + ", min(CASE WHEN quality = 'N' THEN value END) AS vmin, max(CASE WHEN quality = 'N' THEN value END) AS vmax,"
    " sum(CASE WHEN quality = 'N' THEN value END) AS vsum,"
    " count(DISTINCT CASE WHEN quality = 'N' THEN ts_ms / 60000 END) AS valid_minutes,"
    " min(ts_ms) AS first_ms, max(ts_ms) AS last_ms")
_ROLLUP_COLS = ("n", *FLAG_COLS, "vmin", "vmax", "vsum", "valid_minutes", "first_ms", "last_ms")
# SQLite's insert of readings: one statement takes this many rows; a reading already stored is skipped.
_VALUES_ROWS = 200
_INSERT_READINGS = f"INSERT OR IGNORE INTO readings({', '.join(READING_COLS)}) VALUES "
_ONE_ROW = "(" + ",".join("?" * len(READING_COLS)) + ")"
_GATEWAY_SERIES = "series IN (SELECT id FROM series WHERE gateway = ?)"


def _marks(ids: Sequence[Any]) -> str:
    return ",".join("?" * len(ids))


_REFRESH_LIMIT = 500  # dirty hours materialised per round

class Data:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._series: dict[SeriesKey, tuple[int, str]] = {}  # (gateway, device, point) -> (id, unit)
        self._seen_written: dict[str, int] = {}
        self.hours_listeners: list[HoursListener] = []
        # With cloud rules on, every newly committed batch is queued (``rules_pending``) in the same
        # transaction, so the one evaluator sees what every ingest worker committed, and nothing is
        # lost when a worker dies between its commit and the evaluation.
        self.queue_for_rules = False

    # --- the point registry -----------------------------------------------------------------------

    async def _resolve(self, con: Conn, wanted: dict[SeriesKey, str], now: int
                       ) -> dict[SeriesKey, tuple[int, str]]:
        """Series ids (and registered units) for keys not in the cache; new ones are registered with ``unit``."""
        keys = sorted(wanted)  # one lock order for every worker
        rows = await con.bulk_returning(
            "INSERT INTO series(gateway, device, point, unit, created_ms) {rows}"
            " ON CONFLICT (gateway, device, point) DO UPDATE SET unit = series.unit"
            " RETURNING id, gateway, device, point, unit",
            ("text", "text", "text", "text", "bigint"), [(*k, wanted[k], now) for k in keys])
        return {(r["gateway"], r["device"], r["point"]): (int(r["id"]), str(r["unit"])) for r in rows}

    async def series_of(self, device: str, point: str | None = None, gateway: str | None = None,
                        tenant: str | None = None) -> list[Series]:
        where, args = ["device = ?"], [device]
        for cond, val in (("point = ?", point), ("gateway = ?", gateway), (IN_TENANT, tenant)):
            if val is not None:
                where.append(cond)
                args.append(val)
        rows = await self.db.fetch("SELECT id, gateway, device, point, unit FROM series WHERE "
                                   + " AND ".join(where) + " ORDER BY point, gateway", *args)
        return [Series(int(r["id"]), r["gateway"], r["device"], r["point"], r["unit"]) for r in rows]

    # --- the group commit -------------------------------------------------------------------------

    async def commit_batch(self, batch: Batch, raw: bytes, received_ms: int) -> CommitResult:
        """One wire batch (replay, tests, the slow paths): the group commit with a group of one."""
        return (await self.commit_many([PendingBatch.from_batch(batch, raw, received_ms)], now=received_ms))[0]

    async def commit_many(self, items: list[PendingBatch], *, now: int | None = None) -> list[CommitResult]:
        """Commit many batches in one transaction (one COPY for all their readings), idempotently.

        A batch is stored at most once per (gateway, seq): the same seq with the same digest is a
        redelivery ("duplicate"); with another digest a replay or a gateway that lost its state
        ("conflict", nothing stored). A reading is stored at most once per (series, ts).
        """
        if not items:
            return []
        now = now_ms() if now is None else now
        bounds = {(p.gateway, p.seq): p.span() for p in items if p.groups}
        # Month partitions on PostgreSQL: a point every 28 days of each batch's span, and its end.
        await self.db.prepare_for({t for lo, hi in bounds.values() for t in range(lo, hi + 1, 28 * 86_400_000)}
                                  | {hi for _, hi in bounds.values()})
        new_series: dict[SeriesKey, tuple[int, str]] = {}
        for attempt in range(6):
            try:
                async with self.db.transaction() as tx:
                    results = await self._commit(tx, items, bounds, now, new_series)
                break
            except Exception as exc:
                new_series.clear()
                # Two workers touching the same latest/mark rows in one instant: redo the transaction.
                if attempt < 5 and type(exc).__name__ in ("DeadlockDetectedError", "SerializationError"):
                    await asyncio.sleep(0.01 * (attempt + 1))
                    continue
                raise
        self._series.update(new_series)  # only ids that were committed
        return results

    async def _commit(self, tx: Conn, items: list[PendingBatch], bounds: dict[tuple[str, int], tuple[int, int]],
                      now: int, new_series: dict[SeriesKey, tuple[int, str]]) -> list[CommitResult]:
        first: dict[tuple[str, int], int] = {}
        for i, p in enumerate(items):
            first.setdefault((p.gateway, p.seq), i)
        uniq = [items[i] for i in first.values()]
        inserted_rows = await tx.bulk_returning(
            "INSERT INTO batches(gateway, seq, created_ms, received_ms, n, digest, payload) {rows}"
            " ON CONFLICT DO NOTHING RETURNING gateway, seq",
            ("text", "bigint", "bigint", "bigint", "int", "text", "bytea"),
            [(p.gateway, p.seq, p.created_ms, p.received_ms, p.n, p.digest, p.raw) for p in uniq])
        new_keys = {(r["gateway"], int(r["seq"])) for r in inserted_rows}
        stored_digest: dict[tuple[str, int], str] = {}
        for p in uniq:
            if (p.gateway, p.seq) not in new_keys:
                digest = await tx.fetchval("SELECT digest FROM batches WHERE gateway = ? AND seq = ?", p.gateway, p.seq)
                stored_digest[(p.gateway, p.seq)] = digest
        fresh = [p for p in uniq if (p.gateway, p.seq) in new_keys]

        # Series ids from the cache; only when a batch names one it lacks (KeyError), one upsert for all
        # such keys, then the groups are sorted out again: in steady state every group is looked at once.
        try:
            buckets, counts, wrong, gateway_of = self._bucket(fresh, self._series)
        except KeyError:
            series = self._series
            wanted: dict[SeriesKey, str] = {}
            for p in fresh:
                gw = p.gateway
                for g in p.groups:
                    if (gw, g.device, g.point) not in series and (gw, g.device, g.point) not in wanted:
                        wanted[(gw, g.device, g.point)] = g.unit
            new_series.update(await self._resolve(tx, wanted, now))
            buckets, counts, wrong, gateway_of = self._bucket(fresh, {**series, **new_series})
        # Each group's records are zipped in C; the newest reading of a series is found per group (max and
        # index in C), the first of equal times winning, as one pass over the series' readings would.
        records: list[tuple[int, int, float, str, int]] = []
        newest: dict[int, tuple[int, float, str]] = {}
        for sid in sorted(buckets):
            top: tuple[int, float, str] | None = None
            for g, seq in buckets[sid]:
                records += zip(repeat(sid), g.ts, g.values, repeat(g.quality), repeat(seq))
                ts = max(g.ts)
                if top is None or ts > top[0]:
                    top = (ts, g.values[g.ts.index(ts)], g.quality)
            assert top is not None
            newest[sid] = top
        for key, bad in wrong.items():
            p = items[first[key]]
            await tx.execute(
                "INSERT INTO dead_letters(received_ms, topic, gateway, reason, payload) VALUES (?,?,?,?,?)",
                p.received_ms, f"unit-check/{p.gateway}", p.gateway, unit_reason(p.seq, bad), p.raw)

        inserted = await self._insert_readings(tx, records, counts, gateway_of) if records else {}
        if newest:
            sids = sorted(newest)
            await tx.bulk(
                "INSERT INTO latest(series, ts_ms, value, quality) {rows} ON CONFLICT (series) DO UPDATE SET"
                " ts_ms = excluded.ts_ms, value = excluded.value, quality = excluded.quality"
                " WHERE excluded.ts_ms > latest.ts_ms",
                ("int", "bigint", "float8", "text"), [(s, *newest[s]) for s in sids])
        spans = [(p.gateway, bounds[(p.gateway, p.seq)]) for p in fresh if (p.gateway, p.seq) in bounds]
        hours = sorted({(gw, h) for gw, (lo, hi) in spans for h in range(lo - lo % HOUR_MS, hi + 1, HOUR_MS)})
        for table in ("rollup_dirty", "anchor_pending"):
            await tx.bulk(f"INSERT INTO {table}(gateway, hour_ms) {{rows}} ON CONFLICT (gateway, hour_ms)"
                          f" DO UPDATE SET gen = {table}.gen + 1", ("text", "bigint"), hours)
        await self._touch_gateways(tx, fresh)
        if self.queue_for_rules and counts:
            await tx.bulk("INSERT INTO rules_pending(gateway, seq) {rows} ON CONFLICT (gateway, seq) DO NOTHING",
                          ("text", "bigint"), sorted(counts))

        out: list[CommitResult] = []
        for i, p in enumerate(items):
            key = (p.gateway, p.seq)
            if first[key] == i and key in new_keys:
                n = inserted.get(key, 0)
                refused = len(wrong.get(key, ()))
                out.append(CommitResult("committed", n, p.n - n - refused, refused))
            else:
                digest = stored_digest.get(key) or (items[first[key]].digest if key in new_keys else None)
                out.append(CommitResult("duplicate" if digest == p.digest else "conflict", 0, p.n))
        return out

    @staticmethod
    def _bucket(fresh: list[PendingBatch], ids: dict[SeriesKey, tuple[int, str]]
                ) -> tuple[dict[int, list[tuple[Group, int]]], dict[tuple[str, int], int],
                           dict[tuple[str, int], list[str]], dict[int, str]]:
        """Groups (with their batch's seq) by series id, kept readings per batch, unit refusals, each series'
        gateway.

        Readings go to the database grouped by series (in time order within each, as batches arrive): the
        primary key (series, ts) then takes them in index order, about 1.6x faster than unsorted. KeyError
        when a group's series is not in ``ids``.
        """
        buckets: dict[int, list[tuple[Group, int]]] = {}
        counts: dict[tuple[str, int], int] = {}
        wrong: dict[tuple[str, int], list[str]] = {}
        gateway_of: dict[int, str] = {}
        for p in fresh:
            gw, seq = p.gateway, p.seq
            kept = 0
            for g in p.groups:
                sid, unit = ids[(gw, g.device, g.point)]
                if unit != g.unit:
                    wrong.setdefault((gw, seq), []).extend(
                        f"{g.device}/{g.point}@{format_ts(ts)} in {g.unit!r}, registered {unit!r}" for ts in g.ts)
                    continue
                bucket = buckets.get(sid)
                if bucket is None:
                    bucket = buckets[sid] = []
                    gateway_of[sid] = gw
                bucket.append((g, seq))
                kept += len(g.ts)
            if kept:
                counts[(gw, seq)] = kept
        return buckets, counts, wrong, gateway_of

    async def _insert_readings(self, tx: Conn, records: list[tuple[int, int, float, str, int]],
                               counts: dict[tuple[str, int], int], gateway_of: dict[int, str]
                               ) -> dict[tuple[str, int], int]:
        """Insert and count per batch; a reading already stored (same series and time) is skipped."""
        if self.db.dialect == "postgresql":
            try:
                async with tx.con.transaction():  # type: ignore[attr-defined]  # a savepoint
                    await tx.insert_rows("readings", READING_COLS, records)
                return counts
            except Exception as exc:
                if type(exc).__name__ != "UniqueViolationError":
                    raise
            # Rare: some readings are stored already (a gateway that lost its outbox state re-sent them).
            await tx.execute("CREATE TEMP TABLE IF NOT EXISTS stage_readings (LIKE readings) ON COMMIT DROP")
            await tx.insert_rows("stage_readings", READING_COLS, records)
            rows = await tx.fetch("INSERT INTO readings SELECT * FROM stage_readings ON CONFLICT DO NOTHING"
                                  " RETURNING series, seq")
        else:
            before = int(await tx.fetchval("SELECT total_changes()"))
            # _VALUES_ROWS readings a statement: executemany's cost is per statement run, not per value bound,
            # and one run of a many-row VALUES costs SQLite about half what as many one-row runs do.
            full = len(records) - len(records) % _VALUES_ROWS
            if full:
                flat = list(chain.from_iterable(records[:full]))
                step = _VALUES_ROWS * len(READING_COLS)
                await tx.executemany(_INSERT_READINGS + ",".join((_ONE_ROW,) * _VALUES_ROWS),
                                     [flat[i:i + step] for i in range(0, len(flat), step)])
            if full < len(records):
                await tx.executemany(_INSERT_READINGS + _ONE_ROW, records[full:])
            if int(await tx.fetchval("SELECT total_changes()")) - before == len(records):
                return counts
            # Rare: some were stored already; find which batch each new one belongs to, row by row.
            rows = []
            for rec in records:
                stored_seq = await tx.fetchval("SELECT seq FROM readings WHERE series = ? AND ts_ms = ?",
                                               rec[0], rec[1])
                if stored_seq == rec[4]:
                    rows.append({"series": rec[0], "seq": rec[4]})
        got: dict[tuple[str, int], int] = {}
        for row in rows:
            key = (gateway_of[int(row["series"])], int(row["seq"]))
            got[key] = got.get(key, 0) + 1
        return got

    async def _touch_gateways(self, tx: Conn, fresh: list[PendingBatch]) -> None:
        """last_seen is a presence hint: written at most once a second per gateway, so workers do not queue."""
        seen: dict[str, int] = {}
        for p in fresh:
            seen[p.gateway] = max(seen.get(p.gateway, 0), p.received_ms)
        seen = {g: ms for g, ms in seen.items() if ms - self._seen_written.get(g, 0) >= 1000}
        if seen:
            self._seen_written.update(seen)
            await tx.executemany(
                f"UPDATE gateways SET last_seen_ms = {self.db.greatest('coalesce(last_seen_ms, 0)', '?')} WHERE id = ?",
                [(seen[g], g) for g in sorted(seen)])

    # --- reads ------------------------------------------------------------------------------------

    async def latest(self, device: str | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if device:
            where.append("s.device = ?")
            args.append(device)
        if tenant is not None:
            where.append("s." + IN_TENANT)
            args.append(tenant)
        rows = await self.db.fetch(
            "SELECT s.gateway, s.device, s.point, l.ts_ms, l.value, s.unit, l.quality FROM latest l"
            " JOIN series s ON s.id = l.series" + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY s.gateway, s.device, s.point", *args)
        for r in rows:
            r["ts"] = format_ts(r["ts_ms"])
        return rows

    async def list_devices(self, tenant: str | None = None) -> list[dict[str, Any]]:
        where, args = (" WHERE s." + IN_TENANT, (tenant,)) if tenant is not None else ("", ())
        return await self.db.fetch(
            "SELECT s.gateway, s.device, count(*) AS points, max(l.ts_ms) AS last_ts_ms FROM series s"
            " JOIN latest l ON l.series = s.id" + where + " GROUP BY s.gateway, s.device ORDER BY s.gateway, s.device",
            *args)

    async def readings(self, q: ReadingQuery) -> list[dict[str, Any]]:
        """One page, ordered by point, gateway and time; each series is an ordered index range scan."""
        out: list[dict[str, Any]] = []
        for s in await self.series_of(q.device, q.point, q.gateway, q.tenant):
            if q.after is not None and (s.point, s.gateway) < q.after[:2]:
                continue
            where, args = ["series = ?"], [s.id]
            for cond, val in (("ts_ms >= ?", q.start_ms), ("ts_ms < ?", q.end_ms)):
                if val is not None:
                    where.append(cond)
                    args.append(val)
            if q.after is not None and (s.point, s.gateway) == q.after[:2]:
                where.append("ts_ms > ?")
                args.append(q.after[2])
            rows = await self.db.fetch("SELECT ts_ms, value, quality, seq FROM readings WHERE "
                                       + " AND ".join(where) + " ORDER BY ts_ms LIMIT ?", *args, q.limit - len(out))
            out += [{"gateway": s.gateway, "device": s.device, "point": s.point, "ts_ms": r["ts_ms"],
                     "ts": format_ts(r["ts_ms"]), "value": r["value"], "unit": s.unit, "quality": r["quality"],
                     "seq": r["seq"]} for r in rows]
            if len(out) >= q.limit:
                break
        return out

    async def stream_readings(self, q: ReadingQuery, chunk: int = 5000) -> AsyncIterator[list[dict[str, Any]]]:
        """Every reading of the query, in the page order, on the export connections (a server-side cursor)."""
        for s in await self.series_of(q.device, q.point, q.gateway, q.tenant):
            where, args = ["series = ?"], [s.id]
            for cond, val in (("ts_ms >= ?", q.start_ms), ("ts_ms < ?", q.end_ms)):
                if val is not None:
                    where.append(cond)
                    args.append(val)
            async for rows in self.db.stream("SELECT ts_ms, value, quality, seq FROM readings WHERE "
                                             + " AND ".join(where) + " ORDER BY ts_ms", *args, chunk=chunk):
                yield [{"gateway": s.gateway, "device": s.device, "point": s.point, "ts_ms": r["ts_ms"],
                        "ts": format_ts(r["ts_ms"]), "value": r["value"], "unit": s.unit, "quality": r["quality"],
                        "seq": r["seq"]} for r in rows]

    async def reading(self, gateway: str, device: str, point: str, ts_ms: int) -> dict[str, Any] | None:
        return await self.db.fetchrow(
            "SELECT s.id AS series, s.gateway, s.device, s.point, r.ts_ms, r.value, s.unit, r.quality, r.seq"
            " FROM series s JOIN readings r ON r.series = s.id"
            " WHERE s.gateway = ? AND s.device = ? AND s.point = ? AND r.ts_ms = ?", gateway, device, point, ts_ms)

    async def counts(self, tenant: str | None = None) -> dict[str, int]:
        if tenant is None:
            row = await self.db.fetchrow(
                "SELECT (SELECT count(*) FROM readings) AS readings, (SELECT count(*) FROM batches) AS batches,"
                " (SELECT count(*) FROM dead_letters) AS dead_letters, (SELECT count(*) FROM gateways) AS gateways")
        else:
            row = await self.db.fetchrow(
                "SELECT (SELECT count(*) FROM readings WHERE series IN (SELECT id FROM series WHERE "
                + IN_TENANT + ")) AS readings, (SELECT count(*) FROM batches WHERE " + IN_TENANT + ") AS batches,"
                " (SELECT count(*) FROM dead_letters WHERE " + IN_TENANT + ") AS dead_letters,"
                " (SELECT count(*) FROM gateways WHERE tenant = ?) AS gateways", tenant, tenant, tenant, tenant)
        return {k: int(v) for k, v in (row or {}).items()}

    # --- completeness -----------------------------------------------------------------------------

    async def seq_gaps(self, gateway: str, limit: int = 1000) -> dict[str, Any]:
        row = await self.db.fetchrow("SELECT min(seq) AS a, max(seq) AS b, count(*) AS n FROM batches"
                                     " WHERE gateway = ?", gateway)
        gaps = await self.db.fetch(
            "SELECT seq + 1 AS first, nxt - 1 AS last FROM (SELECT seq, lead(seq) OVER (ORDER BY seq) AS nxt"
            " FROM batches WHERE gateway = ?) t WHERE nxt > seq + 1 ORDER BY first LIMIT ?", gateway, limit)
        return seq_gap_summary(gateway, (row["a"], row["b"], row["n"]) if row else None, gaps)

    async def late_batches(self, gateway: str, min_delay_ms: int, limit: int = 1000) -> list[dict[str, Any]]:
        return await self.db.fetch(
            "SELECT seq, created_ms, received_ms, n, received_ms - created_ms AS delay_ms FROM batches"
            " WHERE gateway = ? AND received_ms - created_ms >= ? ORDER BY seq LIMIT ?", gateway, min_delay_ms, limit)

    # --- hour rollups -----------------------------------------------------------------------------

    async def hour_rollups(self, q: SeriesQuery) -> list[dict[str, Any]]:
        """Hourly partials per point: materialised hours, and dirty or open hours computed from raw readings."""
        series = await self.series_of(q.device, q.point, q.gateway, q.tenant)
        if not series:
            return []
        by_id = {s.id: s for s in series}
        ids = list(by_id)
        gateways = sorted({s.gateway for s in series})
        start, end = q.start_ms - q.start_ms % HOUR_MS, q.end_ms
        dirty = {(r["gateway"], int(r["hour_ms"])) for r in await self.db.fetch(
            f"SELECT gateway, hour_ms FROM rollup_dirty WHERE gateway IN ({_marks(gateways)})"
            " AND hour_ms >= ? AND hour_ms < ?", *gateways, start, end)}
        rows = [r for r in await self.db.fetch(
            f"SELECT series, hour_ms, {', '.join(_ROLLUP_COLS)} FROM rollup_hour WHERE series IN ({_marks(ids)})"
            " AND hour_ms >= ? AND hour_ms < ?", *ids, start, end)
                if (by_id[r["series"]].gateway, int(r["hour_ms"])) not in dirty]
        for gw, lo, hi in _runs(sorted(dirty)):
            mine = [i for i in ids if by_id[i].gateway == gw]
            rows += await self.db.fetch(
                f"SELECT series, ts_ms - ts_ms % {HOUR_MS} AS hour_ms, {_HOUR_AGG} FROM readings"
                f" WHERE series IN ({_marks(mine)}) AND ts_ms >= ? AND ts_ms < ? AND ts_ms >= ? AND ts_ms < ?"
                f" GROUP BY series, ts_ms - ts_ms % {HOUR_MS}", *mine, lo, hi, q.start_ms, q.end_ms)
        out = []
        for r in rows:
            s = by_id[r["series"]]
            out.append({"gateway": s.gateway, "device": s.device, "point": s.point, **r})
        out.sort(key=lambda r: (r["point"], r["gateway"], r["hour_ms"]))
        return out

    async def refresh_hours(self, now: int, *, settle_ms: int = 120_000,
                            limit: int = _REFRESH_LIMIT) -> list[tuple[str, int]]:
        """Materialise closed dirty hours; returns the (gateway, hour) pairs recomputed."""
        marks = await self.db.fetch("SELECT gateway, hour_ms, gen FROM rollup_dirty WHERE hour_ms + ? <= ?"
                                    " ORDER BY hour_ms, gateway LIMIT ?", HOUR_MS + settle_ms, now, limit)
        done: list[tuple[str, int]] = []
        cols = ", ".join(_ROLLUP_COLS)
        for m in marks:
            gw, hour = m["gateway"], int(m["hour_ms"])
            async with self.db.transaction() as tx:
                await tx.execute(f"DELETE FROM rollup_hour WHERE hour_ms = ? AND {_GATEWAY_SERIES}", hour, gw)
                await tx.execute(
                    f"INSERT INTO rollup_hour(series, hour_ms, {cols}) SELECT series, ?, {_HOUR_AGG} FROM readings"
                    f" WHERE {_GATEWAY_SERIES} AND ts_ms >= ? AND ts_ms < ? GROUP BY series",
                    hour, gw, hour, hour + HOUR_MS)
                # Cleared only if no commit touched the hour meanwhile; otherwise it is done again later.
                await tx.execute("DELETE FROM rollup_dirty WHERE gateway = ? AND hour_ms = ? AND gen = ?",
                                 gw, hour, m["gen"])
            done.append((gw, hour))
        if done:
            for listener in self.hours_listeners:
                await listener(done)
        return done

    async def refresh_all_hours(self, now: int) -> int:
        """``refresh_hours`` round after round until no closed dirty hour is left (a day of backfill is
        many rounds); returns how many (gateway, hour) pairs were recomputed."""
        total = 0
        while True:
            done = await self.refresh_hours(now)
            total += len(done)
            if len(done) < _REFRESH_LIMIT:
                return total


def _runs(hours: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """Consecutive dirty hours of one gateway as [lo, hi) ranges: one query each."""
    out: list[tuple[str, int, int]] = []
    for gw, h in hours:
        if out and out[-1][0] == gw and out[-1][2] == h:
            out[-1] = (gw, out[-1][1], h + HOUR_MS)
        else:
            out.append((gw, h, h + HOUR_MS))
    return out
