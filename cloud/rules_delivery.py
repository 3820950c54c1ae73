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

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from carbonlink.kernel import topics
from carbonlink.kernel.wire import now_ms
from carbonlink.rules import RuleSetDoc

from .delivery import ByHashServer
from .store import Store

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], Awaitable[None]]


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"hash"} and isinstance(value["hash"], str)


def ref_patch(h: str) -> dict[str, Any]:
    """The merge patch that makes ``desired.rules`` exactly ``{"hash": h}`` (nulls delete an inline set's keys)."""
    return {"hash": h, "rules": None, "silences": None}


async def store_inline(store: Store, tenant: str, doc: RuleSetDoc) -> str:
    """Keep a full set (already validated and compiled) by its hash for the tenant; returns the hash."""
    return await store.rules.put_blob(tenant, doc, now_ms())


class RuleSetServer(ByHashServer):
    """Answers gateways' ``ruleset/get`` requests (on the cloud's control link)."""

    key, answer, what = "hash", topics.RULESET, "rule set"

    async def find(self, tenant: str, h: str) -> bytes | None:
        text = await self.store.rules.blob(tenant, h)
        return None if text is None else b'{"doc":' + text.encode() + b',"hash":"' + h.encode() + b'"}'
