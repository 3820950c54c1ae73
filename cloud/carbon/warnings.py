"""Allowance warnings raised by the cloud itself, not only when someone runs ``carbonlink carbon forecast``.

After each rollup refresh round the service asks, for every tenant with an allowance for the current
year: what does the forecast to year end say, as of the last complete local day? A threshold reached
for the first time this year is recorded (``carbon_warnings``, ``GET /api/carbon/warnings``) and
published once on MQTT for other consumers (a notifier, Node-RED):

    cl/~tenant/{tenant}/carbon/warnings      {"tenant", "year", "level", "severity", "ratio", ...}

``~`` is outside the id alphabet (carbonlink.kernel.ids), so this level can never be a site's; the
topic stays under ``cl/#``, which only the cloud's own account may write.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from carbonlink.kernel import topics

from . import sqlstore
from .errors import CarbonInputError

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], Awaitable[None]]  # topic, payload, retain


def warnings_topic(tenant: str) -> str:
    return f"{topics.ROOT}/~tenant/{tenant}/carbon/warnings"


async def check(db: Any, now_ms: int, publish: Publish | None = None, *,
                tz_offset_min: int = 480) -> list[dict[str, Any]]:
    """Raise (record and publish) the warnings the current forecasts reach; returns the new ones."""
    local = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC) + dt.timedelta(minutes=tz_offset_min)
    day = local.date() - dt.timedelta(days=1)  # the last complete local day
    if day.year != local.year:  # 1 January: last year is closed, this year has no day yet
        return []
    tenants = [r["tenant"] for r in await db.fetch(
        "SELECT tenant FROM carbon_allowances WHERE year = ? ORDER BY tenant", day.year)]
    new: list[dict[str, Any]] = []
    for tenant in tenants:
        try:
            f = await sqlstore.forecast(db, tenant, day.year, day.month, day.day, tz_offset_min=tz_offset_min)
        except CarbonInputError as exc:  # e.g. no accounts yet: nothing to warn about, say why once per round
            log.debug("no forecast for %s: %s", tenant, exc)
            continue
        for w in await sqlstore.raise_warnings(db, tenant, f, at_ms=now_ms):
            log.warning("carbon allowance %s for %s %s: forecast %s t of %s t", w["level"], tenant, w["year"],
                        w["forecast_t"], w["allowance_t"])
            new.append(w)
            if publish is not None:
                try:
                    await publish(warnings_topic(tenant), json.dumps(w).encode(), False)
                except Exception as exc:  # the row is recorded; the API still shows it
                    log.warning("could not publish the %s warning for %s: %s", w["level"], tenant, exc)
    return new
