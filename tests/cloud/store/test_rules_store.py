"""store.rules on SQLite and PostgreSQL: rule versions, rule-set versions by hash, silences, provenance,
readings the cloud derived, and alerts merged in any order."""

from __future__ import annotations

import itertools
import json

import pytest

from carbonlink.cloud.store import PendingBatch, Store
from carbonlink.cloud.store.alerts import AlertChange
from carbonlink.cloud.store.rules_model import AlertQuery, RulesConflict, SilenceRecord
from carbonlink.kernel.wire import Batch, Reading
from carbonlink.rules import RuleDoc, RuleSetDoc
from carbonlink.rules.alerts import LifecycleError, alert_id

T0 = 1_767_225_600_000
HIGH = "SELECT value FROM '+/so2' RAISE WHEN value > 200 mg/m3"
HOOK = {"type": "webhook", "url": "https://ops.example/hook", "secret": "ops"}


async def _tenant(store: Store, tenant: str = "acme", gateways: tuple[str, ...] = ("gw-1", "gw-2")) -> None:
    for gw in gateways:
        await store.registry.register_gateway(gw, f"{tenant}-site", "ed25519", "00" * 32, tenant=tenant)


async def test_every_change_is_a_version_with_who_when_and_hash(store: Store) -> None:
    await _tenant(store)
    r = store.rules
    rec, rs = await r.save_rule("acme", RuleDoc(id="so2-high", text=HIGH), "both", by="ana", now=T0)
    assert (rec.version, rec.created_by, rec.created_ms) == (1, "ana", T0) and rs is not None and rs.version == 1
    assert rec.doc is not None and rec.doc.version == 1 and rec.hash == rec.doc.content_hash()
    same, none = await r.save_rule("acme", RuleDoc(id="so2-high", version=7, text=HIGH), "both", by="bo", now=T0 + 1)
    assert none is None and same.version == 1  # unchanged: no new version (the given version is not the stored one)
    v2, rs2 = await r.save_rule("acme", RuleDoc(id="so2-high", text=HIGH, severity="critical"), "both", by="bo",
                                now=T0 + 2, base_version=1)
    assert v2.version == 2 and v2.hash != rec.hash and rs2 is not None and rs2.version == 2
    with pytest.raises(RulesConflict, match="at version 2, not 1"):
        await r.save_rule("acme", RuleDoc(id="so2-high", text=HIGH, enabled=False), "both", by="cy", now=T0 + 3,
                          base_version=1)
    await r.save_rule("acme", RuleDoc(id="nox", text="SELECT value FROM '+/nox'"), "cloud", by="ana", now=T0 + 4)
    gone = await r.delete_rule("acme", "nox", by="ana", now=T0 + 5)
    assert gone is not None and gone[0].deleted and gone[0].version == 2
    assert await r.delete_rule("acme", "nox", by="ana", now=T0 + 6) is None
    assert [x.id for x in await r.rules("acme")] == ["so2-high"]
    assert [(x.version, x.created_by) for x in await r.versions("acme", "so2-high")] == [(2, "bo"), (1, "ana")]
    old = await r.rule("acme", "so2-high", 1)
    assert old is not None and old.doc is not None and old.doc.severity.value == "warning"
    assert await r.rules("other") == [] and await r.rule("other", "so2-high") is None
    sets = await r.set_versions("acme")
    assert [s.version for s in sets] == [4, 3, 2, 1] and sets[0].reason == "rule nox deleted"


