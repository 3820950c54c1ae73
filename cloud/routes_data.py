"""HTTP endpoints for rollups and completeness; include with ``app.include_router(create_data_router(store))``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from carbonlink.kernel.wire import WireError, parse_ts

from . import completeness
from .auth import Auditor, Reader, tenant_gateway
from .rollups import DAY_MS, Granularity, ValidityRules, rollups
from .store import SeriesQuery, Store

# Bounded ranges keep one request from reading years of hourly rows.
MAX_RANGE_MS = {"hour": 400 * DAY_MS, "day": 3 * 366 * DAY_MS, "month": 20 * 366 * DAY_MS}
IdText = Annotated[str, Query(min_length=1, max_length=128)]
TimeText = Annotated[str, Query(description="ISO UTC with ms (YYYY-MM-DDTHH:MM:SS.mmmZ) or epoch milliseconds")]


def ts_param(name: str, value: str) -> int:
    try:
        return parse_ts(value)
    except (WireError, ValueError, OverflowError):
        pass
    if value.isascii() and value.isdigit() and len(value) <= 15:
        return int(value)
    raise HTTPException(422, f"{name} must be YYYY-MM-DDTHH:MM:SS.mmmZ or epoch milliseconds")


def _range(start: str, end: str, max_ms: int) -> tuple[int, int]:
    s, e = ts_param("start", start), ts_param("end", end)
    if e <= s:
        raise HTTPException(422, "end must be after start")
    if e - s > max_ms:
        raise HTTPException(422, f"range is longer than {max_ms // DAY_MS} days; ask for a shorter one")
    return s, e


def create_data_router(store: Store, rules: ValidityRules | None = None) -> APIRouter:
    base_rules = rules or ValidityRules()
    router = APIRouter(tags=["data quality"])

    @router.get("/api/rollups", summary="Hour, day or month statistics per point with HJ 76 validity")
    async def get_rollups(
        p: Reader, device: IdText, start: TimeText, end: TimeText,
        point: Annotated[str | None, Query(max_length=128)] = None,
        gateway: Annotated[str | None, Query(max_length=64)] = None,
        granularity: Granularity = "hour",
        min_valid_minutes: Annotated[int | None, Query(ge=0, le=60)] = None,
        tz_offset_min: Annotated[int | None, Query(ge=-840, le=840, multiple_of=15)] = None,
    ) -> dict[str, Any]:
        s, e = _range(start, end, MAX_RANGE_MS[granularity])
        r = ValidityRules(
            min_valid_minutes=base_rules.min_valid_minutes if min_valid_minutes is None else min_valid_minutes,
            min_valid_hours=base_rules.min_valid_hours, min_valid_days=base_rules.min_valid_days,
            min_valid_days_february=base_rules.min_valid_days_february,
            tz_offset_min=base_rules.tz_offset_min if tz_offset_min is None else tz_offset_min)
        items = await rollups(store, SeriesQuery(device, s, e, point, gateway, p.tenant), granularity, r)
        return {"granularity": granularity, "rules": r.__dict__, "items": items, "count": len(items)}

    @router.get("/api/availability", summary="Expected vs received readings per point and hour")
    async def get_availability(
        p: Reader, device: IdText, start: TimeText, end: TimeText,
        point: Annotated[str | None, Query(max_length=128)] = None,
        gateway: Annotated[str | None, Query(max_length=64)] = None,
        interval_s: Annotated[float | None, Query(gt=0, le=86400,
                                                  description="poll interval; default: observed")] = None,
    ) -> dict[str, Any]:
        s, e = _range(start, end, MAX_RANGE_MS["hour"])
        interval = round(interval_s * 1000) if interval_s else None
        items = await completeness.availability(store, SeriesQuery(device, s, e, point, gateway, p.tenant),
                                                interval)
        return {"items": items, "count": len(items)}

    @router.get("/api/gateways/{gateway_id}/gaps", summary="Batch sequence numbers the cloud does not have")
    async def get_gaps(p: Auditor, gateway_id: Annotated[str, Path(min_length=1, max_length=64)],
                       limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> dict[str, Any]:
        await tenant_gateway(store, p, gateway_id)  # 404 for unknown and for another tenant's
        return await completeness.seq_gaps(store, gateway_id, limit)

    @router.get("/api/gateways/{gateway_id}/late", summary="Batches received long after they were created")
    async def get_late(p: Auditor, gateway_id: Annotated[str, Path(min_length=1, max_length=64)],
                       min_delay_s: Annotated[float, Query(ge=0, le=10 * 366 * 86400)] = 300,
                       limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> dict[str, Any]:
        await tenant_gateway(store, p, gateway_id)
        items = await completeness.late_batches(store, gateway_id, round(min_delay_s * 1000), limit)
        return {"items": items, "count": len(items)}

    return router
