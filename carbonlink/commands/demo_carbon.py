"""The demo's carbon accounts: a simulated past day in the gateway's outbox, and the accounted sources.

A demo of a minute has no complete hour (HJ 76 needs 45 valid minutes), so its accounts would stay empty.
Before the live run the simulators' models (the same stack, inverter and trees, on their own clocks)
write the readings of the past day, one a minute, into the gateway's outbox, as a gateway that was
offline would hold them; they reach the cloud through MQTT and the ingest like any backlog. On a data
folder that already holds readings, only the time since the last one is filled.

The stack, the inverter and the forest plot are then registered for accounting with the calls an
operator's `carbonlink carbon register-stack` and the asset registrations make, an allowance is set for
the year if there is none (`carbonlink carbon allowance`), and the hours are accounted as `carbonlink
carbon account` does; from then on the cloud's refresh pass keeps them up to date.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import Any

from carbonlink.kernel.wire import Reading

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
HISTORY_MS = 24 * HOUR_MS
STACK_ID, INVERTER_ID, PLOT_ID = "demo-stack-1", "demo-pv-1", "demo-plot-1"
RATED_W = Decimal(100_000)  # the simulated inverter's rating (simulators/inverter.py)
ALLOWANCE_T = Decimal(600_000)  # a year of the simulated boiler (~1,500 t CO2 a day) with some room
# The CEMS point map's names and units (edge/pointmaps/cems.yaml) for the roles the accounts use.
CEMS_POINTS = {"flow": "m³/s", "temp": "°C", "pressure": "kPa", "moisture": "%", "o2": "%", "co2": "%",
               "so2": "mg/m³", "nox": "mg/m³", "dust": "mg/m³"}


def _trees(n: int) -> list[Any]:
    from carbonlink.simulators.forest import Tree

    # as commands/simsources.py makes them for the demo's BLE driver: the same seeds, the same stand
    return [Tree(f"D2:FC:00:00:00:{i + 1:02X}", f"tree-{i + 1:03d}", None, "count_um", seed=i) for i in range(n)]


def past_readings(start_ms: int, end_ms: int, *, cems_device: str, inverter_device: str, trees: int,
                  energy_wh: float) -> tuple[list[Reading], float]:
    """One reading a minute of each accounted point over [start, end), and the inverter's counter at the end."""
    from carbonlink.simulators.cems import CemsStack
    from carbonlink.simulators.inverter import SolarInverter

    stack, inv, plot = CemsStack(seed=1), SolarInverter(energy_wh=energy_wh), _trees(trees)
    out: list[Reading] = []
    for ts in range(start_ms - start_ms % MINUTE_MS + MINUTE_MS, end_ms, MINUTE_MS):
        t = ts / 1000
        v = stack.true_values(t)
        out += [Reading.make(cems_device, p, ts, round(v[p], 4), u) for p, u in CEMS_POINTS.items()]
        pv = inv.values(t)
        out += [Reading.make(inverter_device, "ac_power", ts, round(pv["ac_power"], 1), "W"),
                Reading.make(inverter_device, "energy", ts, int(pv["energy"]), "Wh")]
        out += [Reading.make(tr.device_id, "dendrometer", ts, round(tr.values(t)["dendrometer"], 1), "µm")
                for tr in plot]
    return out, inv.energy_wh


async def seed_history(store: Any, outbox: Any, gateway: str, *, cems_device: str, inverter_device: str,
                       trees: int, now_ms: int | None = None) -> tuple[int, int, int, float | None]:
    """The past day (or the time since the last stored reading) into the outbox.

    Returns (readings added, the history's bounds (start, end], the inverter counter to continue from or None)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    last = await store.db.fetchval("SELECT max(r.ts_ms) FROM readings r JOIN series s ON s.id = r.series"
                                   " WHERE s.gateway = ?", gateway)
    start = now - HISTORY_MS if last is None else max(now - HISTORY_MS, int(last))
    if now - start < 2 * MINUTE_MS:
        return 0, start, now, None
    energy = await store.db.fetchval(
        "SELECT r.value FROM readings r JOIN series s ON s.id = r.series WHERE s.gateway = ? AND s.device = ?"
        " AND s.point = 'energy' ORDER BY r.ts_ms DESC LIMIT 1", gateway, inverter_device)
    readings, end_wh = past_readings(start, now, cems_device=cems_device, inverter_device=inverter_device,
                                     trees=trees, energy_wh=12_345_678.0 if energy is None else float(energy))
    outbox.append(readings)
    return len(readings), start, now, end_wh


async def stored_between(store: Any, gateway: str, start_ms: int, end_ms: int) -> int:
    """How many of the gateway's readings in (start, end) the cloud holds (the history arriving)."""
    return int(await store.db.fetchval("SELECT count(*) FROM readings r JOIN series s ON s.id = r.series"
                                       " WHERE s.gateway = ? AND r.ts_ms > ? AND r.ts_ms < ?", gateway, start_ms,
                                       end_ms))


async def register_sources(store: Any, *, tenant: str, site: str, gateway: str, cems_device: str,
                           inverter_device: str, trees: int, year: int) -> bool:
    """Register the stack, the inverter and the plot once their series exist; False while they do not."""
    from carbonlink.cloud.carbon import assets, sqlstore
    from carbonlink.cloud.carbon.cems import StackConfig
    from carbonlink.cloud.carbon.errors import CarbonInputError
    from carbonlink.cloud.carbon.forest import TreeConfig

    stand = [TreeConfig(t.device_id, t.species, Decimal(str(t.dbh_cm)), Decimal(str(t.height_m)), plot=PLOT_ID)
             for t in _trees(trees)]
    try:
        await sqlstore.register_stack(store.db, tenant=tenant, site=site, gateway=gateway, device=cems_device,
                                      config=StackConfig(STACK_ID, p_atm_pa=Decimal(101325)))
        await assets.register_inverter(store.db, tenant=tenant, site=site, source_id=INVERTER_ID, gateway=gateway,
                                       device=inverter_device, rated_w=RATED_W)
        await assets.register_plot(store.db, tenant=tenant, site=site, source_id=PLOT_ID, gateway=gateway,
                                   trees=stand)
    except CarbonInputError:
        return False  # the first readings have not arrived yet
    if await sqlstore.allowance(store.db, tenant, year) is None:
        await sqlstore.set_allowance(store.db, tenant, year, ALLOWANCE_T)
    return True


async def account(store: Any, tenant: str, start_ms: int, now_ms: int) -> dict[str, int]:
    """Refresh the closed hours, then account the hours from ``start`` to the current one (as `carbon account`)."""
    from carbonlink.cloud.carbon import assets

    await store.data.refresh_all_hours(now_ms)
    end = now_ms - now_ms % HOUR_MS
    return {} if end <= start_ms else await assets.account_tenant(store.db, tenant, start_ms, end)
