"""The cloud's rules at run time, on SQLite and PostgreSQL, through the real ingest and a real Mosquitto:
a gateway's alert raised offline and the cloud's own evaluation of the same readings are one alert;
forged or malformed alert events change nothing; derived values are stored apart; changes are published."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.ingest import IngestProcessor, Outcome
from carbonlink.cloud.rules_service import RulesService
from carbonlink.cloud.settings import CloudSettings
from carbonlink.cloud.store import Store
from carbonlink.cloud.store.rules_model import AlertQuery
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.events import Event, sign_event
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from carbonlink.rules import RuleDoc, RuleHost
from tests.rules.helpers import ListSink
from tests.services import require_mosquitto_service, until

KEY = Ed25519PrivateKey.generate()
T0 = 1_767_225_600_000
HIGH = "SELECT value FROM '+/so2' RAISE WHEN value > 200 mg/m3 CLEAR WHEN value < 180 mg/m3"
DOUBLE = "SELECT value * 2 AS twice FROM '+/so2'"


@contextlib.asynccontextmanager
async def broker(site: str) -> AsyncIterator[tuple[Any, list[dict[str, Any]]]]:
    """A publisher for the service and everything that arrives on cl/{site}/+/alerts."""
    host, port = require_mosquitto_service().removeprefix("mqtt://").split(":")
    got: list[dict[str, Any]] = []
    async with aiomqtt.Client(host, int(port), identifier=f"pub-{site}") as pub, \
            aiomqtt.Client(host, int(port), identifier=f"sub-{site}") as sub:
        await sub.subscribe(f"cl/{site}/+/alerts", qos=1)

        async def collect() -> None:
            async for m in sub.messages:
                got.append({"topic": str(m.topic), **json.loads(bytes(m.payload))})  # type: ignore[arg-type]

        async def publish(topic: str, payload: bytes, retain: bool) -> None:
            await pub.publish(topic, payload, qos=1, retain=retain)

        task = asyncio.create_task(collect())
        try:
            yield publish, got
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def readings() -> list[Reading]:
    values = [150, 250, 260, 170, 150, 150]
    return [Reading.make("cems-1", "so2", T0 + i * 1000, v, "mg/m³") for i, v in enumerate(values)]


def gateway_events(gw: str) -> list[dict[str, Any]]:
    """What the gateway's own engine emits for the same readings (it evaluated them offline)."""
    sink = ListSink()
    host = RuleHost(source=gw, sink=sink)
    host.apply({"rules": [{"id": "so2-high", "severity": "critical", "text": HIGH}]})
    host.feed(readings())
    host.flush()
    return [{"kind": k, **e} for k, e in sink.events if k.startswith("alert.") or k == "rule.derivation"]


def event_bytes(gw: str, e: dict[str, Any], **body: Any) -> bytes:
    ev = Event.make(gw, e["kind"], e["ts_ms"], severity=e["severity"], device=e["device"], point=e["point"],
                    body={**e["body"], **body})
    return sign_event(ev, KEY).to_bytes()


