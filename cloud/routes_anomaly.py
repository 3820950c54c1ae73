"""Back-testing the anomaly model over HTTP; include with ``app.include_router(create_anomaly_router(store))``.

``GET /api/anomaly/backtest?device=…&start=…&end=…``: the packaged model scored on the caller's tenant's
stored readings, as the gateways would have flagged them (cloud/anomaly_backtest.py). The range is bounded
so one request cannot hold a worker for long; nothing is written. Needs numpy and onnxruntime (the
``edge-ml`` or ``ml`` extra) on the cloud host; without them the answer is 503 with the install line.

``PUT /api/models/{id}/{version}`` (body: the ONNX file; operators and admins) verifies the file with the
loader the gateways use, under their limits (at most 1 MiB, ``too_large`` otherwise: a gateway would refuse
it; ONNX, inputs, metadata, finite scores on the probe batch) and keeps
it by its SHA-256 for the caller's tenant; a shadow's ``desired.model = {"id", "version", "sha256"}`` then
sends it to gateways (cloud/model_delivery.py). ``GET /api/models`` lists the tenant's models.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request

from carbonlink.kernel.ids import ID_PATTERN

from .auth import Controller, Reader
from .routes_data import DAY_MS, ts_param
from .store import Store
from .store.models import MAX_MODEL_BYTES

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

    @router.put("/api/models/{model_id}/{version}", status_code=201,
                summary="Upload an anomaly model (ONNX) for the tenant's gateways; answers its sha256")
    async def put_model(p: Controller, request: Request,
                        model_id: Annotated[str, Path(pattern=ID_PATTERN)],
                        version: Annotated[int, Path(ge=0, le=2**31 - 1)]) -> dict[str, Any]:
        data = await request.body()
        if not data or len(data) > MAX_MODEL_BYTES:
            raise HTTPException(422, f"the body is the ONNX file, 1 byte to {MAX_MODEL_BYTES} bytes")
        try:
            from carbonlink.anomaly.model import EDGE_MAX_MODEL_BYTES, ModelError, load
        except ImportError as exc:
            raise HTTPException(503, f"the anomaly runtime is not installed here ({exc}); "
                                     "pip install 'carbonlink[edge-ml]'") from None
        try:
            model = load(data, max_bytes=EDGE_MAX_MODEL_BYTES)  # what a gateway would accept, nothing more
        except ModelError as exc:
            raise HTTPException(422, f"not a model the gateways can run ({exc.code}): {exc}") from None
        if (model.info.model_id, model.info.version) != (model_id, version):
            raise HTTPException(422, f"the file says it is {model.info.model_id} v{model.info.version}, "
                                     f"not {model_id} v{version}")
        digest = model.info.sha256
        from carbonlink.kernel.wire import now_ms

        await store.models.put(p.tenant, digest, model_id, version, data, by=p.subject, now=now_ms())
        return {"id": model_id, "version": version, "sha256": digest, "bytes": len(data),
                "desired": {"model": {"id": model_id, "version": version, "sha256": digest}}}

    @router.get("/api/models", summary="The tenant's anomaly models")
    async def list_models(p: Reader) -> dict[str, Any]:
        return {"items": [dict(r) for r in await store.models.list(p.tenant)]}

    return router