async def test_sets_split_by_placement_and_are_fetched_by_hash_per_tenant(store: Store) -> None:
    await _tenant(store)
    await _tenant(store, "other", ("gw-9",))
    r = store.rules
    await r.save_rule("acme", RuleDoc(id="edge-only", text=HIGH, actions=[HOOK]), "edge", by="a", now=T0)
    await r.save_rule("acme", RuleDoc(id="cloud-only", text=HIGH, actions=[HOOK]), "cloud", by="a", now=T0)
    _, rs = await r.save_rule("acme", RuleDoc(id="both", text=HIGH, actions=[
        HOOK, {"type": "derive", "point": "x"}]), "both", by="a", now=T0)
    assert rs is not None
    gw_text = await r.blob("acme", rs.hash)
    cloud_text = await r.blob("acme", rs.cloud_hash)
    assert gw_text is not None and cloud_text is not None
    gw_set, cloud_set = RuleSetDoc.model_validate_json(gw_text), RuleSetDoc.model_validate_json(cloud_text)
    assert gw_set.content_hash() == rs.hash and cloud_set.content_hash() == rs.cloud_hash
    assert [x.id for x in gw_set.rules] == ["both", "edge-only"]
    assert [x.id for x in cloud_set.rules] == ["both", "cloud-only"]
    # "both" notifies from the gateway only; the cloud keeps its derive action
    assert [a.type for a in cloud_set.rules[0].actions] == ["derive"]
    assert [a.type for a in gw_set.rules[0].actions] == ["webhook", "derive"]
    assert await r.blob("other", rs.hash) is None  # another tenant cannot fetch it
    assert await r.sets_by_hash("acme", [rs.hash, "f" * 64]) == {rs.hash: rs.version}
    assert (await r.latest_versions())["acme"] == (rs.version, rs.cloud_hash)
    full = await r.set_version("acme", rs.version)
    assert full is not None and {x["id"]: x["placement"] for x in full.doc["rules"]} == {
        "both": "both", "cloud-only": "cloud", "edge-only": "edge"}


async def test_silences_reach_both_sets_expand_devices_and_end(store: Store) -> None:
    await _tenant(store)
    r = store.rules
    await r.save_rule("acme", RuleDoc(id="so2-high", text=HIGH), "both", by="a", now=T0)
    day = 86_400_000
    rs = await r.add_silence(SilenceRecord("acme", "m1", T0, T0 + day, "calibration", "ops", T0, device="cems-1"))
    rs = await r.add_silence(SilenceRecord("acme", "m2", T0, T0 + day, "all of gw-2", "ops", T0 + 1,
                                           rule="so2-high", gateway="gw-2"))
    text = await r.blob("acme", rs.hash)
    assert text is not None
    subjects = sorted((s.id, s.subject) for s in RuleSetDoc.model_validate_json(text).silences)
    assert subjects == [("m1", "gw-1/cems-1"), ("m1", "gw-2/cems-1"), ("m2", "gw-2")]
    cover = await r.silence_covering("acme", "so2-high", "gw-1", "cems-1", "so2", T0 + 5)
    assert cover is not None and cover.id == "m1"
    assert await r.silence_covering("acme", "so2-high", "gw-1", "cems-2", "so2", T0 + 5) is None
    assert await r.silence_covering("acme", "so2-high", "gw-1", "cems-1", "so2", T0 + day) is None
    ended = await r.end_silence("acme", "m1", by="ops", now=T0 + 10)
    assert ended is not None and ended[0].ended_by == "ops" and ended[1] is not None
    assert await r.silence_covering("acme", "so2-high", "gw-1", "cems-1", "so2", T0 + 11) is None
    text = await r.blob("acme", ended[1].hash)
    assert text is not None and [s.id for s in RuleSetDoc.model_validate_json(text).silences] == ["m2"]
    again = await r.end_silence("acme", "m1", by="ops", now=T0 + 12)
    assert again is not None and again[1] is None  # already over: no new set
    assert await r.end_silence("acme", "nope", by="ops", now=T0) is None
    assert [s.id for s in await r.silences("acme", active_at=T0 + 20)] == ["m2"]
    assert {s.id for s in await r.silences("acme")} == {"m1", "m2"}


def _raised(gw: str = "gw-1", since: int = T0, ts: int = T0 + 60_000, subject: str | None = None,
            severity: str = "critical") -> AlertChange:
    subject = subject or f"{gw}/cems-1/so2"
    return AlertChange("raised", alert_id("so2-high", subject, since), "so2-high", subject, gw, ts, since, 3,
                       severity, "cems-1", "so2", {"value": 250.0}, ({"device": "cems-1", "value": 250.0},))


def _cleared(c: AlertChange, ts: int) -> AlertChange:
    return AlertChange("cleared", c.id, c.rule, c.subject, c.gateway, ts, c.since_ms, c.version, c.severity,
                       c.device, c.point, {"value": 150.0}, ())


