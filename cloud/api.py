"""The HTTP API and the dashboard (FastAPI)."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from carbonlink import __version__
from carbonlink.wire import WireError, parse_ts

from .store import ReadingQuery, Store

MAX_PAGE = 5000


def _plotly_js() -> Path | None:
    """plotly.min.js from the installed plotly package: a declared dependency, not a CDN or a copy."""
    try:
        import plotly
    except ImportError:
        return None
    path = Path(os.path.dirname(plotly.__file__)) / "package_data" / "plotly.min.js"
    return path if path.exists() else None


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail},
                        status_code=status, media_type="application/problem+json")


def _ts_param(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_ts(value)
    except WireError:
        pass
    try:
        return int(value)
    except ValueError:
        raise HTTPException(422, f"{name} must be YYYY-MM-DDTHH:MM:SS.mmmZ or epoch milliseconds") from None


def create_app(store: Store, stats: Callable[[], dict[str, Any]] | None = None, *,
               admin_token: str | None = None) -> FastAPI:
    """The app; ``admin_token`` overrides $CARBONLINK_ADMIN_TOKEN for operator actions."""
    app = FastAPI(title="CarbonLink", version=__version__,
                  description="Signed telemetry from field gateways: gateways, devices, readings.")
    plotly_js = _plotly_js()

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _problem(exc.status_code, "Request error" if exc.status_code < 500 else "Server error",
                        str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _problem(422, "Invalid request", "; ".join(parts))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        counts = await store.counts()
        return {"status": "ok", "version": __version__, "storage": store.url.split("://")[0], **counts}

    @app.get("/api/gateways")
    async def gateways() -> list[dict[str, Any]]:
        return await store.list_gateways()

    @app.get("/api/devices")
    async def devices() -> list[dict[str, Any]]:
        return await store.list_devices()

    @app.get("/api/latest")
    async def latest(device: str | None = None) -> list[dict[str, Any]]:
        return await store.latest(device)

    @app.get("/api/stats")
    async def get_stats() -> dict[str, Any]:
        out: dict[str, Any] = await store.counts()
        if stats is not None:
            out.update(stats())
        return out

    @app.get("/api/dead-letters")
    async def dead_letters(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        return await store.dead_letters(limit)

    @app.get("/api/readings")
    async def readings(
        device: Annotated[str, Query(min_length=1, max_length=128)],
        point: Annotated[str | None, Query(max_length=128)] = None,
        gateway: Annotated[str | None, Query(max_length=64)] = None,
        start: Annotated[str | None, Query(description="inclusive; ISO UTC with ms, or epoch ms")] = None,
        end: Annotated[str | None, Query(description="exclusive; ISO UTC with ms, or epoch ms")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
        cursor: Annotated[str | None, Query(description="next_cursor from the previous page")] = None,
    ) -> dict[str, Any]:
        start_ms, end_ms = _ts_param("start", start), _ts_param("end", end)
        if start_ms is not None and end_ms is not None and end_ms <= start_ms:
            raise HTTPException(422, "end must be after start")
        after = None
        if cursor:
            ts_text, _, pt = cursor.partition("~")
            try:
                after = (int(ts_text), pt)
            except ValueError:
                raise HTTPException(422, "cursor is not one this API returned") from None
        rows = await store.readings(ReadingQuery(device, point, gateway, start_ms, end_ms, limit, after))
        next_cursor = f"{rows[-1]['ts_ms']}~{rows[-1]['point']}" if len(rows) == limit else None
        return {"items": rows, "count": len(rows), "next_cursor": next_cursor}

    @app.get("/api/proof")
    async def proof(
        gateway: Annotated[str, Query(min_length=1, max_length=64)],
        device: Annotated[str, Query(min_length=1, max_length=128)],
        point: Annotated[str, Query(min_length=1, max_length=128)],
        ts: Annotated[str, Query(description="ISO UTC with ms, or epoch ms")],
    ) -> dict[str, Any]:
        """The proof bundle of one reading: its signed batch, Merkle proof, root and anchoring transaction."""
        from .anchor.proof import BundleError, bundle_for

        ts_ms = _ts_param("ts", ts)
        assert ts_ms is not None
        if not store.url.startswith("sqlite:///"):
            raise HTTPException(501, "proof bundles are served from the SQLite store for now")
        try:
            return await bundle_for(store.url, gateway, device, point, ts_ms)
        except BundleError as exc:
            msg = str(exc)
            raise HTTPException(409 if "not yet" in msg or "sealed" in msg or "anchored" in msg else 404, msg) from None

    from .routes_data import create_data_router
    from .routes_provision import provisioning_router

    app.include_router(create_data_router(store))

    app.include_router(provisioning_router(store, admin_token))

    @app.get("/static/plotly.min.js", include_in_schema=False)
    async def plotly_file() -> FileResponse:
        if plotly_js is None:
            raise HTTPException(404, "plotly is not installed; install the 'cloud' extra")
        return FileResponse(plotly_js, media_type="application/javascript")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        html = resources.files("cloud").joinpath("web/dashboard.html").read_text("utf-8")
        return HTMLResponse(html.replace("{{version}}", __version__))

    return app
