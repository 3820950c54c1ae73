"""Action executors against real servers: an HTTP webhook receiver, an SMTP server, Mosquitto."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiomqtt
import pytest

from carbonlink.rules.actions import (
    DeadLetter,
    DirSecrets,
    EmailExecutor,
    ExecState,
    Job,
    MappingSecrets,
    RepublishExecutor,
    SmtpSettings,
    WebhookExecutor,
    verify_webhook,
)
from carbonlink.rules.document import EmailAction, RepublishAction, WebhookAction
from tests.services import free_port, require_mosquitto_service

SECRET = b"s3cret-for-tests"


class Receiver:
    """A real HTTP server: answers with the scripted statuses, or hangs, and checks signatures."""

    def __init__(self) -> None:
        self.script: list[int | str] = []
        self.calls: list[dict[str, Any]] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify_webhook(SECRET, self.headers["X-CarbonLink-Timestamp"], body,
                                    self.headers["X-CarbonLink-Signature"])
                step = outer.script.pop(0) if outer.script else 200
                outer.calls.append({"body": json.loads(body), "signed": ok, "step": step})
                if step == "hang":
                    outer.release.wait(10)
                    return
                self.send_response(int(step))
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=never-logged"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Sleeps:
    """Records backoff delays instead of waiting them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, s: float) -> None:
        self.delays.append(s)
        await asyncio.sleep(0)


def job(action: Any, n: int = 0) -> Job:
    return Job("so2-high", "gw-1/c1/so2", "raised", action, {"kind": "alert.raised", "ts": 1000 + n, "n": n,
                                                              "device": "c1", "point": "so2"})


async def test_webhook_signs_retries_with_backoff_and_recovers(receiver: Receiver) -> None:
    receiver.script = [500, 503, 200]
    dead: list[DeadLetter] = []
    sleeps = Sleeps()
    action = WebhookAction(type="webhook", url=receiver.url, secret="ops", max_attempts=5)
    async with WebhookExecutor(secrets=MappingSecrets({"ops": SECRET}), on_dead_letter=dead.append,
                               sleep=sleeps, rng=random.Random(1), backoff_initial=1, backoff_cap=8) as ex:
        assert ex.submit(job(action))
        await asyncio.wait_for(ex.drain(), 10)
        assert ex.state is ExecState.IDLE and ex.sent == 1 and ex.failed_attempts == 2
    assert [c["step"] for c in receiver.calls] == [500, 503, 200]
    assert all(c["signed"] for c in receiver.calls) and receiver.calls[0]["body"]["n"] == 0
    assert len(sleeps.delays) == 2 and 0.5 <= sleeps.delays[0] <= 1 and 1 <= sleeps.delays[1] <= 2
    assert dead == [] and ex.state is ExecState.STOPPED


async def test_webhook_dead_letters_after_its_attempts_and_refusals_at_once(receiver: Receiver) -> None:
    receiver.script = [500, 500, 500, 400]
    dead: list[DeadLetter] = []
    action = WebhookAction(type="webhook", url=receiver.url, secret="ops", max_attempts=3)
    async with WebhookExecutor(secrets=MappingSecrets({"ops": SECRET}), on_dead_letter=dead.append,
                               sleep=Sleeps()) as ex:
        ex.submit(job(action, 1))
        ex.submit(job(action, 2))
        ex.submit(job(WebhookAction(type="webhook", url=receiver.url, secret="missing"), 3))
        await asyncio.wait_for(ex.drain(), 10)
    assert [(d.payload["n"], d.attempts) for d in dead] == [(1, 3), (2, 1), (3, 1)]
    assert "failed 3 times" in dead[0].reason and "HTTP 400" in dead[1].reason and "'missing'" in dead[2].reason
    assert all("token" not in d.target for d in dead)  # the query is never reported


async def test_a_hanging_webhook_never_blocks_submission_and_is_bounded(receiver: Receiver) -> None:
    receiver.script = ["hang", "hang"]
    dead: list[DeadLetter] = []
    action = WebhookAction(type="webhook", url=receiver.url, secret="ops", timeout_s=0.2, max_attempts=2)
    async with WebhookExecutor(secrets=MappingSecrets({"ops": SECRET}), on_dead_letter=dead.append,
                               sleep=Sleeps(), queue_size=3) as ex:
        accepted = [ex.submit(job(action, i)) for i in range(6)]  # returns at once while the first call hangs
        assert accepted == [True, True, True, False, False, False]
        full = [d for d in dead if "queue full" in d.reason]
        assert len(full) == accepted.count(False)
        await asyncio.wait_for(ex.drain(), 20)
    timed_out = [d for d in dead if "failed 2 times" in d.reason]
    assert len(timed_out) == 1 and "Timeout" in timed_out[0].reason
    assert len(dead) + ex.sent == 6  # every job is sent or a dead letter: nothing vanishes