async def test_alert_merging_is_idempotent_and_order_independent(store: Store) -> None:
    up = _raised()
    down = _cleared(up, T0 + 120_000)
    finals = []
    for n, order in enumerate(itertools.permutations([("gateway", up), ("cloud", up), ("gateway", down)])):
        tenant = f"t{n}"
        for source, change in order:
            await store.rules.alerts.merge(tenant, change, source, T0)
        rec, changed = await store.rules.alerts.merge(tenant, up, "gateway", T0)  # a redelivery
        assert not changed
        finals.append((rec.alert, rec.sources))
    assert all(f == finals[0] for f in finals)
    alert, sources = finals[0]
    assert (alert.raised_ms, alert.since_ms, alert.cleared_ms, alert.cleared_by) == (
        T0 + 60_000, T0, T0 + 120_000, "auto")
    assert sources == ("cloud", "gateway") and alert.values == {"value": 250.0} and alert.severity == "critical"


async def test_lifecycle_duplicates_and_gateway_ownership(store: Store) -> None:
    a = store.rules.alerts
    first = _raised()
    rec, _ = await a.merge("acme", first, "gateway", T0)
    assert rec.alert.state.value == "raised"
    acked = await a.acknowledge("acme", first.id, by="ana", now=T0 + 1, note="on it")
    assert acked is not None and (acked.alert.acked_by, acked.alert.acked_ms, acked.note) == ("ana", T0 + 1, "on it")
    with pytest.raises(LifecycleError, match="already acknowledged by ana"):
        await a.acknowledge("acme", first.id, by="bo", now=T0 + 2)
    # The cloud restarted and raised the same condition again with another start: a duplicate of the open one.
    dup = _raised(since=T0 + 30_000, ts=T0 + 90_000)
    rec, _ = await a.merge("acme", dup, "cloud", T0 + 3)
    assert rec.duplicate_of == first.id
    with pytest.raises(PermissionError):  # gw-2 cannot clear gw-1's alert by naming its id
        forged = AlertChange("cleared", first.id, "so2-high", first.subject, "gw-2", T0 + 4, T0)
        await a.merge("acme", forged, "gateway", T0 + 4)
    cleared = await a.clear("acme", first.id, by="bo", now=T0 + 5)
    assert cleared is not None and (cleared.alert.cleared_by, cleared.alert.state.value) == ("bo", "cleared")
    with pytest.raises(LifecycleError, match="already cleared"):
        await a.clear("acme", first.id, by="bo", now=T0 + 6)
    # the condition's own clear later keeps the earlier, manual one
    rec, changed = await a.merge("acme", _cleared(first, T0 + 100), "gateway", T0 + 7)
    assert not changed and (rec.alert.cleared_by, rec.alert.cleared_ms) == ("bo", T0 + 5)
    assert await a.acknowledge("acme", "0" * 32, by="x", now=T0) is None
    assert await a.get("other", first.id) is None


async def test_alert_lists_filter_page_and_count(store: Store) -> None:
    a = store.rules.alerts
    ids = []
    for i in range(7):
        gw = "gw-1" if i % 2 == 0 else "gw-2"
        c = _raised(gw, since=T0 + i * 1000, ts=T0 + i * 1000, subject=f"{gw}/cems-{i}/so2",
                    severity="critical" if i < 3 else "warning")
        await a.merge("acme", c, "cloud", T0)
        ids.append(c.id)
    await a.acknowledge("acme", ids[0], by="ana", now=T0)
    await a.clear("acme", ids[1], by="ana", now=T0)
    await a.merge("other", _raised("gw-9"), "cloud", T0)
    page = await a.list(AlertQuery("acme", limit=3))
    assert [r.alert.id for r in page] == [ids[6], ids[5], ids[4]]
    after = (page[-1].ts_ms, page[-1].alert.id)
    rest = await a.list(AlertQuery("acme", limit=10, after=after))
    assert [r.alert.id for r in rest] == [ids[3], ids[2], ids[1], ids[0]]
    assert {r.alert.id for r in await a.list(AlertQuery("acme", states=("raised", "acknowledged"),
                                                        gateway="gw-1"))} == {ids[0], ids[2], ids[4], ids[6]}
    assert [r.alert.id for r in await a.list(AlertQuery("acme", subject="gw-2/cems-3"))] == [ids[3]]
    assert await a.list(AlertQuery("acme", subject="gw-2/cems")) == []  # whole segments only
    assert len(await a.list(AlertQuery("acme", severities=("critical",), start_ms=T0 + 1000))) == 2
    counts = await a.counts(AlertQuery("acme", states=("cleared",)))
    assert counts["by_state"] == {"raised": 5, "acknowledged": 1, "cleared": 1} and counts["total"] == 7
    assert counts["open_by_severity"] == {"critical": 2, "warning": 4, "info": 0} and counts["open"] == 6


