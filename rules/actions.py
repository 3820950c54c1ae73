"""Action executors: republish to MQTT, call a webhook, send an e-mail.

Each executor is an async context manager with an explicit state, a bounded queue and one worker.
``submit`` never waits: evaluation hands a job over and goes on, whatever the target does. A failed
attempt is retried after a jittered, capped, doubling delay; a job that keeps failing (or that meets
a full queue, a missing secret, a refusal that retrying cannot fix, or the host stopping) becomes a
dead letter with its reason, reported to ``on_dead_letter`` — nothing is dropped silently. The worker
logs once when a target starts failing and once when it recovers, not on every retry.

Webhook bodies are canonical JSON signed with HMAC-SHA256 over ``{timestamp}.{body}`` under a secret
the rule names and the host resolves (header ``X-CarbonLink-Signature: sha256=<hex>``, timestamp in
``X-CarbonLink-Timestamp``), so a receiver can check origin and freshness.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import os
import random
import re
import smtplib
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import httpx

from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.ids import ID_RE
from carbonlink.kernel.tasks import cancel_and_wait

from .document import EmailAction, RepublishAction, WebhookAction, canonical_json

log = logging.getLogger(__name__)


class ExecState(enum.StrEnum):
    IDLE = "idle"
    SENDING = "sending"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Job:
    rule: str
    subject: str
    kind: str  # row | raised | cleared
    action: Any  # the action model
    payload: dict[str, Any]


@dataclass(frozen=True)
class DeadLetter:
    action: str
    target: str
    rule: str
    subject: str
    kind: str
    reason: str
    attempts: int
    payload: dict[str, Any]


class Permanent(Exception):
    pass


class SecretSource(Protocol):
    def get(self, name: str) -> bytes | None: ...


@dataclass
class MappingSecrets:
    values: Mapping[str, bytes]

    def get(self, name: str) -> bytes | None:
        return self.values.get(name)


@dataclass
class DirSecrets:
    """One file per secret in a folder (``{dir}/{name}``), refused unless only its owner can read it."""

    folder: Path

    def get(self, name: str) -> bytes | None:
        if not ID_RE.fullmatch(name) or name.startswith("."):
            return None
        path = self.folder / name
        try:
            st = path.stat()
        except OSError:
            return None
        if stat.S_IMODE(st.st_mode) & 0o077:
            log.error("secret file %s is readable by others (mode %o); chmod 600 it", path, stat.S_IMODE(st.st_mode))
            return None
        return path.read_bytes().strip()


@dataclass
class EnvSecrets:
    """``CARBONLINK_SECRET_OPS_HOOK`` for the secret named ``ops-hook``."""

    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    def get(self, name: str) -> bytes | None:
        value = self.environ.get("CARBONLINK_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper())
        return value.encode() if value else None


DeadLetterFn = Callable[[DeadLetter], None]
Sleep = Callable[[float], Awaitable[None]]


class Executor:
    """A bounded queue and one worker that sends jobs in order, retrying each up to its limit."""

    kind = "action"

    def __init__(self, *, on_dead_letter: DeadLetterFn, queue_size: int = 1000, backoff_initial: float = 0.5,
                 backoff_cap: float = 30.0, rng: random.Random | None = None, sleep: Sleep = asyncio.sleep,
                 max_attempts: int = 5) -> None:
        if queue_size < 1 or max_attempts < 1:
            raise ValueError("queue_size and max_attempts must be at least 1")
        self.on_dead_letter = on_dead_letter
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_size)
        self.backoff = Backoff(initial=backoff_initial, cap=backoff_cap, _rng=rng or random.Random())
        self.sleep = sleep
        self.max_attempts = max_attempts
        self.state = ExecState.STOPPED
        self.sent = 0
        self.failed_attempts = 0
        self.dead = 0
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def __aenter__(self) -> Executor:
        if self._task is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        self.state = ExecState.IDLE
        self._task = asyncio.create_task(self._run(), name=f"rules-{self.kind}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task], what=f"{self.kind} executor")
            self._task = None
        self.state = ExecState.STOPPED
        while not self.queue.empty():
            self._dead(self.queue.get_nowait(), "the host stopped before it was sent", 0)

    def submit(self, job: Job) -> bool:
        """Hand a job over without waiting; a full queue makes it a dead letter at once."""
        if self.state is ExecState.STOPPED:
            self._dead(job, f"the {self.kind} executor is not running", 0)
            return False
        try:
            self.queue.put_nowait(job)
            return True
        except asyncio.QueueFull:
            self._dead(job, f"queue full ({self.queue.maxsize} jobs waiting)", 0)
            return False

    async def drain(self) -> None:
        """Wait until every queued job was sent or dead-lettered (tests, orderly shutdown)."""
        await self.queue.join()

    def attempts_for(self, job: Job) -> int:
        return self.max_attempts

    def target(self, job: Job) -> str:
        return ""

    def timeout_for(self, job: Job) -> float:
        return 30.0

    async def send(self, job: Job) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self._deliver(job)
            finally:
                self.queue.task_done()

    async def _deliver(self, job: Job) -> None:
        limit = self.attempts_for(job)
        attempt = 0
        while True:
            attempt += 1
            self.state = ExecState.SENDING
            try:
                async with asyncio.timeout(self.timeout_for(job) + 1):
                    await self.send(job)
            except Permanent as exc:
                self._dead(job, str(exc), attempt)
                self._fail(job, str(exc))
                break
            except (httpx.HTTPError, OSError, smtplib.SMTPException, TimeoutError, ConnectionError) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.failed_attempts += 1
                self._fail(job, reason)
                if attempt >= limit:
                    self._dead(job, f"failed {attempt} times; last: {reason}", attempt)
                    break
                self.state = ExecState.BACKING_OFF
                await self.sleep(self.backoff.next_delay())
                continue
            self.sent += 1
            self.backoff.reset()
            if self._failing:
                self._failing = False
                log.info("%s to %s works again", self.kind, self.target(job))
            break
        self.state = ExecState.IDLE

    def _fail(self, job: Job, reason: str) -> None:
        if not self._failing:
            self._failing = True
            log.warning("%s to %s failed (%s); retrying with backoff", self.kind, self.target(job), reason)

    def _dead(self, job: Job, reason: str, attempts: int) -> None:
        self.dead += 1
        letter = DeadLetter(self.kind, self.target(job), job.rule, job.subject, job.kind, reason, attempts,
                            job.payload)
        try:
            self.on_dead_letter(letter)
        except Exception:  # a broken dead-letter sink must not kill the worker
            log.exception("dead-letter handler failed for %s", self.kind)


class WebhookExecutor(Executor):
    kind = "webhook"

    def __init__(self, *, secrets: SecretSource, client: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.time, **kw: Any) -> None:
        super().__init__(**kw)
        self.secrets = secrets
        self.clock = clock
        self._client = client
        self._own_client = client is None

    async def __aenter__(self) -> WebhookExecutor:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        await super().__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def attempts_for(self, job: Job) -> int:
        return int(job.action.max_attempts)

    def timeout_for(self, job: Job) -> float:
        return float(job.action.timeout_s)

    def target(self, job: Job) -> str:
        return str(job.action.url).split("?", 1)[0]  # a query may carry tokens: never logged

    async def send(self, job: Job) -> None:
        action: WebhookAction = job.action
        secret = self.secrets.get(action.secret)
        if not secret:
            raise Permanent(f"secret {action.secret!r} is not in this host's secret store")
        body = canonical_json(job.payload)
        ts = str(int(self.clock() * 1000))
        sig = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-CarbonLink-Timestamp": ts,
                   "X-CarbonLink-Signature": f"sha256={sig}",
                   "X-CarbonLink-Delivery": hashlib.sha256(body).hexdigest()[:32]}
        assert self._client is not None
        resp = await self._client.post(action.url, content=body, headers=headers, timeout=action.timeout_s)
        if 200 <= resp.status_code < 300:
            return
        if 400 <= resp.status_code < 500 and resp.status_code not in (408, 425, 429):
            raise Permanent(f"the webhook refused the call with HTTP {resp.status_code}")
        raise httpx.HTTPStatusError(f"HTTP {resp.status_code}", request=resp.request, response=resp)


def verify_webhook(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver checks (docs/rules.md shows it): the signature over ``{timestamp}.{body}``."""
    want = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, signature)


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, qos: int) -> None: ...


