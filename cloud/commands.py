"""Commands to gateways, and the cloud's MQTT link for the control plane (shadows and commands).

A command is stored, published QoS 1 on ``cl/{site}/{gw}/cmd/{name}`` with a
deadline, and awaited until the gateway's result arrives on ``cmd/result`` or
the timeout passes. A gateway refuses a command whose deadline has passed, so
a command queued for an offline gateway never runs hours later by surprise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import aiomqtt

from carbonlink.kernel import topics
from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.mqtturl import MqttConfigError, MqttUrl
from carbonlink.kernel.wire import now_ms

from .model_delivery import ModelServer
from .rules_delivery import RuleSetServer
from .shadows import Publish, ShadowService
from .store import Store

log = logging.getLogger(__name__)

KNOWN_COMMANDS = ("read_now", "restart_driver", "reload_config")
MAX_ARGS_BYTES = 4096


class CommandError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class CommandService:
    def __init__(self, store: Store, publish: Publish | None = None) -> None:
        self.store = store
        self.publish = publish
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def send(self, gateway: str, name: str, args: dict[str, Any] | None = None, *,
                   wait_s: float = 10.0) -> dict[str, Any]:
        """Send and wait; returns the stored command with status ok, error, rejected, expired or timeout."""
        rec = await self.store.registry.get_gateway(gateway)
        if rec is None:
            raise CommandError(404, f"gateway {gateway!r} is not registered")
        if rec.revoked:
            raise CommandError(409, f"gateway {gateway!r} is revoked")
        if name not in KNOWN_COMMANDS:
            raise CommandError(422, f"unknown command {name!r}; known: {', '.join(KNOWN_COMMANDS)}")
        args = args or {}
        if not isinstance(args, dict) or len(json.dumps(args)) > MAX_ARGS_BYTES:
            raise CommandError(422, f"args must be a JSON object of at most {MAX_ARGS_BYTES} bytes")
        if not 0 < wait_s <= 300:
            raise CommandError(422, "timeout must be between 0 and 300 seconds")
        if self.publish is None:
            raise CommandError(503, "the control link to the broker is not running")
        cid = uuid.uuid4().hex
        created = now_ms()
        deadline = created + int(wait_s * 1000)
        await self.store.control.add_command(cid, gateway, name, args, created, deadline)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[cid] = fut
        body = {"id": cid, "name": name, "args": args, "deadline_ms": deadline}
        try:
            await self.publish(f"{topics.ROOT}/{rec.site}/{gateway}/{topics.COMMAND}/{name}",
                               json.dumps(body).encode(), False)
            try:
                await asyncio.wait_for(asyncio.shield(fut), wait_s)
            except TimeoutError:
                await self.store.control.finish_command(cid, "timeout", None, now_ms())
        finally:
            self._waiting.pop(cid, None)
        got = await self.store.control.get_command(cid)
        assert got is not None
        return got

    async def handle_result(self, topic: str, raw: bytes) -> None:
        parts = topics.split(topic)
        try:
            msg = json.loads(raw)
            cid, status = str(msg["id"]), str(msg["status"])
        except (ValueError, KeyError, TypeError):
            log.warning("malformed command result on %s: %r", topic, raw[:200])
            return
        cmd = await self.store.control.get_command(cid)
        if cmd is None or parts is None or cmd["gateway"] != parts[1]:
            log.warning("result on %s for a command this gateway was not sent: %s", topic, cid)
            return
        result = msg.get("result") if isinstance(msg.get("result"), dict) else {"error": msg.get("error")}
        if status not in ("ok", "error", "rejected", "expired"):
            status = "error"
        await self.store.control.finish_command(cid, status, result, now_ms())
        fut = self._waiting.get(cid)
        if fut is not None and not fut.done():
            fut.set_result(msg)


class ControlLink:
    """One MQTT connection for the control plane: shadow get/update requests and command results in,
    deltas, shadow answers and commands out. Reconnects forever with backoff."""

    def __init__(self, store: Store, url: str | MqttUrl, *, client_id: str = "carbonlink-control") -> None:
        self.url = url if isinstance(url, MqttUrl) else MqttUrl.parse(url)  # credentials and TLS: kernel/mqtturl
        self.client_id = client_id
        self.shadows = ShadowService(store)
        self.commands = CommandService(store)
        self.rulesets = RuleSetServer(store)  # rule sets by hash (cloud/rules_delivery.py)
        self.models = ModelServer(store)  # anomaly models by hash (cloud/model_delivery.py)
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.backoff = Backoff(initial=0.2, cap=10.0)

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if self._client is None:
            raise aiomqtt.MqttError("control link is not connected to the broker")
        await self._client.publish(topic, payload, qos=1, retain=retain)

    async def run(self) -> None:
        self.shadows.publish = self.publish
        self.commands.publish = self.publish
        self.rulesets.publish = self.publish
        self.models.publish = self.publish
        failing_since: float | None = None
        while True:
            try:
                async with aiomqtt.Client(**self.url.client_kwargs(), identifier=self.client_id,
                                          clean_session=False, keepalive=30) as client:
                    for t in (topics.ALL_SHADOW_GET, topics.ALL_SHADOW_UPDATE, topics.ALL_COMMAND_RESULTS,
                              topics.ALL_RULESET_GET, topics.ALL_MODEL_GET):
                        await client.subscribe(t, qos=1)
                    self._client = client
                    self.connected.set()
                    self.backoff.reset()
                    if failing_since is not None:
                        log.info("control link back after %.1f s", time.monotonic() - failing_since)
                        failing_since = None
                    async for m in client.messages:
                        raw = bytes(m.payload) if isinstance(m.payload, bytes | bytearray) else b""
                        t = str(m.topic)
                        try:
                            if t.endswith("/" + topics.COMMAND_RESULT):
                                await self.commands.handle_result(t, raw)
                            elif t.endswith("/" + topics.RULESET_GET):
                                await self.rulesets.handle(t, raw)
                            elif t.endswith("/" + topics.MODEL_GET):
                                await self.models.handle(t, raw)
                            else:
                                await self.shadows.handle(t, raw)
                        except aiomqtt.MqttError:
                            raise
                        except Exception:  # one bad request must not stop the control plane
                            log.exception("control message on %s failed", t)
            except (aiomqtt.MqttError, MqttConfigError) as exc:  # a TLS file gone since start: keep trying
                self._client = None
                self.connected.clear()
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("control link lost broker %s: %s; retrying", self.url, exc)
                await asyncio.sleep(self.backoff.next_delay())
