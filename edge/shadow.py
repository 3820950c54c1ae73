"""The gateway's side of the device shadow.

The last desired state received is kept on disk (``shadow.json``, written
atomically) and applied at start, before any network: a gateway that reboots
while the cloud is down keeps the configuration the operator asked for. The
cloud publishes desired retained on ``shadow/update/delta``, so a gateway that
reconnects while the cloud is down still receives changes made while it was
away. Desired states are applied in version order; an older one is ignored.

What the gateway applies (anything else is reported back under ``rejected``
with the reason, never silently ignored)::

    log_level: DEBUG | INFO | WARNING | ERROR
    batch: {max_readings: 1..10000, max_age_s: (0, 3600]}
    devices: {<id>: {enabled: bool, poll_interval_s: (0, 86400], points: [names]}}
    rules: {"hash": H}, a rule set the gateway fetches by hash (ruleset/get, answered on ruleset) and
           checks against H before it applies it; or a whole rule-set document (docs/rules.md). The last
           good set keeps running while a set is fetched and when one fails to compile.
    model: {id, version, sha256[, onnx_b64][, flag]}, the anomaly model (edge/anomaly_runner.py), fetched by hash
           (model/get, answered on model) unless held or inline: hash checked,
           loaded and probed before it replaces the last good model.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from carbonlink.kernel import topics as T
from carbonlink.kernel.topics import GatewayTopics

log = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_HASH_RE = re.compile(r"[0-9a-f]{64}")
Publish = Callable[[str, bytes], Awaitable[None]]
_SHA_RE = re.compile(r"[0-9a-f]{64}")


class ShadowTarget(Protocol):
    """What the agent offers the shadow: its devices, and setters that take effect immediately."""

    def device_points(self) -> dict[str, set[str] | None]: ...  # id → known point names (None: unknown)
    def effective_state(self) -> dict[str, Any]: ...
    def set_log_level(self, level: str) -> None: ...
    def set_batch(self, max_readings: int | None, max_age_s: float | None) -> None: ...
    def set_device(self, device: str, *, enabled: bool | None, poll_interval_s: float | None,
                   points: list[str] | None) -> None: ...
    def set_rules(self, doc: Any) -> str | None: ...  # None when applied, else the reason it was refused
    def set_model(self, doc: Any) -> str | None: ...  # desired.model (edge/anomaly_runner.py); None when applied
    def holds_model(self, sha256: str) -> bool: ...  # False: fetch it by hash (model/get) first
    def rules_hash(self) -> str: ...  # the hash of the rule set running now ("" for none)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def plan(desired: dict[str, Any], devices: dict[str, set[str] | None]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split desired into what can be applied and what is rejected (dotted path → reason)."""
    ok: dict[str, Any] = {}
    rejected: dict[str, str] = {}
    for key, value in desired.items():
        if key == "log_level":
            if value in LOG_LEVELS:
                ok[key] = value
            else:
                rejected[key] = f"must be one of {', '.join(LOG_LEVELS)}"
        elif key == "batch":
            if not isinstance(value, dict):
                rejected[key] = "must be an object"
                continue
            b: dict[str, Any] = {}
            for k, v in value.items():
                if k == "max_readings" and isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 10_000:
                    b[k] = v
                elif k == "max_age_s" and _number(v) and 0 < v <= 3600:
                    b[k] = float(v)
                elif k in ("max_readings", "max_age_s"):
                    rejected[f"batch.{k}"] = "out of range or wrong type"
                else:
                    rejected[f"batch.{k}"] = "unknown key"
            if b:
                ok[key] = b
        elif key == "devices":
            if not isinstance(value, dict):
                rejected[key] = "must be an object keyed by device id"
                continue
            devs: dict[str, Any] = {}
            for dev, settings in value.items():
                path = f"devices.{dev}"
                if dev not in devices:
                    rejected[path] = "no such device on this gateway"
                    continue
                if not isinstance(settings, dict):
                    rejected[path] = "must be an object"
                    continue
                d: dict[str, Any] = {}
                for k, v in settings.items():
                    if k == "enabled" and isinstance(v, bool):
                        d[k] = v
                    elif k == "poll_interval_s" and _number(v) and 0 < v <= 86400:
                        d[k] = float(v)
                    elif k == "points" and isinstance(v, list) and all(isinstance(p, str) for p in v):
                        known = devices[dev]
                        unknown = [p for p in v if known is not None and p not in known]
                        if unknown:
                            rejected[f"{path}.points"] = f"unknown point(s) {', '.join(unknown[:10])}"
                        else:
                            d[k] = sorted(set(v))
                    elif k in ("enabled", "poll_interval_s", "points"):
                        rejected[f"{path}.{k}"] = "out of range or wrong type"
                    else:
                        rejected[f"{path}.{k}"] = "unknown key"
                if d:
                    devs[dev] = d
            if devs:
                ok[key] = devs
        elif key == "rules":
            if isinstance(value, dict) and "hash" in value:
                if set(value) == {"hash"} and isinstance(value["hash"], str) and _HASH_RE.fullmatch(value["hash"]):
                    ok[key] = value  # fetched from the cloud by hash
                else:
                    rejected[key] = 'a rule set by hash is {"hash": "<64 lowercase hex>"}'
            elif isinstance(value, dict):
                ok[key] = value  # compiled (and refused with positions) by the rules runner
            else:
                rejected[key] = "must be a rule-set object"
        elif key == "model":
            ok[key] = value  # checked (hash, ONNX, inputs) by the anomaly runner, which keeps the last good model
        else:
            rejected[key] = "unknown key"
    return ok, rejected


