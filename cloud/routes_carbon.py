"""Carbon accounts over HTTP; include with ``app.include_router(create_carbon_router(store))``.

Every answer is the caller's tenant only. Figures are strings of exact decimals (t CO2, kg).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query

from .auth import Reader
from .carbon import sqlstore
from .carbon.calculator import FORMULAS
from .carbon.errors import CarbonInputError
from .routes_data import DAY_MS, ts_param
from .store import Store

MAX_RANGE_MS = 3 * 366 * DAY_MS


def as_of_day(year: int, as_of: str) -> dt.date:
    """The ``as_of`` query parameter of a forecast: a real date in ``year``, else 422."""
    try:
        day = dt.date.fromisoformat(as_of)
    except ValueError:
        raise HTTPException(422, "as_of must be YYYY-MM-DD") from None
    if day.year != year:
        raise HTTPException(422, "as_of must fall in the year")
    return day


def create_carbon_router(store: Store) -> APIRouter:
    router = APIRouter(tags=["carbon"])

    async def db() -> Any:
        return store.db

    @router.get("/api/carbon/accounts", summary="Scope-1 emissions, pollutant mass and coverage per site and period")
    async def accounts(p: Reader, start: str, end: str, granularity: Literal["day", "month", "year"] = "month",
                       site: Annotated[str | None, Query(max_length=128)] = None,
                       tz_offset_min: Annotated[int, Query(ge=-840, le=840, multiple_of=15)] = 480) -> dict[str, Any]:
        s, e = ts_param("start", start), ts_param("end", end)
        if e <= s or e - s > MAX_RANGE_MS:
            raise HTTPException(422, "end must be after start, at most three years later")
        rows = await sqlstore.periods(await db(), p.tenant, granularity, s, e, tz_offset_min=tz_offset_min, site=site)
        return {"tenant": p.tenant, "granularity": granularity, "items": rows}

    @router.get("/api/carbon/assets", summary="Solar (MWh, avoided CO2) and forest sinks per asset and period,"
                " and per tree, with coverage, from the kept hours")
    async def asset_figures(p: Reader, start: str, end: str,
                            granularity: Literal["day", "month", "year"] = "month",
                            tz_offset_min: Annotated[int, Query(ge=-840, le=840, multiple_of=15)] = 480
                            ) -> dict[str, Any]:
        from .carbon import assets

        s, e = ts_param("start", start), ts_param("end", end)
        if e <= s or e - s > MAX_RANGE_MS:
            raise HTTPException(422, "end must be after start, at most three years later")
        items = await assets.asset_periods(await db(), p.tenant, granularity, s, e, tz_offset_min=tz_offset_min,
                                           by="source")
        return {"tenant": p.tenant, "granularity": granularity, "items": items,
                "trees": await assets.tree_figures(await db(), p.tenant, s, e)}

    @router.get("/api/carbon/sources", summary="The tenant's accounted sources")
    async def sources(p: Reader) -> dict[str, Any]:
        rows = await (await db()).fetch("SELECT source_id, site, kind, created_ms FROM carbon_sources"
                                        " WHERE tenant = ? ORDER BY source_id", p.tenant)
        return {"items": [dict(r) for r in rows]}

    @router.get("/api/carbon/sources/{source_id}/hours/{hour_ms}",
                summary="One stack-, inverter- or plot-hour with everything it rests on (provenance)")
    async def provenance(p: Reader, source_id: str, hour_ms: int) -> dict[str, Any]:
        from .carbon import assets

        row = await (await db()).fetchrow("SELECT tenant, kind FROM carbon_sources WHERE source_id = ?", source_id)
        if row is None or row["tenant"] != p.tenant:
            raise HTTPException(404, f"no source {source_id!r}")
        hour = hour_ms - hour_ms % sqlstore.HOUR_MS
        try:
            if row["kind"] in assets.KINDS:  # an inverter's or a plot's hour (each tree's row)
                return await assets.asset_hour(store.db, source_id, hour)
            return await sqlstore.hour_provenance(store.db, source_id, hour)
        except CarbonInputError as exc:
            raise HTTPException(404, str(exc)) from None

    @router.get("/api/carbon/sources/{source_id}/concentrations",
                summary="A stack's hourly pollutant concentrations, corrected to reference O2, against its limits")
    async def concentrations(p: Reader, source_id: str, start: str, end: str) -> dict[str, Any]:
        s, e = ts_param("start", start), ts_param("end", end)
        if e <= s:
            raise HTTPException(422, "end must be after start")
        owner = await (await db()).fetchval("SELECT tenant FROM carbon_sources WHERE source_id = ?", source_id)
        if owner != p.tenant:
            raise HTTPException(404, f"no source {source_id!r}")
        try:
            return await sqlstore.concentrations(store.db, source_id, s, e)
        except CarbonInputError as exc:
            raise HTTPException(422, str(exc)) from None

    @router.get("/api/carbon/forecast", summary="Year-end forecast of covered emissions against the allowance")
    async def forecast(p: Reader, year: Annotated[int, Query(ge=2000, le=2100)],
                       as_of: Annotated[str, Query(description="YYYY-MM-DD, the last day with data")],
                       tz_offset_min: Annotated[int, Query(ge=-840, le=840, multiple_of=15)] = 480) -> dict[str, Any]:
        day = as_of_day(year, as_of)
        try:
            f = await sqlstore.forecast(await db(), p.tenant, year, day.month, day.day, tz_offset_min=tz_offset_min)
        except CarbonInputError as exc:
            raise HTTPException(404 if "not set" in exc.problem else 409, str(exc)) from None
        return f.as_dict()  # type: ignore[no-any-return]

    @router.get("/api/carbon/warnings", summary="Allowance warnings raised (each level once a year)")
    async def warnings(p: Reader, year: Annotated[int | None, Query(ge=2000, le=2100)] = None) -> dict[str, Any]:
        where, args = ("tenant = ? AND year = ?", [p.tenant, year]) if year else ("tenant = ?", [p.tenant])
        rows = await (await db()).fetch(f"SELECT * FROM carbon_warnings WHERE {where} ORDER BY at_ms, level", *args)
        return {"items": [dict(r) for r in rows]}

    @router.get("/api/carbon/formulas", summary="Every formula of the auditor's calculator")
    async def formulas(p: Reader) -> dict[str, Any]:
        return {"items": [x.describe() for x in FORMULAS.values()]}

    return router
