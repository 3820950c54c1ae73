"""Rule sets by hash through a real Mosquitto: the shadow names the set, the gateway fetches and checks it.

A set far over the shadow's 16 KB travels; the shadow stays small; the delta is empty once the gateway
runs the set; a hash the tenant never stored is refused; a gateway of another tenant cannot fetch it;
a restarted gateway runs the set before any network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from carbonlink.cloud.commands import ControlLink
from carbonlink.cloud.shadows import MAX_SHADOW_BYTES, ShadowError
from carbonlink.cloud.store import Store
from carbonlink.edge.rules_runner import RulesRunner
from carbonlink.edge.shadow import EdgeShadow
from carbonlink.kernel import topics
from carbonlink.kernel.topics import GatewayTopics
from carbonlink.kernel.wire import now_ms
from carbonlink.rules import RuleSetDoc
from tests.edge.shadow_target import NullTarget
from tests.rules.helpers import ListSink
from tests.services import require_mosquitto_service, until

BIG = {"rules": [{"id": f"so2-high-{i:03d}", "severity": "critical", "description": "x" * 100,
                  "text": f"SELECT avg(value) AS so2 FROM 'stack-{i}/so2' GROUP BY device, TUMBLING(1m)"
                          f" RAISE WHEN so2 > {200 + i} mg/m3 FOR 5m CLEAR WHEN so2 < {180 + i} mg/m3"}
                 for i in range(200)]}


class Target(NullTarget):
    """The agent's side of the shadow, for rules only: a real RulesRunner."""

    def __init__(self, runner: RulesRunner) -> None:
        super().__init__()
        self.runner = runner

    def effective_state(self) -> dict[str, Any]:
        return {"rules": self.runner.state()}

    def set_rules(self, doc: Any) -> str | None:
        return self.runner.apply(doc)

    def rules_hash(self) -> str:
        return self.runner.host.applied_hash


def edge(tmp: Path, site: str, gw: str) -> tuple[EdgeShadow, Target]:
    data = tmp / gw
    data.mkdir(exist_ok=True)
    target = Target(RulesRunner(gateway=gw, site=site, data_dir=data, sink=ListSink(), derived=lambda rs: None))
    return EdgeShadow(data / "shadow.json", GatewayTopics(site, gw), target), target


@contextlib.asynccontextmanager
async def connected(shadow: EdgeShadow, url: str, cid: str) -> AsyncIterator[None]:
    """What the agent's uplink does for the shadow: subscribe, say hello, route messages."""
    host, port = url.removeprefix("mqtt://").split(":")
    async with aiomqtt.Client(host, int(port), identifier=cid) as client:
        async def publish(topic: str, payload: bytes) -> None:
            await client.publish(topic, payload, qos=1)

        for t in shadow.subscriptions:
            await client.subscribe(t, qos=1)

        async def route() -> None:
            async for m in client.messages:
                await shadow.handle(str(m.topic), bytes(m.payload) if isinstance(m.payload, bytes) else b"", publish)

        task = asyncio.create_task(route())
        await shadow.on_connect(publish)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_large_rule_set_travels_by_hash_and_the_delta_closes(store: Store, tmp_path: Path) -> None:
    url = require_mosquitto_service()
    run = uuid.uuid4().hex[:8]
    site, gw, stranger = f"site-{run}", f"gw-{run}", f"gx-{run}"
    await store.registry.register_gateway(gw, site, "ed25519", "00" * 32, tenant="acme")
    await store.registry.register_gateway(stranger, site + "x", "ed25519", "00" * 32, tenant="other")
    control = ControlLink(store, url, client_id=f"ctl-{run}")
    link = asyncio.create_task(control.run())
    try:
        await asyncio.wait_for(control.connected.wait(), 10)
        shadows = control.shadows
        assert len(json.dumps(BIG)) > 2 * MAX_SHADOW_BYTES
        out = await shadows.update(gw, desired={"rules": BIG})
        h = RuleSetDoc.model_validate(BIG).content_hash()
        assert out["state"]["desired"]["rules"] == {"hash": h}
        assert len(json.dumps(out)) < 2048  # the shadow carries the name, not the set
        with pytest.raises(ShadowError, match="no rule set ffffffffffff is stored"):
            await shadows.update(gw, desired={"rules": {"hash": "f" * 64}})
        with pytest.raises(ShadowError, match=r"nothing\s+else"):
            await shadows.update(gw, desired={"rules": {"hash": h, "extra": 1}})

        shadow, target = edge(tmp_path, site, gw)
        async with connected(shadow, url, f"edge-{run}"):
            async def applied() -> bool:
                got = await shadows.get(gw)
                return target.rules_hash() == h and got["state"]["reported"].get("rules", {}).get("hash") == h

            await until(applied)
            got = await shadows.get(gw)
            assert "rules" not in got["state"]["delta"] and got["rejected"] == {}
            assert got["state"]["reported"]["rules"]["count"] == 200
            assert len(got["state"]["reported"]["rules"]["rules"]) == 50

        # Another tenant's gateway asks for acme's set by its hash: refused.
        host, port = url.removeprefix("mqtt://").split(":")
        async with aiomqtt.Client(host, int(port), identifier=f"gx-{run}") as c:
            prefix = f"{topics.ROOT}/{site}x/{stranger}"
            await c.subscribe(f"{prefix}/{topics.RULESET}", qos=1)
            await c.publish(f"{prefix}/{topics.RULESET_GET}", json.dumps({"hash": h}).encode(), qos=1)
            async with asyncio.timeout(10):
                msg = await anext(c.messages)
            answer = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
            assert answer["hash"] == h and "no rule set" in answer["error"] and "doc" not in answer

        # A restart without network: the last good set runs before any message.
        again, target2 = edge(tmp_path, site, gw)
        again.apply_saved()
        assert target2.rules_hash() == h and again.fetching is None
    finally:
        link.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await link


async def test_a_set_whose_content_does_not_match_its_hash_is_not_applied(tmp_path: Path) -> None:
    shadow, target = edge(tmp_path, "site-a", "gw-1")
    sent: list[tuple[str, bytes]] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append((topic, payload))

    good = RuleSetDoc.model_validate({"rules": BIG["rules"][:2]})
    h = good.content_hash()
    prefix = "cl/site-a/gw-1"
    await shadow.handle(f"{prefix}/shadow/update/delta", json.dumps(
        {"version": 1, "desired": {"rules": {"hash": h}}, "timestamp": now_ms()}).encode(), publish)
    assert shadow.fetching == h and sent[-1] == (f"{prefix}/ruleset/get", json.dumps({"hash": h}).encode())
    tampered = {"rules": BIG["rules"][:1]}  # another set under h's name
    await shadow.handle(f"{prefix}/ruleset", json.dumps({"hash": h, "doc": tampered}).encode(), publish)
    assert target.rules_hash() == "" and "does not have hash" in shadow.rejected["rules"]
    await shadow.handle(f"{prefix}/shadow/get/accepted", json.dumps(
        {"version": 2, "state": {"desired": {"rules": {"hash": h}}}}).encode(), publish)
    await shadow.handle(f"{prefix}/ruleset", json.dumps({"hash": h, "doc": good.model_dump(mode="json")}).encode(),
                        publish)
    assert target.rules_hash() == h and "rules" not in shadow.rejected
    reported = json.loads(sent[-1][1])
    assert sent[-1][0] == f"{prefix}/shadow/update" and reported["state"]["reported"]["rules"]["hash"] == h
