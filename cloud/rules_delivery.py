"""Rule sets reach gateways by hash: the shadow names the set, the gateway fetches it over MQTT.

Why not the whole set in the shadow: a shadow is one JSON document per gateway, rewritten by
compare-and-set on every report and sent whole (retained) on every desired change; at 16 KB it held a
handful of rules, and raising the limit would copy a large set into every gateway's shadow, every
report and every retained delta. Instead ``desired.rules`` is ``{"hash": H}`` (about 80 bytes), the
set itself is stored once per tenant by its SHA-256 (``store.rules`` blobs, up to 1 MiB), and the
delta stays meaningful: the gateway reports ``reported.rules.hash`` and the delta is empty exactly
when it runs the set it was asked to.

The exchange (docs/topics.md): the gateway publishes ``cl/{site}/{gw}/ruleset/get`` ``{"hash": H}``;
the cloud answers on ``cl/{site}/{gw}/ruleset`` with ``{"hash": H, "doc": {...}}`` — only a set stored
for the gateway's own tenant — or ``{"hash": H, "error": "..."}``. The gateway checks that the
document's content hash is H before it applies it, keeps running its last good set until then, and
asks again on every reconnect. Both sides use persistent sessions, so a request or answer sent while
the other side is away is delivered when it returns.

A full rule-set document patched into ``desired.rules`` (``carbonlink rules push FILE``, Node-RED) is
compiled, stored by its hash and replaced by the reference in the same update.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from carbonlink.kernel import topics
from carbonlink.kernel.wire import now_ms
from carbonlink.rules import RuleSetDoc

from .store import Store

log = logging.getLogger(__name__)

HASH_RE = re.compile(r"^[0-9a-f]{64}$")
Publish = Callable[[str, bytes, bool], Awaitable[None]]


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"hash"} and isinstance(value["hash"], str)


def ref_patch(h: str) -> dict[str, Any]:
    """The merge patch that makes ``desired.rules`` exactly ``{"hash": h}`` (nulls delete an inline set's keys)."""
    return {"hash": h, "rules": None, "silences": None}


async def store_inline(store: Store, tenant: str, doc: RuleSetDoc) -> str:
    """Keep a full set (already validated and compiled) by its hash for the tenant; returns the hash."""
    return await store.rules.put_blob(tenant, doc, now_ms())


class RuleSetServer:
    """Answers gateways' ``ruleset/get`` requests (on the cloud's control link)."""

    def __init__(self, store: Store, publish: Publish | None = None) -> None:
        self.store = store
        self.publish = publish
        self.served = 0
        self.refused = 0

    async def handle(self, topic: str, raw: bytes) -> None:
        parts = topics.split(topic)
        if parts is None or self.publish is None:
            return
        site, gateway, _ = parts
        answer_topic = f"{topics.ROOT}/{site}/{gateway}/{topics.RULESET}"
        h = None
        try:
            msg = json.loads(raw) if len(raw) <= 1024 else None
            h = msg.get("hash") if isinstance(msg, dict) else None
            if not isinstance(h, str) or not HASH_RE.fullmatch(h):
                raise LookupError("a request is {\"hash\": \"<64 lowercase hex>\"}")
            rec = await self.store.registry.get_gateway(gateway)
            if rec is None or rec.revoked or rec.site != site:
                raise LookupError(f"gateway {gateway!r} is not registered at site {site!r} or is revoked")
            text = await self.store.rules.blob(rec.tenant or "", h)
            if text is None:
                raise LookupError(f"no rule set {h[:12]} is stored for this gateway's tenant")
        except (ValueError, LookupError) as exc:
            self.refused += 1
            log.info("rule set request on %s refused: %s", topic, exc)
            await self._send(answer_topic, {"hash": h if isinstance(h, str) else None, "error": str(exc)[:300]})
            return
        self.served += 1
        await self._send(answer_topic, b'{"doc":' + text.encode() + b',"hash":"' + h.encode() + b'"}')

    async def _send(self, topic: str, body: dict[str, Any] | bytes) -> None:
        assert self.publish is not None
        payload = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        try:
            await self.publish(topic, payload, False)
        except aiomqtt.MqttError as exc:  # the gateway asks again when it reconnects
            log.warning("rule set answer on %s not sent: %s", topic, exc)