@pytest.mark.parametrize("gateway_first", [False, True])
async def test_gateway_and_cloud_name_one_alert_and_changes_are_published(any_store: Store,
                                                                          gateway_first: bool) -> None:
    store = any_store
    run = uuid.uuid4().hex[:8]
    site, gw = f"site-{run}", f"gw-{run}"
    await store.registry.register_gateway(gw, site, "ed25519", public_key_hex(KEY), tenant="acme")
    await store.rules.save_rule("acme", RuleDoc(id="so2-high", severity="critical", text=HIGH), "both", by="t",
                                now=T0)
    await store.rules.save_rule("acme", RuleDoc(id="twice", text=DOUBLE, actions=[
        {"type": "derive", "point": "x2", "unit": "mg/m³"}]), "cloud", by="t", now=T0)
    async with broker(site) as (publish, got):
        service = RulesService(store, CloudSettings(rules_lateness_s=0), publish=publish)
        await service.refresh()
        runner = asyncio.create_task(service.run())
        ingest = IngestProcessor(store)
        ingest.batch_listeners.append(service.on_batch)
        ingest.event_listeners.append(service.on_event)
        events = gateway_events(gw)
        assert [e["kind"] for e in events] == ["alert.raised", "alert.cleared"]
        telemetry = (f"cl/{site}/{gw}/telemetry",
                     sign_batch(Batch(gw, 1, T0 + 10_000, tuple(readings())), KEY).to_bytes())
        offline = [(f"cl/{site}/{gw}/events", event_bytes(gw, e)) for e in events]
        order = [*offline, telemetry] if gateway_first else [telemetry, *offline]
        for topic, raw in order:
            assert await ingest.handle(topic, raw) in (Outcome.COMMITTED, Outcome.DUPLICATE)
        await service.drain()
        alerts = await store.rules.alerts.list(AlertQuery("acme"))
        assert len(alerts) == 1, [a.public() for a in alerts]
        a = alerts[0]
        assert a.sources == ("cloud", "gateway") and a.alert.subject == f"{gw}/cems-1/so2"
        # the cloud has seen up to T0+4s (lateness 0); the gateway's clear at T0+3s came from its own engine
        assert (a.alert.since_ms, a.alert.raised_ms, a.alert.cleared_ms) == (T0 + 1000, T0 + 1000, T0 + 3000)
        assert a.alert.state.value == "cleared" and a.alert.severity == "critical"
        assert a.alert.evidence and a.alert.evidence[0]["value"] == 250.0
        await until(lambda: len(got) >= service.counters.published > 0)
        assert got[-1]["topic"] == f"cl/{site}/{gw}/alerts" and got[-1]["kind"] == "alert.cleared"
        assert got[-1]["tenant"] == "acme" and got[-1]["alert"]["id"] == a.alert.id
        # a redelivered event changes nothing and publishes nothing
        published = service.counters.published
        assert await ingest.handle(*offline[0]) is Outcome.DUPLICATE
        assert service.counters.published == published
        # the cloud's derived values are kept apart from what the device signed
        derived = await store.rules.derived("acme", device="cems-1")
        assert [(d["point"], d["value"]) for d in derived][:2] == [("rule:twice:x2", 300.0), ("rule:twice:x2", 500.0)]
        assert await store.data.reading(gw, "cems-1", "rule:twice:x2", T0) is None
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_forged_and_malformed_alert_events_change_nothing(any_store: Store) -> None:
    store = any_store
    run = uuid.uuid4().hex[:8]
    site, gw = f"site-{run}", f"gw-{run}"
    await store.registry.register_gateway(gw, site, "ed25519", public_key_hex(KEY), tenant="acme")
    service = RulesService(store, CloudSettings(rules_cloud=False))
    ingest = IngestProcessor(store)
    ingest.event_listeners.append(service.on_event)
    raised = gateway_events(gw)[0]
    topic = f"cl/{site}/{gw}/events"
    bad = [event_bytes(gw, raised, subject="gw-other/cems-1/so2"),  # not its own subject
           event_bytes(gw, raised, alert="0" * 32),  # an id its rule, subject and start do not give
           event_bytes(gw, raised, since="yesterday"),
           event_bytes(gw, {**raised, "kind": "rule.derivation"}, rule="so2-high", version=1, hash="a" * 64)]
    for raw in bad:  # stored as events (they are signed by the gateway), but believed for nothing
        assert await ingest.handle(topic, raw) is Outcome.COMMITTED
    assert service.counters.refused_events == 4
    assert await store.rules.alerts.list(AlertQuery("acme")) == []
    good = event_bytes(gw, {**raised, "kind": "rule.derivation", "point": "rule:so2-high:x"},
                       rule="so2-high", version=3, hash="a" * 64, unit="mg/m³", text="SELECT 1", inputs=[],
                       **{"from": T0})
    assert await ingest.handle(topic, good) is Outcome.COMMITTED
    got = await store.rules.derivation_of(gw, "cems-1", "rule:so2-high:x", T0 + 1)
    assert got is not None and got["version"] == 3 and service.counters.derivations == 1


@pytest.mark.parametrize("allowed", [True, False])
async def test_cloud_rules_notify_through_the_guard(store: Store, tmp_path: Any, allowed: bool) -> None:
    from tests.rules.test_actions import SECRET, Receiver

    receiver = Receiver()
    try:
        run = uuid.uuid4().hex[:8]
        site, gw = f"site-{run}", f"gw-{run}"
        await store.registry.register_gateway(gw, site, "ed25519", public_key_hex(KEY), tenant="acme")
        secrets = tmp_path / "secrets" / "acme"
        secrets.mkdir(parents=True, mode=0o700)
        (secrets / "ops").write_bytes(SECRET)
        (secrets / "ops").chmod(0o600)
        hook = {"type": "webhook", "url": receiver.url, "secret": "ops", "max_attempts": 1}
        await store.rules.save_rule("acme", RuleDoc(id="so2-high", text=HIGH, actions=[hook]), "cloud", by="t",
                                    now=T0)
        settings = CloudSettings(rules_lateness_s=0, rules_secrets_dir=tmp_path / "secrets",
                                 webhook_allow=["127.0.0.0/8"] if allowed else [])
        service = RulesService(store, settings, refresh_s=0.05)
        runner = asyncio.create_task(service.run())
        await until(lambda: service.versions.get("acme") == 1)
        ingest = IngestProcessor(store)
        ingest.batch_listeners.append(service.on_batch)
        raw = sign_batch(Batch(gw, 1, T0 + 10_000, tuple(readings())), KEY).to_bytes()
        assert await ingest.handle(f"cl/{site}/{gw}/telemetry", raw) is Outcome.COMMITTED
        await service.drain()
        if allowed:
            await until(lambda: len(receiver.calls) == 2)  # raised, then cleared
            assert all(c["signed"] for c in receiver.calls)
            assert [c["body"]["kind"] for c in receiver.calls] == ["alert.raised", "alert.cleared"]
        else:
            await until(lambda: service.state("acme")["diagnostics"].get("action.dead_letter", 0) == 2)
            recent = [d["body"] for d in service.state("acme")["recent"] if d["kind"] == "action.dead_letter"]
            assert "is a loopback address" in recent[-1]["reason"] and receiver.calls == []
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    finally:
        receiver.close()
