"""`carbonlink demo`: simulators → edge agent → MQTT → cloud → dashboard, on embedded defaults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from carbonlink.commands import demo_carbon
from carbonlink.commands.common import setup_logging
from carbonlink.kernel.ports import free_port, port_free

log = logging.getLogger(__name__)

GATEWAY_ID = "gw-demo-01"
SITE_ID = "demo-plant"
TENANT_ID = "demo"
CEMS_DEVICE, INVERTER_DEVICE, TREES = "cems-stack-1", "inverter-1", 5


@dataclass
class DemoSummary:
    produced: int
    published: int
    stored: int
    rejected: int
    duplicates: int
    unacked: int
    seconds: float
    dashboard: str
    mqtt: str
    drained: bool
    anchored_windows: int = 0  # this run's
    anchored_readings: int = 0
    # The data folder keeps earlier runs (their readings, anchors and chain): said, never mixed in silently.
    run: int = 1  # this is the data folder's n-th demo run
    earlier_runs: int = 0
    anchored_windows_all_runs: int = 0
    anchored_readings_all_runs: int = 0
    note: str = ""
    # Tonnes so far (provisional: from raw readings, before any HJ 76 hour is complete; cloud/carbon/live.py)
    co2_emitted_t: str = "0"
    co2_avoided_t: str = "0"
    co2_sequestered_t: str = "0"
    # A simulated past day put in the outbox before the live run, so the accounts have complete hours
    history_readings: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def write_gateway_config(path: Path, *, cems_port: int, inverter_port: int, mqtt_url: str) -> Path:
    cfg = {
        "gateway": {"id": GATEWAY_ID, "site": SITE_ID, "key_file": "gateway.key", "data_dir": "edge"},
        "mqtt": {"url": mqtt_url},
        "batch": {"max_readings": 500, "max_age_s": 1.0},
        "devices": [
            {"id": "cems-stack-1", "driver": "modbus_tcp", "host": "127.0.0.1", "port": cems_port,
             "poll_interval_s": 1.0, "pointmap": "cems"},
            {"id": "inverter-1", "driver": "sunspec", "host": "127.0.0.1", "port": inverter_port,
             "poll_interval_s": 1.0},
            # No radio here: the BLE driver decodes the forest simulator's BTHome adverts instead.
            {"id": "forest-plot-1", "driver": "ble_bthome", "source": "simulator", "poll_interval_s": 2.0,
             "sensors": [{"mac": f"D2:FC:00:00:00:{i:02X}", "id": f"tree-{i:03d}"} for i in range(1, 6)]},
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by `carbonlink demo`; edit a copy for your own gateway.\n"
                    + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


@contextlib.asynccontextmanager
async def _broker(mqtt_url: str | None) -> AsyncIterator[str]:
    if mqtt_url:
        yield mqtt_url
        return
    from carbonlink.cloud.broker import EmbeddedBroker

    async with EmbeddedBroker() as broker:
        yield broker.url


async def run_demo(*, duration: float | None, data_dir: Path, mqtt_url: str | None, http_port: int,
                   live: bool = True, stop: asyncio.Event | None = None,
                   anchor_window_s: int = 10, past_day: bool = True) -> DemoSummary:
    from carbonlink.cloud.anchor.jobs import AnchorSettings, running_anchor
    from carbonlink.cloud.auth import create_api_key
    from carbonlink.cloud.service import running_cloud
    from carbonlink.commands import simsources
    from carbonlink.edge.agent import EdgeAgent
    from carbonlink.edge.config import load_gateway_config
    from carbonlink.edge.identity import public_key_hex
    from carbonlink.simulators.cems import CemsStack
    from carbonlink.simulators.modbus_host import ModbusDeviceHost
    from carbonlink.simulators.sunspec import SunSpecInverter

    stop = stop or asyncio.Event()
    if not port_free(http_port):
        http_port = free_port()
    started = time.monotonic()
    started_ms = int(time.time() * 1000)
    run = _count_run(data_dir)
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(_broker(mqtt_url))
        cems = await stack.enter_async_context(ModbusDeviceHost(CemsStack().fill, port=free_port()))
        inverter = await stack.enter_async_context(SunSpecInverter(port=free_port()))
        cfg_path = write_gateway_config(data_dir / "gateway.yaml", cems_port=cems.port,
                                        inverter_port=inverter.port, mqtt_url=url)
        cfg = load_gateway_config(cfg_path)
        cloud = await stack.enter_async_context(
            running_cloud(f"sqlite:///{data_dir / 'cloud.sqlite'}", url, http_port=http_port, sites=[SITE_ID],
                          client_id=f"carbonlink-ingest-demo-{http_port}"))
        # Anchoring: windows of readings → Merkle roots → the AnchorRegistry on an in-process EVM whose
        # transactions are journaled in the data folder, so proofs still verify after the demo restarts.
        # The simulated past day is late data: hour windows once its hours are 2 minutes old.
        await stack.enter_async_context(running_anchor(
            cloud.store, f"evm:///{(data_dir / 'chain.jsonl').resolve()}",
            settings=AnchorSettings(window_s=anchor_window_s, settle_s=2.0, backfill_after_s=120), interval_s=1.0))
        simsources.install()
        agent = EdgeAgent(cfg)
        await cloud.store.registry.register_gateway(GATEWAY_ID, SITE_ID, "ed25519", public_key_hex(agent.key),
                                                    tenant=TENANT_ID)
        # The accounts need complete hours: the simulators' past day goes into the outbox first (commands/
        # demo_carbon.py); the stack, inverter and plot are registered for accounting once their series exist.
        # past_day=False: live data only (its anchoring is not queued behind a day of windows).
        history, history_start, history_end, counter_wh = await demo_carbon.seed_history(
            cloud.store, agent.outbox, GATEWAY_ID, cems_device=CEMS_DEVICE, inverter_device=INVERTER_DEVICE,
            trees=TREES) if past_day else (0, int(time.time() * 1000), int(time.time() * 1000), None)
        if counter_wh is not None:
            inverter.set_energy(counter_wh)  # the live counter goes on from the past day's
        ended = asyncio.Event()
        registering = asyncio.create_task(_register_when_ready(cloud.store, ended, (history_start, history_end),
                                                                history))
        # A dashboard login for this run only: an admin key in the URL fragment (never sent to the server
        # in requests; the page keeps it in sessionStorage), revoked when the demo stops.
        key_id, key = await create_api_key(cloud.store, TENANT_ID, "admin", "carbonlink demo dashboard")
        stack.push_async_callback(
            lambda: cloud.store.access.revoke_api_key(TENANT_ID, key_id, int(time.time() * 1000)))
        login_url = f"{cloud.dashboard_url}#key={key}"
        await agent.start()
        try:
            await _watch(agent, cloud, duration, stop, live, login_url)
        finally:
            await agent.stop_devices()
            drained = await agent.drain(within=15.0)
            stats = agent.stats()
            await agent.stop()
            ended.set()
            await registering  # it stops at its next step; the hours are accounted below either way
        if await _register(cloud.store):
            await demo_carbon.account(cloud.store, TENANT_ID, history_start, int(time.time() * 1000))
        c = cloud.ingest.counters
        this_run = await cloud.store.db.fetchrow(
            "SELECT count(*) AS w, coalesce(sum(count), 0) AS r FROM anchor_jobs WHERE state = 'anchored'"
            " AND created_ms >= ?", started_ms)
        all_w, all_r = await cloud.store.anchors.anchored_count()
        tonnes = await _tonnes_so_far(cloud.store, started_ms, int(time.time() * 1000) + 1)
        return DemoSummary(
            produced=stats.produced + history, published=stats.published, stored=c.readings_stored,
            rejected=c.rejected_readings, duplicates=c.readings_duplicate, unacked=stats.unacked_batches,
            seconds=round(time.monotonic() - started, 1), dashboard=cloud.dashboard_url, mqtt=url,
            drained=drained, anchored_windows=int(this_run["w"]) if this_run else 0,
            anchored_readings=int(this_run["r"]) if this_run else 0, run=run, earlier_runs=run - 1,
            anchored_windows_all_runs=all_w, anchored_readings_all_runs=all_r,
            note=(f"the data folder {data_dir} holds {run - 1} earlier run(s): produced/stored/anchored_* count this"
                  f" run; *_all_runs and the console include the earlier ones (a fresh folder: --data-dir)"
                  if run > 1 else ""), history_readings=history, **tonnes,
        )


async def _register(store: Any) -> bool:
    return await demo_carbon.register_sources(store, tenant=TENANT_ID, site=SITE_ID, gateway=GATEWAY_ID,
                                              cems_device=CEMS_DEVICE, inverter_device=INVERTER_DEVICE, trees=TREES,
                                              year=time.gmtime(time.time() + 8 * 3600).tm_year)


async def _register_when_ready(store: Any, ended: asyncio.Event, span: tuple[int, int], history: int) -> None:
    """Once the simulated day is stored: register the sources and account that day (as an operator runs
    `carbon register-stack` and `carbon account`), so the console shows it without waiting for the
    cloud's next refresh round; from then on the refresh pass keeps the hours up to date."""
    async def wait() -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), 1.0)
        return not ended.is_set()  # at the run's end, run_demo registers and accounts itself

    while await demo_carbon.stored_between(store, GATEWAY_ID, *span) < history:
        if not await wait():
            return
    while not await _register(store):
        if not await wait():
            return
    if not ended.is_set():
        await demo_carbon.account(store, TENANT_ID, span[0], int(time.time() * 1000))


