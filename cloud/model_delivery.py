"""Anomaly models reach gateways by hash, as rule sets do (cloud/rules_delivery.py).

A model file (an ONNX random forest of about 1 MB) is far over the 16 KB a shadow holds, so the
shadow's ``desired.model`` is ``{"id", "version", "sha256"}`` and the file is kept once per tenant
(``store.models``, uploaded with ``PUT /api/models/{id}/{version}``, verified by the same loader the
gateway uses before it is stored). The exchange (docs/topics.md): the gateway publishes
``cl/{site}/{gw}/model/get`` ``{"sha256": H}``; the cloud answers on ``cl/{site}/{gw}/model`` with
``{"sha256", "id", "version", "onnx_b64"}`` — only a model stored for the gateway's own tenant — or
``{"sha256": H, "error": "..."}``. The gateway checks the hash and loads and probes the file before it
replaces its running model; until then the last good model keeps running.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from carbonlink.kernel import topics

from .store import Store

log = logging.getLogger(__name__)

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
Publish = Callable[[str, bytes, bool], Awaitable[None]]


class ModelServer:
    """Answers gateways' ``model/get`` requests (on the cloud's control link)."""

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
        answer_topic = f"{topics.ROOT}/{site}/{gateway}/{topics.MODEL}"
        h = None
        try:
            msg = json.loads(raw) if len(raw) <= 1024 else None
            h = msg.get("sha256") if isinstance(msg, dict) else None
            if not isinstance(h, str) or not SHA_RE.fullmatch(h):
                raise LookupError('a request is {"sha256": "<64 lowercase hex>"}')
            rec = await self.store.registry.get_gateway(gateway)
            if rec is None or rec.revoked or rec.site != site:
                raise LookupError(f"gateway {gateway!r} is not registered at site {site!r} or is revoked")
            model = await self.store.models.get(rec.tenant or "", h)
            if model is None:
                raise LookupError(f"no model {h[:12]} is stored for this gateway's tenant")
        except (ValueError, LookupError) as exc:
            self.refused += 1
            log.info("model request on %s refused: %s", topic, exc)
            await self._send(answer_topic, {"sha256": h if isinstance(h, str) else None, "error": str(exc)[:300]})
            return
        self.served += 1
        await self._send(answer_topic, {"sha256": h, "id": model["model_id"], "version": int(model["version"]),
                                        "onnx_b64": base64.b64encode(model["onnx"]).decode()})

    async def _send(self, topic: str, body: dict[str, Any]) -> None:
        assert self.publish is not None
        try:
            await self.publish(topic, json.dumps(body, separators=(",", ":")).encode(), False)
        except aiomqtt.MqttError as exc:  # the gateway asks again when it reconnects
            log.warning("model answer on %s not sent: %s", topic, exc)