async def test_jobs_left_at_shutdown_become_dead_letters(receiver: Receiver) -> None:
    receiver.script = ["hang"]
    dead: list[DeadLetter] = []
    action = WebhookAction(type="webhook", url=receiver.url, secret="ops", timeout_s=5)
    async with WebhookExecutor(secrets=MappingSecrets({"ops": SECRET}), on_dead_letter=dead.append) as ex:
        ex.submit(job(action, 1))
        ex.submit(job(action, 2))
        while not receiver.calls:
            await asyncio.sleep(0.01)
    assert [d.payload["n"] for d in dead] == [2] and "host stopped" in dead[0].reason
    assert not ex.submit(job(action, 3)) and "not running" in dead[-1].reason


async def test_email_reaches_an_smtp_server() -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    got: list[Any] = []

    class Keep(Sink):
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            got.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        dead: list[DeadLetter] = []
        action = EmailAction(type="email", to=["ops@example.org", "shift@example.org"])
        async with EmailExecutor(smtp=SmtpSettings("127.0.0.1", port, sender="rules@plant.example"),
                                 on_dead_letter=dead.append) as ex:
            ex.submit(job(action))
            await asyncio.wait_for(ex.drain(), 10)
    finally:
        controller.stop()
    assert dead == [] and len(got) == 1
    env = got[0]
    assert env.rcpt_tos == ["ops@example.org", "shift@example.org"]
    msg = message_from_bytes(env.content)
    assert msg["Subject"] == "CarbonLink alert.raised: so2-high on gw-1/c1/so2"
    assert '"kind":"alert.raised"' in msg.get_payload()


async def test_email_to_a_closed_port_is_retried_then_dead_lettered() -> None:
    dead: list[DeadLetter] = []
    sleeps = Sleeps()
    async with EmailExecutor(smtp=SmtpSettings("127.0.0.1", free_port(), timeout_s=2), on_dead_letter=dead.append,
                             sleep=sleeps, max_attempts=3) as ex:
        ex.submit(job(EmailAction(type="email", to=["ops@example.org"])))
        await asyncio.wait_for(ex.drain(), 10)
    assert len(dead) == 1 and dead[0].attempts == 3 and len(sleeps.delays) == 2


class MqttPublisher:
    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self.client.publish(topic, payload, qos=qos)


@pytest.mark.service("mosquitto")
async def test_republish_to_mosquitto() -> None:
    require_mosquitto_service()
    prefix = f"cl/test-{uuid.uuid4().hex[:8]}/gw-1/rules/"
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"rules-sub-{uuid.uuid4().hex[:8]}") as sub, \
            aiomqtt.Client("127.0.0.1", 1883, identifier=f"rules-pub-{uuid.uuid4().hex[:8]}") as pub:
        await sub.subscribe(prefix + "#", qos=1)
        dead: list[DeadLetter] = []
        action = RepublishAction(type="republish", topic="alerts/{rule}/{device}")
        async with RepublishExecutor(publisher=MqttPublisher(pub), prefix=prefix, on_dead_letter=dead.append) as ex:
            ex.submit(job(action, 7))
            await asyncio.wait_for(ex.drain(), 10)
        async with asyncio.timeout(10):
            msg = await anext(aiter(sub.messages))
    assert str(msg.topic) == prefix + "alerts/so2-high/c1"
    assert json.loads(msg.payload)["n"] == 7 and dead == []  # type: ignore[arg-type]


def test_secret_files_must_be_private(tmp_path: Any) -> None:
    (tmp_path / "ops").write_bytes(b"abc\n")
    (tmp_path / "ops").chmod(0o600)
    (tmp_path / "open").write_bytes(b"abc")
    (tmp_path / "open").chmod(0o644)
    secrets = DirSecrets(tmp_path)
    assert secrets.get("ops") == b"abc"
    assert secrets.get("open") is None and secrets.get("../ops") is None and secrets.get("nope") is None


def test_receivers_reject_a_tampered_body() -> None:
    ts = str(int(time.time() * 1000))
    import hashlib
    import hmac
    sig = "sha256=" + hmac.new(SECRET, ts.encode() + b"." + b'{"a":1}', hashlib.sha256).hexdigest()
    assert verify_webhook(SECRET, ts, b'{"a":1}', sig)
    assert not verify_webhook(SECRET, ts, b'{"a":2}', sig)
