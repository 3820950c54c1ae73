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

from carbonlink.kernel import topics

from .delivery import ByHashServer


class ModelServer(ByHashServer):
    """Answers gateways' ``model/get`` requests (on the cloud's control link)."""

    key, answer, what = "sha256", topics.MODEL, "model"

    async def find(self, tenant: str, h: str) -> bytes | None:
        model = await self.store.models.get(tenant, h)
        if model is None:
            return None
        return json.dumps({"sha256": h, "id": model["model_id"], "version": int(model["version"]),
                           "onnx_b64": base64.b64encode(model["onnx"]).decode()}, separators=(",", ":")).encode()
