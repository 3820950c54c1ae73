"""The MQTT topic scheme: everything a gateway says or hears lives under one prefix.

``cl/{site}/{gateway}/...``; see docs/topics.md for the table and who may publish where.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ids import check_id

ROOT = "cl"

# Suffixes under a gateway's prefix, gateway → cloud unless noted.
TELEMETRY = "telemetry"            # signed batches, QoS 1
ACK = "ack"                        # cloud → gateway: {"seq", "status", "reason"}
STATUS = "status"                  # retained "online"/"offline"; the last will sets "offline"
EVENTS = "events"                  # alerts from rules and the anomaly model
SHADOW_GET = "shadow/get"
SHADOW_GET_ACCEPTED = "shadow/get/accepted"      # cloud → gateway
SHADOW_UPDATE = "shadow/update"
SHADOW_UPDATE_ACCEPTED = "shadow/update/accepted"  # cloud → gateway
SHADOW_UPDATE_REJECTED = "shadow/update/rejected"  # cloud → gateway
SHADOW_DELTA = "shadow/update/delta"               # cloud → gateway
COMMAND = "cmd"                    # cloud → gateway: cmd/{name}
COMMAND_RESULT = "cmd/result"
SHADOW_GET_REJECTED = "shadow/get/rejected"        # cloud → gateway
RULESET_GET = "ruleset/get"        # {"hash"}: the rule set the shadow names by hash
RULESET = "ruleset"                # cloud → gateway: {"hash", "doc"} or {"hash", "error"}
ALERTS = "alerts"                  # cloud → consumers: every change of an alert of this gateway
MODEL_GET = "model/get"            # {"sha256"}: the anomaly model the shadow names by hash
MODEL = "model"                    # cloud → gateway: {"sha256", "id", "version", "onnx_b64"} or {"sha256", "error"}


@dataclass(frozen=True)
class GatewayTopics:
    site: str
    gateway: str

    def __post_init__(self) -> None:
        check_id("site", self.site)
        check_id("gateway", self.gateway)

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.site}/{self.gateway}"

    def topic(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"

    @property
    def telemetry(self) -> str:
        return self.topic(TELEMETRY)

    @property
    def ack(self) -> str:
        return self.topic(ACK)

    @property
    def status(self) -> str:
        return self.topic(STATUS)

    @property
    def events(self) -> str:
        return self.topic(EVENTS)


# Cloud-side subscriptions across all sites and gateways.
ALL_TELEMETRY = f"{ROOT}/+/+/{TELEMETRY}"
ALL_STATUS = f"{ROOT}/+/+/{STATUS}"
ALL_EVENTS = f"{ROOT}/+/+/{EVENTS}"
ALL_SHADOW_GET = f"{ROOT}/+/+/{SHADOW_GET}"
ALL_SHADOW_UPDATE = f"{ROOT}/+/+/{SHADOW_UPDATE}"
ALL_COMMAND_RESULTS = f"{ROOT}/+/+/{COMMAND_RESULT}"
ALL_RULESET_GET = f"{ROOT}/+/+/{RULESET_GET}"
ALL_MODEL_GET = f"{ROOT}/+/+/{MODEL_GET}"


def split(topic: str) -> tuple[str, str, str] | None:
    """``cl/site/gw/suffix...`` → (site, gateway, suffix), or None if not ours."""
    parts = topic.split("/", 3)
    if len(parts) != 4 or parts[0] != ROOT:
        return None
    return parts[1], parts[2], parts[3]
