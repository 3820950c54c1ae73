"""Back-testing the anomaly model over HTTP; include with ``app.include_router(create_anomaly_router(store))``.

``GET /api/anomaly/backtest?device=…&start=…&end=…``: the packaged model scored on the caller's tenant's
stored readings, as the gateways would have flagged them (cloud/anomaly_backtest.py). The range is bounded
so one request cannot hold a worker for long; nothing is written. Needs numpy and onnxruntime (the
``edge-ml`` or ``ml`` extra) on the cloud host; without them the answer is 503 with the install line.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from .auth import Reader
from .routes_data import DAY_MS, ts_param
from .store import Store

MAX_RANGE_MS = 31 * DAY_MS
MAX_DEVICES = 50
MAX_READINGS = 2_000_000


def create_anomaly_router(store: Store) -> APIRouter:
    router = APIRouter(tags=["anomaly model"])
    cache: dict[str, Any] = {}

    @router.get("/api/anomaly/backtest", summary="Which stored readings the anomaly model would have flagged")
    async def backtest(p: Reader, device: Annotated[list[str], Query(min_length=1, max_length=MAX_DEVICES)],
                       start: str, end: str) -> dict[str, Any]:
        if any(not 1 <= len(d) <= 128 for d in device):
            raise HTTPException(422, "each device id is 1-128 characters")
        s, e = ts_param("start", start), ts_param("end", end)
        if e <= s or e - s > MAX_RANGE_MS:
            raise HTTPException(422, "end must be after start, at most 31 days later")
        try:
            from carbonlink.anomaly.model import ModelError, load_default

            from .anomaly_backtest import backtest as run
        except ImportError as exc:
            raise HTTPException(503, f"the anomaly runtime is not installed here ({exc}); "
                                     "pip install 'carbonlink[edge-ml]'") from None
        if "model" not in cache:
            try:
                cache["model"] = load_default()
            except ModelError as exc:
                raise HTTPException(503, f"the packaged anomaly model does not load: {exc}") from None
        try:
            report = await run(store, cache["model"], list(dict.fromkeys(device)), start_ms=s, end_ms=e,
                               tenant=p.tenant, max_readings=MAX_READINGS)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"tenant": p.tenant, **report.to_dict()}

    return router