def _count_run(data_dir: Path) -> int:
    """This run's number in the data folder (1 on a fresh one), kept in ``demo-runs``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "demo-runs"
    try:
        n = int(path.read_text().strip() or 0) + 1
    except (FileNotFoundError, ValueError):
        n = 1 if not (data_dir / "cloud.sqlite").exists() else 2
    path.write_text(f"{n}\n")
    return n


async def _tonnes_so_far(store: Any, start_ms: int, end_ms: int) -> dict[str, str]:
    """Emitted (the CEMS stack), avoided (the inverter) and sequestered (the plot) during this run."""
    from decimal import Decimal

    from carbonlink.cloud.carbon import live
    from carbonlink.cloud.carbon.forest import TreeConfig

    trees = {f"tree-{i:03d}": TreeConfig(f"tree-{i:03d}", "generic_ipcc", Decimal(20), Decimal(15))
             for i in range(1, 6)}
    emitted = await live.emitted_t(store.db, GATEWAY_ID, "cems-stack-1", start_ms, end_ms)
    avoided, _ = await live.avoided_t(store.db, GATEWAY_ID, "inverter-1", start_ms, end_ms,
                                      rated_w=Decimal(100_000))
    sequestered = await live.sequestered_t(store.db, GATEWAY_ID, trees, start_ms, end_ms)
    return {"co2_emitted_t": str(emitted), "co2_avoided_t": str(avoided), "co2_sequestered_t": str(sequestered)}


async def _watch(agent: Any, cloud: Any, duration: float | None, stop: asyncio.Event, live: bool,
                 login_url: str) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console(stderr=True)
    deadline = None if duration is None else time.monotonic() + duration

    def status() -> str:
        s, c = agent.stats(), cloud.ingest.counters
        devs = " ".join(f"{k}:{v['state']}" for k, v in s.devices.items())
        left = "Ctrl-C to stop" if deadline is None else f"{max(0, deadline - time.monotonic()):.0f}s left"
        return (f"produced {s.produced}  published {s.published}  stored {c.readings_stored}  "
                f"rejected {c.rejected_readings}  link {s.link}  {devs}  {left}")

    async def wait(tick: Any) -> None:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            await asyncio.sleep(0.25)
            tick()

    if not live:
        await wait(lambda: None)
        return
    if console.is_terminal:
        # The sign-in link on a line of its own that is never wrapped (a wrapped link breaks the key),
        # then one status line that updates in place.
        console.print("CarbonLink demo. Console, signed in as the demo's admin while it runs:", style="bold green")
        console.print(login_url, style="bold cyan", soft_wrap=True, overflow="ignore", crop=False)
        with Live(Text(status()), console=console, refresh_per_second=4, transient=True) as view:
            await wait(lambda: view.update(Text(status())))
        return
    # Not a terminal (a log, a pipe, CI): plain lines, never wrapped; a status line every 10 s.
    print("CarbonLink demo. Console, signed in as the demo's admin while it runs:", file=sys.stderr)
    print(login_url, file=sys.stderr, flush=True)
    last = time.monotonic()

    def every_10s() -> None:
        nonlocal last
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            print(status(), file=sys.stderr, flush=True)

    await wait(every_10s)


# --- the command ---------------------------------------------------------------------------------

app = typer.Typer(add_completion=False)


@app.command()
def demo(
    duration: Annotated[float | None, typer.Option(help="stop by itself after this many seconds")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON summary at the end")] = False,
    mqtt: Annotated[str | None, typer.Option(help="external broker, e.g. mqtt://127.0.0.1:1883")] = None,
    data_dir: Annotated[Path, typer.Option(help="where the demo keeps its databases and keys")] = Path("var/demo"),
    http_port: Annotated[int, typer.Option(help="dashboard port (a free one is used if taken)")] = 8080,
    past_day: Annotated[bool, typer.Option(help="first buffer and account a simulated past day, so the carbon"
                                                " pages have complete hours; --no-past-day: live data only")] = True,
) -> None:
    """Run simulators, broker, cloud and an edge agent together, with a live dashboard."""
    setup_logging("WARNING")
    stop = asyncio.Event()

    async def go() -> Any:
        task = asyncio.ensure_future(run_demo(duration=duration, data_dir=data_dir, mqtt_url=mqtt,
                                              http_port=http_port, live=not json_out, stop=stop,
                                              past_day=past_day))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)  # a clean stop: drain, then summarise
        return await task

    summary = asyncio.run(go())
    if json_out:
        print(json.dumps(summary.as_dict()))
    else:
        print(f"stopped: produced {summary.produced}, published {summary.published}, "
              f"stored {summary.stored}, rejected {summary.rejected}", file=sys.stderr)
        if summary.note:
            print(f"note: {summary.note}", file=sys.stderr)
