"""Content delivered to gateways by hash over MQTT (rule sets, anomaly models): one request/answer shape.

A gateway publishes ``cl/{site}/{gw}/{request}`` ``{"<key>": "<64 lowercase hex>"}``; the cloud answers on
``cl/{site}/{gw}/{answer}`` with the content — only content stored for the gateway's own tenant, only to a
registered, unrevoked gateway at its own site — or ``{"<key>": H, "error": "..."}``. Subclasses say where
the content is kept and how it is sent.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from carbonlink.kernel import topics

from .store import Store

log = logging.getLogger(__name__)

HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
Publish = Callable[[str, bytes, bool], Awaitable[None]]


class ByHashServer:
    key = "hash"  # the request's member naming the content
    answer = ""  # the answer topic's suffix
    what = "content"

    def __init__(self, store: Store, publish: Publish | None = None) -> None:
        self.store = store
        self.publish = publish
        self.served = 0
        self.refused = 0

    async def find(self, tenant: str, h: str) -> bytes | None:
        """The answer's payload for content ``h`` of ``tenant``, or None when there is none."""
        raise NotImplementedError

    async def handle(self, topic: str, raw: bytes) -> None:
        parts = topics.split(topic)
        if parts is None or self.publish is None:
            return
        site, gateway, _ = parts
        answer_topic = f"{topics.ROOT}/{site}/{gateway}/{self.answer}"
        h = None
        try:
            msg = json.loads(raw) if len(raw) <= 1024 else None
            h = msg.get(self.key) if isinstance(msg, dict) else None
            if not isinstance(h, str) or not HEX64_RE.fullmatch(h):
                raise LookupError(f'a request is {{"{self.key}": "<64 lowercase hex>"}}')
            rec = await self.store.registry.get_gateway(gateway)
            if rec is None or rec.revoked or rec.site != site:
                raise LookupError(f"gateway {gateway!r} is not registered at site {site!r} or is revoked")
            payload = await self.find(rec.tenant or "", h)
            if payload is None:
                raise LookupError(f"no {self.what} {h[:12]} is stored for this gateway's tenant")
        except (ValueError, LookupError) as exc:
            self.refused += 1
            log.info("%s request on %s refused: %s", self.what, topic, exc)
            body: dict[str, Any] = {self.key: h if isinstance(h, str) else None, "error": str(exc)[:300]}
            await self._send(answer_topic, json.dumps(body, separators=(",", ":")).encode())
            return
        self.served += 1
        await self._send(answer_topic, payload)

    async def _send(self, topic: str, payload: bytes) -> None:
        assert self.publish is not None
        try:
            await self.publish(topic, payload, False)
        except aiomqtt.MqttError as exc:  # the gateway asks again when it reconnects
            log.warning("%s answer on %s not sent: %s", self.what, topic, exc)