async def test_provenance_and_cloud_derived_readings(store: Store) -> None:
    r = store.rules
    kw = {"rule": "so2-ref", "unit": "mg/m³", "text": "SELECT ...", "inputs": ["o2"], "event": "e1",
          "received_ms": T0}
    assert await r.add_derivation("gw-1", "cems-1", "rule:so2-ref:c", T0, version=1, hash_="a" * 64, **kw)
    assert not await r.add_derivation("gw-1", "cems-1", "rule:so2-ref:c", T0, version=1, hash_="a" * 64, **kw)
    await r.add_derivation("gw-1", "cems-1", "rule:so2-ref:c", T0 + 3600_000, version=2, hash_="b" * 64, **kw)
    assert await r.derivation_of("gw-1", "cems-1", "rule:so2-ref:c", T0 - 1) is None
    got = await r.derivation_of("gw-1", "cems-1", "rule:so2-ref:c", T0 + 5)
    assert got is not None and (got["version"], got["inputs"], got["text"]) == (1, ["o2"], "SELECT ...")
    got = await r.derivation_of("gw-1", "cems-1", "rule:so2-ref:c", T0 + 3600_000)
    assert got is not None and got["version"] == 2
    row = ("gw-1", "cems-1", "rule:so2-ref:c", T0, 123.5, "mg/m³", "N", "so2-ref", 1, "a" * 64, None, None,
           [["cems-1", "so2", T0], ["cems-1", "o2", T0]])
    await r.add_derived("acme", [row, (*row[:3], T0 + 1000, 99.0, *row[5:])], T0)
    await r.add_derived("acme", [(*row[:4], 1.0, *row[5:])], T0)  # the first value computed is kept
    got_rows = await r.derived("acme", device="cems-1")
    assert [(x["ts_ms"], x["value"]) for x in got_rows] == [(T0, 123.5), (T0 + 1000, 99.0)]
    assert got_rows[0]["inputs"] == [["cems-1", "so2", T0], ["cems-1", "o2", T0]]
    after = (got_rows[0]["gateway"], got_rows[0]["device"], got_rows[0]["point"], got_rows[0]["ts_ms"])
    assert [x["ts_ms"] for x in await r.derived("acme", after=after)] == [T0 + 1000]
    assert await r.derived("other") == []
    # never mixed with what devices signed
    assert await store.data.reading("gw-1", "cems-1", "rule:so2-ref:c", T0) is None


async def test_catalogue_comes_from_the_tenants_series(store: Store) -> None:
    await _tenant(store)
    assert await store.rules.catalogue("acme") is None
    b = Batch("gw-1", 1, T0, (Reading.make("cems-1", "so2", T0, 1.0, "mg/m³"),
                              Reading.make("cems-1", "o2", T0, 5.0, "%")))

    await store.data.commit_many([PendingBatch.from_batch(b, json.dumps({"x": 1}).encode(), T0)], now=T0)
    cat = await store.rules.catalogue("acme")
    assert cat is not None and dict(cat.devices["cems-1"]) == {"o2": "%", "so2": "mg/m³"}
    assert await store.rules.catalogue("other") is None


def test_sets_over_the_limits_are_refused_with_the_reason() -> None:
    from carbonlink.cloud.store.rules_model import RuleRecord, RuleSetTooLarge, build_sets

    def rec(i: int, placement: str, text: str = HIGH) -> RuleRecord:
        return RuleRecord("acme", f"r{i:03d}", 1, RuleDoc(id=f"r{i:03d}", text=text), "", placement, T0, "t")

    built = build_sets([rec(i, "edge") for i in range(500)] + [rec(i + 500, "cloud") for i in range(500)], [], [],
                       T0)
    assert len(built.gateway.rules) == len(built.cloud.rules) == 500
    with pytest.raises(RuleSetTooLarge, match="501 rules, over the 500"):
        build_sets([rec(i, "both") for i in range(501)], [], [], T0)
    long_text = HIGH + " -- " + "x" * 7000
    with pytest.raises(RuleSetTooLarge, match="over the 1,048,576-byte limit"):
        build_sets([rec(i, "edge", long_text) for i in range(200)], [], [], T0)
    many = [SilenceRecord("acme", f"s{i}", T0, T0 + 10, "r", "ops", T0, device="cems-1") for i in range(101)]
    with pytest.raises(RuleSetTooLarge, match="202 silences"):
        build_sets([], many, ["gw-1", "gw-2"], T0)
