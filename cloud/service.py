"""Run the cloud: storage, ingest subscriber and HTTP API in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import uvicorn

from carbonlink.kernel.mqtturl import MqttUrl
from carbonlink.kernel.tasks import cancel_and_wait
from carbonlink.kernel.wire import now_ms

from .api import create_app
from .auth import first_admin_hint
from .carbon import warnings as carbon_warnings
from .commands import ControlLink
from .ingest import IngestService
from .metrics import Metrics, instrument
from .rules_service import RulesService
from .settings import CloudSettings
from .store import Store, open_store

log = logging.getLogger(__name__)


class CloudService:
    def __init__(self, store_url: str, mqtt_url: str | MqttUrl, *, http_host: str = "127.0.0.1",
                 http_port: int = 8080, client_id: str = "carbonlink-ingest", shared_group: str | None = None,
                 settings: CloudSettings | None = None, refresh_every_s: float = 30.0,
                 sites: list[str] | None = None) -> None:
        self.settings = settings or CloudSettings()
        self.metrics = Metrics(self.stats)
        # Ingest and API share one store; /metrics sees its statement latency, commits, lag and dead letters.
        self.store: Store = open_store(store_url)
        instrument(self.store, self.metrics)
        # The broker URL with CARBONLINK_MQTT_* credentials and TLS files, checked once here (kernel/mqtturl.py).
        self.mqtt = mqtt_url if isinstance(mqtt_url, MqttUrl) else MqttUrl.from_env(mqtt_url)
        self.ingest = IngestService(self.store, self.mqtt, client_id=client_id, shared_group=shared_group,
                                    sites=sites)
        self.metrics.attach(self.ingest.processor)
        # Shadows and commands travel on their own connection, so a busy ingest never delays them.
        self.control = ControlLink(self.store, self.mqtt, client_id=f"{client_id}-control")
        # Rules: gateways' alert events into the alerts table, the cloud's own evaluation of what ingest
        # committed, alert changes published on the control link (cloud/rules_service.py).
        self.rules = RulesService(self.store, self.settings, publish=self.control.publish)
        self.ingest.processor.batch_listeners.append(self.rules.on_batch)
        self.ingest.processor.event_listeners.append(self.rules.on_event)
        self.http_host, self.http_port = http_host, http_port
        # Closed hours get their rollups (and carbon stack-hours) a while after the hour ends, and again
        # whenever a late batch touches them: one refresher per cloud process (work is fenced per hour).
        self.refresh_every_s = refresh_every_s
        from .carbon.sqlstore import attach as attach_carbon

        attach_carbon(self.store)
        self._server: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}/"

    def stats(self) -> dict[str, Any]:
        return {"ingest": {"state": self.ingest.state, "store_error": self.ingest.store_error,
                           **asdict(self.ingest.counters)},
                "rules": asdict(self.rules.counters)}

    async def start(self) -> None:
        await self.store.open()
        # Node secrets are sealed at rest; without their key the service does not start (cloud/secretbox.py).
        try:
            await self.store.registry.use_secrets(self.settings.secret_box(),
                                                  plain_allowed=self.settings.environment == "development")
        except BaseException:
            await self.store.close()
            raise
        if not await self.store.access.has_credentials():  # the API needs an admin to make users: say how, once
            log.info(first_admin_hint(re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.store.url)))
        # The control router goes in through create_app, behind the tenant and role checks.
        app = create_app(self.store, self.stats, settings=self.settings, metrics=self.metrics, control=self.control,
                         rules=self.rules)
        config = uvicorn.Config(app, host=self.http_host, port=self.http_port, log_level="warning",
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._tasks = [asyncio.create_task(self.ingest.run(), name="ingest"),
                       asyncio.create_task(self._server.serve(), name="http"),
                       asyncio.create_task(self.control.run(), name="control"),
                       asyncio.create_task(self._refresh_rollups(), name="rollups"),
                       asyncio.create_task(self.rules.run(), name="rules")]
        for _ in range(200):  # until uvicorn listens, so callers can print a working URL
            if self._server.started or self._tasks[1].done():
                break
            await asyncio.sleep(0.02)
        if self._tasks[1].done():
            exc = self._tasks[1].exception()
            raise RuntimeError(f"HTTP server could not start on {self.http_host}:{self.http_port}: {exc}")
        if self.http_port == 0:  # "any free port": say the one the system gave, so the printed URL works
            for server in self._server.servers:
                for sock in server.sockets:
                    self.http_port = int(sock.getsockname()[1])
        try:
            await asyncio.wait_for(self.ingest.connected.wait(), 10)
        except TimeoutError:
            log.warning("ingest has not reached the broker %s yet; it keeps retrying", self.ingest.url)

    async def _refresh_rollups(self) -> None:
        """Materialise closed hours now and then; a failing round is logged once and tried again."""
        failing = False
        while True:
            await asyncio.sleep(self.refresh_every_s)
            try:
                await self.store.data.refresh_all_hours(now_ms())  # a backlog is many rounds
                # Allowance warnings as the refreshed accounts now forecast them (each level once a year).
                await carbon_warnings.check(self.store.db, now_ms(), self.control.publish)
                if failing:
                    log.info("rollup refresh works again")
                failing = False
            except Exception as exc:  # the store being down is the ingest's to report; keep trying
                if not failing:
                    log.warning("rollup refresh failed (%s: %s); trying again in %.0f s", type(exc).__name__, exc,
                                self.refresh_every_s)
                failing = True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        # Cancelled until they end (a cancellation can be lost, as in kernel.tasks); the HTTP server
        # stops on should_exit and is awaited with them.
        await cancel_and_wait([t for t in self._tasks if t.get_name() != "http"], what="cloud")
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.store.close()


@contextlib.asynccontextmanager
async def running_cloud(store_url: str, mqtt_url: str | MqttUrl, **kw: Any) -> AsyncIterator[CloudService]:
    svc = CloudService(store_url, mqtt_url, **kw)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
