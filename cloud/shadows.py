"""Device shadows: one JSON document per gateway with desired, reported and their delta.

The cloud writes ``desired`` (API), the gateway writes ``reported`` (MQTT
``shadow/update``); ``delta`` is what desired asks for that reported does not
show yet. Patches follow JSON Merge Patch (RFC 7396: objects merge, ``null``
deletes a key). Every accepted change bumps ``version`` through a
compare-and-set in the store, so an update carrying a stale version is refused
and two writers can never silently overwrite each other. Each leaf keeps the
time it was last set (``metadata``). The document is size-limited.

Known desired keys are type-checked here (a wrong type is a 422, not a surprise
on the gateway); keys the cloud does not know are passed on, and the gateway
reports back the ones it cannot apply under ``rejected``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from carbonlink.kernel import topics
from carbonlink.kernel.wire import now_ms

from .store import GatewayRecord, Store

log = logging.getLogger(__name__)

MAX_SHADOW_BYTES = 16 * 1024  # desired + reported + rejected, serialised
MAX_DEPTH = 6
Publish = Callable[[str, bytes, bool], Awaitable[None]]  # topic, payload, retain


class ShadowError(Exception):
    """A refused shadow operation; ``status`` is the HTTP status, also sent as ``code`` over MQTT."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- what the cloud can check about desired ------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class DesiredBatch(_Strict):
    max_readings: int | None = Field(default=None, ge=1, le=10_000)
    max_age_s: float | None = Field(default=None, gt=0, le=3600)


class DesiredDevice(_Strict):
    enabled: bool | None = None
    poll_interval_s: float | None = Field(default=None, gt=0, le=86400)
    points: list[str] | None = None


class DesiredState(_Strict):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    batch: DesiredBatch | None = None
    devices: dict[str, DesiredDevice] | None = None
    rules: dict[str, Any] | None = None  # a rule-set document, compiled below