_TOPIC_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class RepublishExecutor(Executor):
    """Publishes under ``{prefix}`` (the edge: ``cl/{site}/{gateway}/rules/``; ACLs allow it)."""

    kind = "republish"

    def __init__(self, *, publisher: Publisher, prefix: str, **kw: Any) -> None:
        super().__init__(**kw)
        if not prefix.endswith("/") or any(ch in prefix for ch in "+#"):
            raise ValueError("prefix must end with '/' and hold no wildcard")
        self.publisher = publisher
        self.prefix = prefix

    def topic(self, job: Job) -> str:
        action: RepublishAction = job.action
        fields = {k: _TOPIC_SAFE.sub("_", str(job.payload.get(k) or "-")) for k in ("device", "point")}
        fields["rule"] = job.rule
        try:
            suffix = action.topic.format_map(fields)
        except (KeyError, ValueError, IndexError) as exc:
            raise Permanent(f"topic template {action.topic!r}: {exc}") from None
        return self.prefix + suffix

    def target(self, job: Job) -> str:
        try:
            return self.topic(job)
        except Permanent:
            return self.prefix

    def timeout_for(self, job: Job) -> float:
        return 10.0

    async def send(self, job: Job) -> None:
        await self.publisher.publish(self.topic(job), canonical_json(job.payload), int(job.action.qos))


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 25
    sender: str = "carbonlink@localhost"
    starttls: bool = False
    username: str | None = None
    password_secret: str | None = None  # the name of a secret in the host's store
    timeout_s: float = 15.0


