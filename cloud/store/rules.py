"""Rules as data: versions of each rule, rule-set versions, sets by hash, silences, provenance, derived values.

Every change to a rule (create, edit, enable, delete) is a new row in ``rule_versions`` with who, when
and the rule's content hash; a deletion is a version without a document. Each change also records a
new tenant rule-set version (``rule_sets``) in the same transaction: the gateway set and the cloud set
built from the current rules and silences (``rules_model.build_sets``), both stored by their SHA-256 in
``rule_blobs``, where gateways fetch them (delivery by hash, see cloud/rules_delivery.py).

Alerts live in ``store.rules.alerts`` (cloud/store/alerts.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from carbonlink.rules import RuleDoc, RuleSetDoc
from carbonlink.rules.compiler import Catalogue
from carbonlink.rules.document import canonical_json

from .alerts import Alerts
from .db import Conn, Database
from .rules_model import (
    BuiltSets,
    RuleRecord,
    RulesConflict,
    RuleSetRecord,
    SilenceRecord,
    build_sets,
    dumps,
)

_RULE_COLS = "tenant, rule, version, doc, hash, placement, created_ms, created_by, comment"
_SET_COLS = "tenant, version, hash, cloud_hash, doc, rules, silences, created_ms, created_by, reason"
_SILENCE_COLS = ("tenant, id, rule, gateway, device, point, start_ms, end_ms, reason, created_by, created_ms,"
                 " ended_ms, ended_by")
_CURRENT = ("version = (SELECT max(version) FROM rule_versions m WHERE m.tenant = rule_versions.tenant"
            " AND m.rule = rule_versions.rule)")


def _rule(row: dict[str, Any]) -> RuleRecord:
    doc = RuleDoc.model_validate_json(row["doc"]) if row["doc"] is not None else None
    return RuleRecord(row["tenant"], row["rule"], int(row["version"]), doc, row["hash"], row["placement"],
                      int(row["created_ms"]), row["created_by"], row["comment"])


def _set(row: dict[str, Any], with_doc: bool = False) -> RuleSetRecord:
    return RuleSetRecord(row["tenant"], int(row["version"]), row["hash"], row["cloud_hash"], int(row["rules"]),
                         int(row["silences"]), int(row["created_ms"]), row["created_by"], row["reason"],
                         json.loads(row["doc"]) if with_doc else {})


def _silence(row: dict[str, Any]) -> SilenceRecord:
    return SilenceRecord(row["tenant"], row["id"], int(row["start_ms"]), int(row["end_ms"]), row["reason"],
                         row["created_by"], int(row["created_ms"]), row["rule"], row["gateway"], row["device"],
                         row["point"], row["ended_ms"], row["ended_by"])


def _is_duplicate_key(exc: BaseException) -> bool:
    return type(exc).__name__ in ("UniqueViolationError", "IntegrityError")


class Rules:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.alerts = Alerts(db)

    # --- the committed-batch queue for cloud evaluation --------------------------------------------

    async def take_lease(self, name: str, owner: str, now: int, ttl_ms: int) -> bool:
        """Hold (or renew) the named lease until ``now + ttl_ms``; False while another owner's is live."""
        await self.db.execute(
            "INSERT INTO leases(name, owner, until_ms) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " owner = excluded.owner, until_ms = excluded.until_ms"
            " WHERE leases.owner = excluded.owner OR leases.until_ms < ?", name, owner, now + ttl_ms, now)
        return await self.db.fetchval("SELECT owner FROM leases WHERE name = ?", name) == owner

    async def release_lease(self, name: str, owner: str) -> None:
        await self.db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", name, owner)

    async def pending_batches(self, limit: int = 200) -> list[dict[str, Any]]:
        """The longest-queued batches with their raw payloads, each gateway's in sequence order (taking
        them in queue order means a busy gateway never starves a quiet one)."""
        rows = await self.db.fetch(
            "SELECT q.gateway, q.seq, b.payload FROM rules_pending q"
            " LEFT JOIN batches b ON b.gateway = q.gateway AND b.seq = q.seq ORDER BY q.id LIMIT ?", limit)
        return sorted(rows, key=lambda r: (r["gateway"], int(r["seq"])))

    async def done_batches(self, keys: Iterable[tuple[str, int]]) -> None:
        rows = sorted(set(keys))
        if rows:
            await self.db.executemany("DELETE FROM rules_pending WHERE gateway = ? AND seq = ?", rows)

    async def pending_count(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM rules_pending"))

    # --- rules and their versions --------------------------------------------------------------------

    async def save_rule(self, tenant: str, doc: RuleDoc, placement: str, *, by: str, now: int,
                        base_version: int | None = None, comment: str = "") -> tuple[RuleRecord, RuleSetRecord | None]:
        """Store ``doc`` as the rule's next version (its ``version`` field is set here).

        Nothing is written when the rule is unchanged (same document and placement): the current record
        and None come back. ``base_version`` (the version the caller edited) makes a stale edit a
        ``RulesConflict``.
        """
        for attempt in range(3):
            try:
                async with self.db.transaction() as tx:
                    cur = await self._current(tx, tenant, doc.id)
                    cur_version = cur.version if cur is not None else 0
                    if base_version is not None and base_version != cur_version:
                        raise RulesConflict(f"rule {doc.id!r} is at version {cur_version}, not {base_version};"
                                            " reload it and apply your change again")
                    if cur is not None and cur.doc is not None and cur.placement == placement and \
                            cur.doc.model_copy(update={"version": 1}) == doc.model_copy(update={"version": 1}):
                        return cur, None
                    stored = doc.model_copy(update={"version": cur_version + 1})
                    rec = RuleRecord(tenant, doc.id, cur_version + 1, stored, stored.content_hash(), placement, now,
                                     by, comment)
                    await self._insert_version(tx, rec)
                    rs = await self._record_set(tx, tenant, by, now, f"rule {doc.id} v{rec.version}"
                                                + (" created" if cur is None or cur.doc is None else " changed"))
                    return rec, rs
            except Exception as exc:
                if attempt < 2 and _is_duplicate_key(exc):  # a concurrent writer took the version number
                    continue
                raise
        raise RulesConflict(f"rule {doc.id!r} kept changing under this update; retry")  # pragma: no cover

    async def delete_rule(self, tenant: str, rule: str, *, by: str, now: int, base_version: int | None = None
                          ) -> tuple[RuleRecord, RuleSetRecord] | None:
        """Record a deletion as a version without a document; None when there is no such rule."""
        async with self.db.transaction() as tx:
            cur = await self._current(tx, tenant, rule)
            if cur is None or cur.doc is None:
                return None
            if base_version is not None and base_version != cur.version:
                raise RulesConflict(f"rule {rule!r} is at version {cur.version}, not {base_version}")
            rec = RuleRecord(tenant, rule, cur.version + 1, None, "", cur.placement, now, by, "deleted")
            await self._insert_version(tx, rec)
            rs = await self._record_set(tx, tenant, by, now, f"rule {rule} deleted")
            return rec, rs

    async def _insert_version(self, tx: Conn, rec: RuleRecord) -> None:
        await tx.execute(f"INSERT INTO rule_versions({_RULE_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                         rec.tenant, rec.id, rec.version,
                         rec.doc.model_dump_json() if rec.doc is not None else None, rec.hash, rec.placement,
                         rec.created_ms, rec.created_by, rec.comment)

    async def _current(self, con: Conn, tenant: str, rule: str) -> RuleRecord | None:
        row = await con.fetchrow(f"SELECT {_RULE_COLS} FROM rule_versions WHERE tenant = ? AND rule = ?"
                                 " ORDER BY version DESC LIMIT 1", tenant, rule)
        return _rule(row) if row else None

    async def rule(self, tenant: str, rule: str, version: int | None = None) -> RuleRecord | None:
        if version is None:
            return await self._current(self.db, tenant, rule)
        row = await self.db.fetchrow(f"SELECT {_RULE_COLS} FROM rule_versions WHERE tenant = ? AND rule = ?"
                                     " AND version = ?", tenant, rule, version)
        return _rule(row) if row else None

    async def rules(self, tenant: str, *, enabled: bool | None = None, placement: str | None = None,
                    search: str | None = None) -> list[RuleRecord]:
        """The current version of every rule that is not deleted, by id."""
        rows = await self.db.fetch(f"SELECT {_RULE_COLS} FROM rule_versions WHERE tenant = ? AND {_CURRENT}"
                                   " AND doc IS NOT NULL ORDER BY rule", tenant)
        out = [_rule(r) for r in rows]
        if enabled is not None:
            out = [r for r in out if r.doc is not None and r.doc.enabled is enabled]
        if placement is not None:
            out = [r for r in out if r.placement == placement]
        if search:
            needle = search.lower()
            out = [r for r in out if r.doc is not None and (needle in r.id or needle in r.doc.text.lower()
                                                            or needle in r.doc.description.lower())]
        return out

    async def versions(self, tenant: str, rule: str, *, limit: int = 100,
                       before: int | None = None) -> list[RuleRecord]:
        rows = await self.db.fetch(f"SELECT {_RULE_COLS} FROM rule_versions WHERE tenant = ? AND rule = ?"
                                   " AND version < ? ORDER BY version DESC LIMIT ?", tenant, rule,
                                   before if before is not None else 2**31 - 1, limit)
        return [_rule(r) for r in rows]

    # --- rule sets: versions and blobs by hash ---------------------------------------------------------

    async def _record_set(self, tx: Conn, tenant: str, by: str, now: int, reason: str) -> RuleSetRecord:
        rows = await tx.fetch(f"SELECT {_RULE_COLS} FROM rule_versions WHERE tenant = ? AND {_CURRENT}"
                              " AND doc IS NOT NULL", tenant)
        silences = [_silence(r) for r in await tx.fetch(
            f"SELECT {_SILENCE_COLS} FROM silences WHERE tenant = ? AND end_ms > ? AND (ended_ms IS NULL OR"
            " ended_ms > ?)", tenant, now, now)]
        gateways = [str(r["id"]) for r in await tx.fetch(
            "SELECT id FROM gateways WHERE tenant = ? AND revoked = ? ORDER BY id", tenant, False)]
        built: BuiltSets = build_sets([_rule(r) for r in rows], silences, gateways, now)
        version = int(await tx.fetchval("SELECT coalesce(max(version), 0) FROM rule_sets WHERE tenant = ?",
                                        tenant)) + 1
        h = await self._put_blob(tx, tenant, built.gateway, now)
        ch = await self._put_blob(tx, tenant, built.cloud, now)
        rec = RuleSetRecord(tenant, version, h, ch, len(built.gateway.rules), len(built.gateway.silences), now, by,
                            reason[:300], built.summary)
        await tx.execute(f"INSERT INTO rule_sets({_SET_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)", tenant, version, h, ch,
                         dumps(built.summary), rec.rules, rec.silences, now, by, rec.reason)
        return rec

    async def _put_blob(self, con: Conn, tenant: str, doc: RuleSetDoc, now: int) -> str:
        text = canonical_json(doc.model_dump(mode="json")).decode()
        h = doc.content_hash()
        await con.execute("INSERT INTO rule_blobs(tenant, hash, doc, bytes, created_ms) VALUES (?,?,?,?,?)"
                          " ON CONFLICT DO NOTHING", tenant, h, text, len(text), now)
        return h

    async def put_blob(self, tenant: str, doc: RuleSetDoc, now: int) -> str:
        """Keep a rule set by its hash for delivery (a set pushed from a file, not from the tenant's rules)."""
        return await self._put_blob(self.db, tenant, doc, now)

    async def blob(self, tenant: str, hash_: str) -> str | None:
        """The canonical JSON of a set this tenant stored, by its hash."""
        v = await self.db.fetchval("SELECT doc FROM rule_blobs WHERE tenant = ? AND hash = ?", tenant, hash_)
        return None if v is None else str(v)

    async def record_set(self, tenant: str, *, by: str, now: int, reason: str) -> RuleSetRecord:
        """A new set version from what is current now (e.g. after a silence, or when a silence ended)."""
        async with self.db.transaction() as tx:
            return await self._record_set(tx, tenant, by, now, reason)

    async def current_set(self, tenant: str, *, with_doc: bool = False) -> RuleSetRecord | None:
        row = await self.db.fetchrow(f"SELECT {_SET_COLS} FROM rule_sets WHERE tenant = ? ORDER BY version DESC"
                                     " LIMIT 1", tenant)
        return _set(row, with_doc) if row else None

    async def set_version(self, tenant: str, version: int) -> RuleSetRecord | None:
        row = await self.db.fetchrow(f"SELECT {_SET_COLS} FROM rule_sets WHERE tenant = ? AND version = ?",
                                     tenant, version)
        return _set(row, True) if row else None

    async def set_versions(self, tenant: str, *, limit: int = 50, before: int | None = None) -> list[RuleSetRecord]:
        rows = await self.db.fetch(f"SELECT {_SET_COLS} FROM rule_sets WHERE tenant = ? AND version < ?"
                                   " ORDER BY version DESC LIMIT ?", tenant,
                                   before if before is not None else 2**31 - 1, limit)
        return [_set(r) for r in rows]

    async def sets_by_hash(self, tenant: str, hashes: Iterable[str]) -> dict[str, int]:
        """hash -> the newest set version with that gateway hash (what a gateway reports it applied)."""
        wanted = sorted(set(hashes))
        if not wanted:
            return {}
        rows = await self.db.fetch(f"SELECT hash, max(version) AS v FROM rule_sets WHERE tenant = ? AND hash IN"
                                   f" ({','.join('?' * len(wanted))}) GROUP BY hash", tenant, *wanted)
        return {r["hash"]: int(r["v"]) for r in rows}

    async def latest_versions(self) -> dict[str, tuple[int, str]]:
        """tenant -> (newest set version, its cloud hash): what the cloud's evaluation should run."""
        rows = await self.db.fetch("SELECT s.tenant, s.version, s.cloud_hash FROM rule_sets s WHERE s.version ="
                                   " (SELECT max(version) FROM rule_sets m WHERE m.tenant = s.tenant)")
        return {r["tenant"]: (int(r["version"]), r["cloud_hash"]) for r in rows}

    async def catalogue(self, tenant: str) -> Catalogue | None:
        """The tenant's points (device -> point -> unit) from the series the cloud stored; None if it has none."""
        rows = await self.db.fetch("SELECT device, point, unit FROM series WHERE gateway IN"
                                   " (SELECT id FROM gateways WHERE tenant = ?) ORDER BY device, point", tenant)
        if not rows:
            return None
        devices: dict[str, dict[str, str]] = {}
        for r in rows:
            devices.setdefault(r["device"], {}).setdefault(r["point"], r["unit"])
        return Catalogue(devices)

    # --- silences --------------------------------------------------------------------------------------

    async def add_silence(self, s: SilenceRecord) -> RuleSetRecord:
        async with self.db.transaction() as tx:
            await tx.execute(f"INSERT INTO silences({_SILENCE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                             s.tenant, s.id, s.rule, s.gateway, s.device, s.point, s.start_ms, s.end_ms, s.reason,
                             s.created_by, s.created_ms, s.ended_ms, s.ended_by)
            return await self._record_set(tx, s.tenant, s.created_by, s.created_ms, f"silence {s.id} added")

    async def end_silence(self, tenant: str, silence_id: str, *, by: str, now: int
                          ) -> tuple[SilenceRecord, RuleSetRecord | None] | None:
        """End a silence now (it stays listed, with who ended it); None when there is no such silence."""
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(f"SELECT {_SILENCE_COLS} FROM silences WHERE tenant = ? AND id = ?",
                                    tenant, silence_id)
            if row is None:
                return None
            s = _silence(row)
            if s.effective_end <= now:
                return s, None
            await tx.execute("UPDATE silences SET ended_ms = ?, ended_by = ? WHERE tenant = ? AND id = ?",
                             now, by, tenant, silence_id)
            rs = await self._record_set(tx, tenant, by, now, f"silence {silence_id} ended")
            row = await tx.fetchrow(f"SELECT {_SILENCE_COLS} FROM silences WHERE tenant = ? AND id = ?",
                                    tenant, silence_id)
            assert row is not None
            return _silence(row), rs

    async def silences(self, tenant: str, *, active_at: int | None = None, include_ended: bool = True,
                       limit: int = 500) -> list[SilenceRecord]:
        where: list[str] = ["tenant = ?"]
        args: list[Any] = [tenant]
        if active_at is not None:
            where += ["start_ms <= ?", "end_ms > ?", "(ended_ms IS NULL OR ended_ms > ?)"]
            args += [active_at, active_at, active_at]
        elif not include_ended:
            where.append("ended_ms IS NULL")
        rows = await self.db.fetch(f"SELECT {_SILENCE_COLS} FROM silences WHERE " + " AND ".join(where)
                                   + " ORDER BY start_ms DESC, id LIMIT ?", *args, limit)
        return [_silence(r) for r in rows]

    async def silence_covering(self, tenant: str, rule: str, gateway: str, device: str | None, point: str | None,
                               ts_ms: int) -> SilenceRecord | None:
        rows = await self.db.fetch(
            f"SELECT {_SILENCE_COLS} FROM silences WHERE tenant = ? AND start_ms <= ? AND end_ms > ?"
            " ORDER BY start_ms, id", tenant, ts_ms, ts_ms)
        return next((s for s in map(_silence, rows) if s.covers(rule, gateway, device, point, ts_ms)), None)

    # --- provenance of derived readings ------------------------------------------------------------------

    async def add_derivation(self, gateway: str, device: str, point: str, from_ts: int, *, rule: str, version: int,
                             hash_: str, unit: str, text: str, inputs: list[str], event: str | None,
                             received_ms: int) -> bool:
        """A ``rule.derivation`` event from a gateway: from ``from_ts`` this point is produced by that rule version."""
        return await self.db.execute(
            "INSERT INTO rule_derivations(gateway, device, point, from_ts, hash, rule, version, unit, rule_text,"
            " inputs, event, received_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            gateway, device, point, from_ts, hash_, rule, version, unit, text, dumps(inputs), event,
            received_ms) == 1

    async def derivation_of(self, gateway: str, device: str, point: str, ts_ms: int) -> dict[str, Any] | None:
        """Which rule version a gateway said produced this derived point at ``ts_ms`` (the latest from <= ts)."""
        row = await self.db.fetchrow(
            "SELECT gateway, device, point, from_ts, hash, rule, version, unit, rule_text, inputs, event, received_ms"
            " FROM rule_derivations WHERE gateway = ? AND device = ? AND point = ? AND from_ts <= ?"
            " ORDER BY from_ts DESC, received_ms DESC LIMIT 1", gateway, device, point, ts_ms)
        if row is None:
            return None
        row["inputs"] = json.loads(row["inputs"])
        row["text"] = row.pop("rule_text")
        return row

    # --- readings the cloud derived (never in ``readings``: those are what devices signed) ---------------

    async def add_derived(self, tenant: str, rows: list[tuple[Any, ...]], now: int) -> None:
        """Rows of (gateway, device, point, ts_ms, value, unit, quality, rule, version, rule_hash, window_start,
        window_end, inputs); the first value computed for a (gateway, device, point, ts) is kept."""
        if not rows:
            return
        await self.db.bulk(
            "INSERT INTO derived_readings(tenant, gateway, device, point, ts_ms, value, unit, quality, rule, version,"
            " rule_hash, window_start, window_end, inputs, created_ms) {rows} ON CONFLICT DO NOTHING",
            ("text", "text", "text", "text", "bigint", "float8", "text", "text", "text", "int", "text", "bigint",
             "bigint", "text", "bigint"),
            [(tenant, *r[:12], dumps(r[12]), now) for r in rows])

    async def derived(self, tenant: str, *, device: str | None = None, point: str | None = None,
                      gateway: str | None = None, start_ms: int | None = None, end_ms: int | None = None,
                      limit: int = 1000, after: tuple[str, str, str, int] | None = None) -> list[dict[str, Any]]:
        where: list[str] = ["tenant = ?"]
        args: list[Any] = [tenant]
        for cond, val in (("device = ?", device), ("point = ?", point), ("gateway = ?", gateway),
                          ("ts_ms >= ?", start_ms), ("ts_ms < ?", end_ms)):
            if val is not None:
                where.append(cond)
                args.append(val)
        if after is not None:
            where.append("(gateway > ? OR (gateway = ? AND (device > ? OR (device = ? AND (point > ? OR"
                         " (point = ? AND ts_ms > ?))))))")
            args += [after[0], after[0], after[1], after[1], after[2], after[2], after[3]]
        rows = await self.db.fetch(
            "SELECT gateway, device, point, ts_ms, value, unit, quality, rule, version, rule_hash, window_start,"
            " window_end, inputs, created_ms FROM derived_readings WHERE " + " AND ".join(where)
            + " ORDER BY gateway, device, point, ts_ms LIMIT ?", *args, limit)
        for r in rows:
            r["inputs"] = json.loads(r["inputs"])
        return rows