def check_desired(desired: dict[str, Any]) -> None:
    try:
        DesiredState.model_validate(desired)
    except ValidationError as exc:
        parts = [f"desired.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ShadowError(422, "; ".join(parts)) from None
    if desired.get("rules") is not None:
        _check_rules(desired["rules"])


def _check_rules(doc: dict[str, Any]) -> Any:
    """A rule set that would not compile on the gateway is refused here, with the rule and position.

    ``{"hash": H}`` names a set stored by hash (cloud/rules_delivery.py); its content was checked when stored.
    """
    from carbonlink.rules import RuleSetDoc, RuleSetError, compile_ruleset

    from .delivery import HEX64_RE as HASH_RE
    from .rules_delivery import is_ref

    if "hash" in doc:
        if not is_ref(doc) or not HASH_RE.fullmatch(doc["hash"]):
            raise ShadowError(422, 'desired.rules: a rule set by hash is {"hash": "<64 lowercase hex>"} and nothing'
                                   " else")
        return None
    try:
        parsed = RuleSetDoc.model_validate(doc)
        compile_ruleset(parsed)
        return parsed
    except ValidationError as exc:
        parts = [f"desired.rules.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:10]]
        raise ShadowError(422, "; ".join(parts)) from None
    except RuleSetError as exc:
        raise ShadowError(422, "; ".join(str(e) for e in exc.errors[:10])) from None


# --- document operations (pure) ------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def compute_delta(desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    """What desired asks for that reported does not show (recursively, objects only)."""
    delta: dict[str, Any] = {}
    for k, want in desired.items():
        have = reported.get(k) if isinstance(reported, dict) else None
        if isinstance(want, dict) and isinstance(have, dict):
            sub = compute_delta(want, have)
            if sub:
                delta[k] = sub
        elif have != want or (isinstance(want, bool) != isinstance(have, bool)):
            delta[k] = want
    return delta


def _leaves(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict) and obj:
        return [leaf for k, v in obj.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [(prefix[:-1], obj)]


def _stamp(meta: dict[str, int], patch: dict[str, Any], ts: int) -> dict[str, int]:
    out = dict(meta)
    for path, value in _leaves(patch):
        # A patch that replaces or deletes a subtree invalidates the stamps under it.
        for old in [p for p in out if p == path or p.startswith(path + ".")]:
            del out[old]
        if value is not None:
            out[path] = ts
    return out


def _depth(obj: Any) -> int:
    return 1 + max((_depth(v) for v in obj.values()), default=0) if isinstance(obj, dict) else 0


def _check_section(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ShadowError(400, f"{name} must be a JSON object, got {type(value).__name__}")
    if _depth(value) > MAX_DEPTH:
        raise ShadowError(400, f"{name} is nested deeper than {MAX_DEPTH} levels")
    return value


def empty_doc() -> dict[str, Any]:
    return {"desired": {}, "reported": {}, "rejected": {}, "metadata": {"desired": {}, "reported": {}}}


def view(gateway: str, version: int, doc: dict[str, Any]) -> dict[str, Any]:
    """The public shape of a shadow (API and ``shadow/get/accepted``)."""
    return {"gateway": gateway, "version": version,
            "state": {"desired": doc["desired"], "reported": doc["reported"],
                      "delta": compute_delta(doc["desired"], doc["reported"])},
            "rejected": doc.get("rejected", {}), "metadata": doc["metadata"], "timestamp": now_ms()}


# --- the service --------------------------------------------------------------------------


class ShadowService:
    """Reads and changes shadows through the store; tells gateways over MQTT when desired changes."""

    def __init__(self, store: Store, publish: Publish | None = None) -> None:
        self.store = store
        self.publish = publish

    async def _site(self, gateway: str) -> str:
        return (await self._record(gateway)).site

    async def _record(self, gateway: str) -> GatewayRecord:
        rec = await self.store.registry.get_gateway(gateway)
        if rec is None:
            raise ShadowError(404, f"gateway {gateway!r} is not registered")
        return rec

    async def _rules_by_hash(self, rec: GatewayRecord, value: Any) -> Any:
        """``desired.rules`` as a reference to a set stored for the gateway's tenant (cloud/rules_delivery.py)."""
        from .rules_delivery import ref_patch, store_inline

        if not isinstance(value, dict):
            return value  # null deletes; anything else is refused by check_desired
        parsed = _check_rules(value)
        if parsed is not None:
            return ref_patch(await store_inline(self.store, rec.tenant or "", parsed))
        if await self.store.rules.blob(rec.tenant or "", value["hash"]) is None:
            raise ShadowError(422, f"desired.rules: no rule set {value['hash'][:12]} is stored for this gateway's"
                                   " tenant; push the document itself or a set from /api/rulesets")
        return ref_patch(value["hash"])

    async def _load(self, gateway: str) -> tuple[int, dict[str, Any]]:
        got = await self.store.control.get_shadow(gateway)
        return got if got is not None else (0, empty_doc())

    async def get(self, gateway: str) -> dict[str, Any]:
        await self._site(gateway)
        version, doc = await self._load(gateway)
        return view(gateway, version, doc)

    async def update(self, gateway: str, *, desired: dict[str, Any] | None = None,
                     reported: dict[str, Any] | None = None, rejected: dict[str, Any] | None = None,
                     version: int | None = None) -> dict[str, Any]:
        """Apply merge patches; ``version`` (if given) must equal the current one or the update is refused."""
        rec = await self._record(gateway)
        site = rec.site
        if desired is None and reported is None and rejected is None:
            raise ShadowError(400, "nothing to update: give state.desired or state.reported")
        if isinstance(desired, dict) and "rules" in desired:  # a rule set travels by hash, never inline
            desired = {**desired, "rules": await self._rules_by_hash(rec, desired["rules"])}
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise ShadowError(400, f"version must be an integer, got {version!r}")
        for _ in range(5):  # compare-and-set retries when another writer got in between
            current, doc = await self._load(gateway)
            if version is not None and version != current:
                raise ShadowError(409, f"version {version} is stale: the shadow is at version {current}")
            new = copy.deepcopy(doc)
            ts = now_ms()
            if desired is not None:
                new["desired"] = merge_patch(doc["desired"], _check_section("desired", desired))
                check_desired(new["desired"])
                new["metadata"]["desired"] = _stamp(doc["metadata"]["desired"], desired, ts)
            if reported is not None:
                new["reported"] = merge_patch(doc["reported"], _check_section("reported", reported))
                new["metadata"]["reported"] = _stamp(doc["metadata"]["reported"], reported, ts)
            if rejected is not None:
                new["rejected"] = {str(k): str(v)[:300] for k, v in _check_section("rejected", rejected).items()}
            size = len(json.dumps(new, separators=(",", ":")))
            if size > MAX_SHADOW_BYTES:
                raise ShadowError(413, f"the shadow would be {size} bytes, over the {MAX_SHADOW_BYTES}-byte limit")
            if all(new[k] == doc.get(k) for k in ("desired", "reported", "rejected")):
                return view(gateway, current, doc)  # nothing changed (only stamps would): the version stays
            if await self.store.control.put_shadow(gateway, current, new, ts):
                out = view(gateway, current + 1, new)
                if desired is not None and new["desired"] != doc["desired"]:
                    await self._notify(site, gateway, out)
                return out
        raise ShadowError(409, "the shadow kept changing under this update; retry")

    async def _notify(self, site: str, gateway: str, shadow: dict[str, Any]) -> None:
        """Retained, so a gateway that reconnects while the cloud is down still gets its desired state."""
        if self.publish is None:
            return
        body = {"version": shadow["version"], "state": shadow["state"]["delta"],
                "desired": shadow["state"]["desired"], "timestamp": shadow["timestamp"]}
        try:
            await self.publish(f"{topics.ROOT}/{site}/{gateway}/{topics.SHADOW_DELTA}", _dump(body), True)
        except aiomqtt.MqttError as exc:
            # Stored already; the gateway asks for its shadow (shadow/get) on every connect.
            log.warning("desired for %s stored but not pushed (broker unreachable: %s)", gateway, exc)

    # --- MQTT requests from gateways ---

    async def handle(self, topic: str, raw: bytes) -> None:
        parts = topics.split(topic)
        if parts is None or self.publish is None:
            return
        site, gateway, suffix = parts
        base = f"{topics.ROOT}/{site}/{gateway}"
        is_get = suffix == topics.SHADOW_GET
        ok_t = f"{base}/{topics.SHADOW_GET_ACCEPTED if is_get else topics.SHADOW_UPDATE_ACCEPTED}"
        bad_t = f"{base}/{topics.SHADOW_GET_REJECTED if is_get else topics.SHADOW_UPDATE_REJECTED}"
        token = None
        try:
            if len(raw) > MAX_SHADOW_BYTES:
                raise ShadowError(413, f"message is {len(raw)} bytes, over the {MAX_SHADOW_BYTES}-byte limit")
            try:
                msg = json.loads(raw) if raw.strip() else {}
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ShadowError(400, f"message is not UTF-8 JSON: {exc}") from None
            if not isinstance(msg, dict):
                raise ShadowError(400, "message must be a JSON object")
            token = msg.get("client_token")
            if await self._site(gateway) != site:
                raise ShadowError(403, f"gateway {gateway!r} does not belong to site {site!r}")
            if is_get:
                out = await self.get(gateway)
            else:
                state = msg.get("state")
                if not isinstance(state, dict):
                    raise ShadowError(400, "update must carry state: {reported: {...}}")
                if "desired" in state:
                    raise ShadowError(403, "a gateway may not change desired; only reported")
                out = await self.update(gateway, reported=state.get("reported"), rejected=msg.get("rejected"),
                                        version=msg.get("version"))
            await self.publish(ok_t, _dump({**out, "client_token": token}), False)
        except ShadowError as exc:
            log.info("shadow request on %s refused: %s", topic, exc.message)
            await self.publish(bad_t, _dump({"code": exc.status, "message": exc.message, "client_token": token}),
                               False)


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