class EmailExecutor(Executor):
    kind = "email"

    def __init__(self, *, smtp: SmtpSettings, secrets: SecretSource | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.smtp = smtp
        self.secrets = secrets

    def target(self, job: Job) -> str:
        return f"smtp://{self.smtp.host}:{self.smtp.port}"

    def timeout_for(self, job: Job) -> float:
        return self.smtp.timeout_s

    def message(self, job: Job) -> EmailMessage:
        action: EmailAction = job.action
        p = job.payload
        fields = {"kind": p.get("kind", job.kind), "rule": job.rule, "subject": job.subject,
                  "severity": p.get("severity", "")}
        msg = EmailMessage()
        msg["From"] = self.smtp.sender
        msg["To"] = ", ".join(action.to)
        msg["Subject"] = action.subject.format_map(_Default(fields))
        lines = [f"{k}: {v}" for k, v in (("rule", job.rule), ("what", fields["kind"]), ("subject", job.subject),
                                           ("severity", fields["severity"]), ("time (ms)", p.get("ts")),
                                           ("values", p.get("values")))]
        msg.set_content("\n".join(lines) + "\n\n" + canonical_json(p).decode() + "\n")
        return msg

    async def send(self, job: Job) -> None:
        msg = self.message(job)
        password = None
        if self.smtp.password_secret:
            secret = self.secrets.get(self.smtp.password_secret) if self.secrets else None
            if not secret:
                raise Permanent(f"SMTP password secret {self.smtp.password_secret!r} is not in the secret store")
            password = secret.decode()
        await asyncio.to_thread(self._send_sync, msg, password)

    def _send_sync(self, msg: EmailMessage, password: str | None) -> None:
        s = self.smtp
        with smtplib.SMTP(s.host, s.port, timeout=s.timeout_s) as client:
            if s.starttls:
                client.starttls()
            if s.username and password:
                client.login(s.username, password)
            client.send_message(msg)


class _Default(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