class EdgeShadow:
    def __init__(self, path: Path, topics: GatewayTopics, target: ShadowTarget) -> None:
        self.path = path
        self.topics = topics
        self.target = target
        self.version = 0
        self.desired: dict[str, Any] = {}
        self.rejected: dict[str, str] = {}
        self.applied = 0  # desired states applied since start
        self.fetching: str | None = None  # the hash of a rule set asked for and not received yet
        self.fetching_model: dict[str, Any] | None = None  # desired.model whose file was asked for (model/get)
        self._load()

    @property
    def subscriptions(self) -> tuple[str, ...]:
        return (self.topics.topic(T.SHADOW_DELTA), self.topics.topic(T.SHADOW_GET_ACCEPTED),
                self.topics.topic(T.SHADOW_GET_REJECTED), self.topics.topic(T.SHADOW_UPDATE_ACCEPTED),
                self.topics.topic(T.SHADOW_UPDATE_REJECTED), self.topics.topic(T.RULESET),
                self.topics.topic(T.MODEL))

    def _load(self) -> None:
        try:
            state = json.loads(self.path.read_text())
            self.version, self.desired = int(state["version"]), dict(state["desired"])
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable %s (%s); waiting for the cloud's desired state", self.path, exc)

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"version": self.version, "desired": self.desired}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def apply_saved(self) -> None:
        """At start, before any network: re-apply the last desired state received."""
        if self.desired:
            self._apply(self.desired)
            log.info("applied saved desired state version %d", self.version)

    def _apply(self, desired: dict[str, Any]) -> None:
        ok, self.rejected = plan(desired, self.target.device_points())
        if "log_level" in ok:
            self.target.set_log_level(ok["log_level"])
        if "batch" in ok:
            self.target.set_batch(ok["batch"].get("max_readings"), ok["batch"].get("max_age_s"))
        for dev, d in ok.get("devices", {}).items():
            self.target.set_device(dev, enabled=d.get("enabled"), poll_interval_s=d.get("poll_interval_s"),
                                   points=d.get("points"))
        self.fetching = None
        if "rules" in ok:
            if "hash" in ok["rules"]:
                if ok["rules"]["hash"] != self.target.rules_hash():
                    self.fetching = ok["rules"]["hash"]  # the last good set runs until this one arrives
            else:
                refused = self.target.set_rules(ok["rules"])
                if refused:
                    self.rejected["rules"] = refused
        self.fetching_model = None
        model = ok.get("model")
        if isinstance(model, dict) and "onnx_b64" not in model and isinstance(model.get("sha256"), str) \
                and _SHA_RE.fullmatch(model["sha256"]) and not self.target.holds_model(model["sha256"]):
            self.fetching_model = model  # the last good model runs until this one arrives
        elif "model" in ok and (refused := self.target.set_model(model)):
            self.rejected["model"] = refused
        self.applied += 1
        for path, reason in self.rejected.items():
            log.warning("desired %s rejected: %s", path, reason)

    def report(self) -> bytes:
        return json.dumps({"state": {"reported": self.target.effective_state()}, "rejected": self.rejected},
                          separators=(",", ":")).encode()

    async def on_connect(self, publish: Publish) -> None:
        await publish(self.topics.topic(T.SHADOW_UPDATE), self.report())
        await publish(self.topics.topic(T.SHADOW_GET), b"{}")
        await self._fetch(publish)

    async def _fetch(self, publish: Publish) -> None:
        if self.fetching:
            log.info("fetching rule set %s from the cloud", self.fetching[:12])
            await publish(self.topics.topic(T.RULESET_GET), json.dumps({"hash": self.fetching}).encode())
        if self.fetching_model:
            sha = self.fetching_model["sha256"]
            log.info("fetching anomaly model %s from the cloud", sha[:12])
            await publish(self.topics.topic(T.MODEL_GET), json.dumps({"sha256": sha}).encode())

    async def _model(self, raw: bytes, publish: Publish) -> None:
        """The cloud's answer to model/get: handed to the anomaly runner (which checks the hash, loads and
        probes the file) only if it is the model asked for."""
        want = self.fetching_model
        try:
            msg = json.loads(raw)
        except ValueError:
            log.warning("malformed model message")
            return
        if want is None or not isinstance(msg, dict) or msg.get("sha256") != want["sha256"]:
            return  # an answer to an earlier request
        if "error" in msg:
            self.rejected["model"] = f"the cloud cannot deliver model {want['sha256'][:12]}: {str(msg['error'])[:200]}"
        else:
            doc = {**want, "onnx_b64": msg.get("onnx_b64")}
            refused = self.target.set_model(doc)
            if refused:
                self.rejected["model"] = refused
            else:
                self.rejected.pop("model", None)
        self.fetching_model = None
        if "model" in self.rejected:
            log.warning("desired model rejected: %s", self.rejected["model"])
        await publish(self.topics.topic(T.SHADOW_UPDATE), self.report())

    async def _ruleset(self, raw: bytes, publish: Publish) -> None:
        """The cloud's answer to ruleset/get: applied only if it is the set asked for and its hash checks."""
        from carbonlink.rules import RuleSetDoc

        try:
            msg = json.loads(raw)
            h = msg.get("hash") if isinstance(msg, dict) else None
        except ValueError:
            log.warning("malformed rule set message")
            return
        if h is None or h != self.fetching:
            return  # an answer to an earlier request
        if "error" in msg:
            self.rejected["rules"] = f"the cloud cannot deliver rule set {h[:12]}: {str(msg['error'])[:200]}"
        else:
            try:
                doc = RuleSetDoc.model_validate(msg.get("doc"))
            except ValueError as exc:
                doc, self.rejected["rules"] = None, f"rule set {h[:12]} from the cloud is not valid: {str(exc)[:200]}"
            if doc is not None and doc.content_hash() != h:
                self.rejected["rules"] = f"rule set from the cloud does not have hash {h[:12]}; not applied"
            elif doc is not None:
                refused = self.target.set_rules(doc.model_dump(mode="json"))
                if refused:
                    self.rejected["rules"] = refused
                else:
                    self.rejected.pop("rules", None)
        self.fetching = None
        if "rules" in self.rejected:
            log.warning("desired rules rejected: %s", self.rejected["rules"])
        await publish(self.topics.topic(T.SHADOW_UPDATE), self.report())

    async def handle(self, topic: str, raw: bytes, publish: Publish) -> bool:
        """Handle a shadow message; False if the topic is not a shadow topic."""
        suffix = topic.removeprefix(self.topics.prefix + "/")
        if suffix in (T.SHADOW_UPDATE_REJECTED, T.SHADOW_GET_REJECTED):
            log.warning("cloud refused a shadow request: %s", raw[:300].decode("utf-8", "replace"))
            return True
        if suffix == T.SHADOW_UPDATE_ACCEPTED:
            return True
        if suffix == T.RULESET:
            await self._ruleset(raw, publish)
            return True
        if suffix == T.MODEL:
            await self._model(raw, publish)
            return True
        if suffix not in (T.SHADOW_DELTA, T.SHADOW_GET_ACCEPTED):
            return False
        try:
            msg = json.loads(raw)
            version = msg["version"]
            if type(version) is not int:  # the cloud writes an integer; true, 2.5, "3" or 1e400 are not versions
                raise TypeError("version is not an integer")
            desired = msg["desired"] if suffix == T.SHADOW_DELTA else msg["state"]["desired"]
            if not isinstance(desired, dict):
                raise TypeError("desired is not an object")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            log.warning("malformed shadow message on %s: %s", topic, exc)
            return True
        if version <= self.version and self.desired == desired:
            return True  # already applied (a retained or repeated message)
        if version < self.version:
            log.info("ignoring shadow version %d older than applied version %d", version, self.version)
            return True
        self._apply(desired)
        self.version, self.desired = version, desired
        self._save()
        await publish(self.topics.topic(T.SHADOW_UPDATE), self.report())
        await self._fetch(publish)
        return True
