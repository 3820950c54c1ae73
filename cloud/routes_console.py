"""What the operator console needs besides the resource API: live updates, the fleet tree, replays,
claim tokens, anchoring status, the dashboard figures, and the console's own files.

- ``GET /api/live`` is a server-sent event stream (``text/event-stream``, WHATWG HTML "Server-sent
  events") of ``presence`` (gateways' status and last-seen), ``latest`` (changed latest values) and
  ``alerts`` (counts and the newest open alerts). It needs credentials like any ``/api`` call, so the
  console reads it with ``fetch`` and an ``Authorization`` header: a key never goes into a URL.
- The console itself is plain ES modules, a message catalogue per language and hand-written SVG
  charts under ``cloud/web/``; no build step and no CDN. ``/docs`` is Swagger UI from the installed
  ``swagger-ui-bundle`` package, so it works offline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse

from carbonlink import __version__

from .auth import Controller, Provisioner, Reader
from .store import Store
from .store.registry import IN_TENANT

GZIP_MIN_BYTES = 16 * 1024  # smaller bodies go as they are
GZIP_LEVEL = 1  # 7.2 MB of dashboard JSON: level 1 in about 25 ms to 0.64 MB, level 6 in about 100 ms to 0.46 MB
LIVE_INTERVAL_S = 1.0
HEARTBEAT_S = 15.0
WEB_TYPES = {".js": "text/javascript", ".css": "text/css", ".json": "application/json", ".svg": "image/svg+xml",
             ".html": "text/html", ".png": "image/png", ".map": "application/json"}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def sse(event: str, data: Any) -> bytes:
    """One server-sent event; ``data`` as a single JSON line (JSON has no raw newlines)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


async def live_snapshot(store: Store, tenant: str) -> dict[str, Any]:
    from .store.rules_model import AlertQuery

    # Presence without the batch counts list_gateways adds: this runs every second per open console.
    presence = await store.db.fetch("SELECT id, site, status, status_ms, last_seen_ms, revoked FROM gateways"
                                    " WHERE tenant = ? ORDER BY id", tenant)
    for g in presence:
        g["revoked"] = int(bool(g["revoked"]))
    latest = await store.data.latest(None, tenant)
    counts = await store.rules.alerts.counts(AlertQuery(tenant, ("acknowledged", "raised"), limit=10))
    open_alerts = await store.rules.alerts.list(AlertQuery(tenant, ("acknowledged", "raised"), limit=10))
    return {"presence": presence, "latest": latest,
            "alerts": {"counts": counts, "open": [a.public() for a in open_alerts]}}


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header admits gzip (RFC 9110 §12.5.3: named or ``*``, and not q=0)."""
    q: dict[str, float] = {}
    for part in accept_encoding.split(",")[:32]:
        name, *params = (x.strip() for x in part.split(";"))
        weight = 1.0
        for param in params:
            k, _, v = param.partition("=")
            if k.strip().lower() == "q":
                try:
                    weight = float(v)
                except ValueError:
                    weight = 0.0
        q.setdefault(name.lower(), weight)
    weight = q.get("gzip", q.get("x-gzip", q.get("*", 0.0)))
    return weight > 0  # NaN is not


def etag_matches(if_none_match: str, etag: str) -> bool:
    """``If-None-Match`` against our ETag, by weak comparison (RFC 9110 §13.1.2)."""
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")[:64]]
    return "*" in tags or etag in tags


async def conditional_json(request: Request, body: bytes) -> Response:
    """A JSON body gzipped when the client accepts it, with an ETag per representation; 304 when the
    client's ``If-None-Match`` already has it. Compression runs in a thread, off the event loop."""
    digest = hashlib.blake2b(body, digest_size=16).hexdigest()
    gz = len(body) >= GZIP_MIN_BYTES and accepts_gzip(request.headers.get("accept-encoding", ""))
    etag = f'"{digest}-gzip"' if gz else f'"{digest}"'
    headers = {"ETag": etag, "Vary": "Accept-Encoding", "Cache-Control": "private, no-cache"}
    if etag_matches(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers=headers)
    if gz:
        body = await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL, mtime=0)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type="application/json", headers=headers)


async def live_events(store: Store, tenant: str, request: Request | None = None, *,
                      interval_s: float = LIVE_INTERVAL_S, rounds: int | None = None) -> AsyncIterator[bytes]:
    """The first round sends everything; later rounds only what changed (latest values row by row)."""
    seen: dict[str, str] = {}
    seen_rows: dict[tuple[str, str, str], int] = {}
    quiet = 0.0
    n = 0
    yield b"retry: 3000\n\n"
    while rounds is None or n < rounds:
        n += 1
        if request is not None and await request.is_disconnected():
            return
        snap = await live_snapshot(store, tenant)
        sent = False
        for kind in ("presence", "alerts"):
            d = _digest(snap[kind])
            if seen.get(kind) != d:
                seen[kind] = d
                sent = True
                yield sse(kind, snap[kind])
        changed = []
        for r in snap["latest"]:
            key = (r["gateway"], r["device"], r["point"])
            if seen_rows.get(key) != r["ts_ms"]:
                seen_rows[key] = r["ts_ms"]
                changed.append(r)
        if changed or n == 1:
            sent = True
            yield sse("latest", {"items": changed, "full": n == 1})
        quiet = 0.0 if sent else quiet + interval_s
        if quiet >= HEARTBEAT_S:  # a comment keeps proxies from closing an idle stream
            quiet = 0.0
            yield b": keep-alive\n\n"
        if rounds is None or n < rounds:
            await asyncio.sleep(interval_s)


def create_console_router(store: Store, *, live_interval_s: float = LIVE_INTERVAL_S) -> APIRouter:
    r = APIRouter()
    db = store.db

    @r.get("/api/live", tags=["live"], response_class=StreamingResponse,
           summary="Server-sent events: presence, latest values and alerts of the tenant, as they change")
    async def live(p: Reader, request: Request) -> StreamingResponse:
        return StreamingResponse(live_events(store, p.tenant, request, interval_s=live_interval_s),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @r.get("/api/console/tree", tags=["fleet"],
           summary="Sites → gateways → devices → points of the tenant, with presence and last data")
    async def tree(p: Reader) -> dict[str, Any]:
        sites = {s["id"]: {"id": s["id"], "name": s["name"], "gateways": []}
                 for s in await store.registry.list_sites(p.tenant)}
        gws: dict[str, dict[str, Any]] = {}
        for g in await store.registry.list_gateways(p.tenant):
            node = {"id": g["id"], "status": g["status"], "last_seen_ms": g["last_seen_ms"], "revoked": g["revoked"],
                    "batches": g["batches"], "devices": {}}
            gws[g["id"]] = node
            sites.setdefault(g["site"], {"id": g["site"], "name": g["site"], "gateways": []})["gateways"].append(node)
        for row in await store.data.latest(None, p.tenant):
            gw = gws.get(row["gateway"])
            if gw is None:
                continue
            dev = gw["devices"].setdefault(row["device"], {"id": row["device"], "last_ts_ms": 0, "points": []})
            dev["last_ts_ms"] = max(dev["last_ts_ms"], row["ts_ms"])
            dev["points"].append({k: row[k] for k in ("point", "value", "unit", "quality", "ts_ms")})
        for gw in gws.values():
            gw["devices"] = list(gw["devices"].values())
        return {"tenant": p.tenant, "sites": list(sites.values())}

    @r.post("/api/dead-letters/{letter}/replay", tags=["data"],
            summary="Run a dead letter through the ingest's checks again (admin, operator)")
    async def replay(p: Controller, letter: Annotated[int, PathParam(ge=1, le=2**62)]) -> dict[str, Any]:
        from .deadletters import replay as run_replay

        # Only letters of the tenant's gateways are visible to it (as in /api/dead-letters); others: 404.
        mine = await db.fetchval("SELECT id FROM dead_letters WHERE id = ? AND " + IN_TENANT, letter, p.tenant)
        if mine is None:
            raise HTTPException(404, f"no dead letter {letter}")
        result = (await run_replay(store, [letter]))[0]
        return {"letter": result.letter, "outcome": result.outcome, "detail": result.detail}

    @r.get("/api/provision/claim-tokens", tags=["provisioning"],
           summary="The tenant's claim tokens: site, expiry, use (never the token itself)")
    async def claim_tokens(p: Provisioner, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
        rows = await db.fetch("SELECT token_hash, site, created_ms, expires_ms, used_ms, gateway FROM claim_tokens"
                              " WHERE tenant = ? ORDER BY created_ms DESC LIMIT ?", p.tenant, limit)
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        items = [{"id": str(x["token_hash"])[:12], "site": x["site"], "created_ms": x["created_ms"],
                  "expires_ms": x["expires_ms"], "used_ms": x["used_ms"], "gateway": x["gateway"],
                  "state": "used" if x["used_ms"] else "expired" if x["expires_ms"] <= now else "open"}
                 for x in rows]
        return {"items": items, "count": len(items)}

    @r.get("/api/anchors", tags=["proofs"], summary="Anchoring jobs of the tenant's sites, newest first")
    async def anchors(p: Reader, state: Annotated[str | None, Query(max_length=32)] = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
        from .store.anchors import JOB_COLS

        cols = ", ".join(c for c in JOB_COLS if c not in ("root",))
        where, args = "site IN (SELECT id FROM sites WHERE tenant = ?)", [p.tenant]
        if state:
            where += " AND state = ?"
            args.append(state)
        rows = await db.fetch(f"SELECT {cols} FROM anchor_jobs WHERE {where} ORDER BY id DESC LIMIT ?", *args, limit)
        counts = await db.fetch("SELECT state, count(*) AS n, coalesce(sum(count), 0) AS readings FROM anchor_jobs"
                                " WHERE site IN (SELECT id FROM sites WHERE tenant = ?) GROUP BY state", p.tenant)
        return {"items": rows, "count": len(rows), "states": {c["state"]: {"windows": c["n"], "readings": c["readings"]}
                                                              for c in counts}}

    @r.get("/api/carbon/dashboard", tags=["carbon"], response_class=Response,
           summary="Emissions per site and period with coverage, and the organisation's totals per period")
    async def carbon_dashboard(p: Reader, request: Request, year: Annotated[int, Query(ge=2000, le=2100)],
                               granularity: Literal["day", "month", "year"] = "month",
                               by: Annotated[Literal["site", "stack"], Query(description="one row per site or per"
                                                                                         " stack (source)")] = "site",
                               tz_offset_min: Annotated[int, Query(ge=-840, le=840, multiple_of=15)] = 480
                               ) -> Response:
        """The same figures as ``/api/carbon/accounts`` (grams summed exactly, then shown as tonnes and
        kilograms), for a whole year of every site at once: summed, formatted and ordered by the database
        (``carbon/dashboard.py``), the body passed on as it came. Gzip when the client accepts it (a year
        of daily figures for 100 sites: 7.2 MB, 0.6 MB gzipped); an ``ETag`` of the body, and 304 without
        a body to an ``If-None-Match`` that has it."""
        from .carbon.dashboard import dashboard_json

        body = await dashboard_json(db, p.tenant, year, granularity, tz_offset_min, by=by)
        return await conditional_json(request, body)

    @r.get("/api/carbon/balance", tags=["carbon"],
           summary="The year so far, the year-end forecast and the allowance; allowance null when none is set")
    async def balance(p: Reader, year: Annotated[int, Query(ge=2000, le=2100)],
                      as_of: Annotated[str, Query(description="YYYY-MM-DD, the last day with data")],
                      tz_offset_min: Annotated[int, Query(ge=-840, le=840, multiple_of=15)] = 480) -> dict[str, Any]:
        from .carbon import sqlstore
        from .carbon.errors import CarbonInputError
        from .routes_carbon import as_of_day

        day = as_of_day(year, as_of)
        # the year so far with solar, avoided CO2, sinks and net beside scope 1, with or without an allowance
        ytd = await sqlstore.year_to_date(db, p.tenant, year, day.month, day.day, tz_offset_min=tz_offset_min)
        if await sqlstore.allowance(db, p.tenant, year) is None:
            return {"year": year, "allowance_t": None, "forecast": None,
                    "hint": f"no allowance set for {year}: carbonlink carbon allowance", **ytd}
        try:
            f = await sqlstore.forecast(db, p.tenant, year, day.month, day.day, tz_offset_min=tz_offset_min)
        except CarbonInputError as exc:  # too little history to forecast: the year so far still shows
            quota = await sqlstore.allowance(db, p.tenant, year)
            return {"year": year, "allowance_t": str(quota), "forecast": None, "hint": str(exc), **ytd}
        out: dict[str, Any] = f.as_dict()
        return {"year": year, "allowance_t": out["allowance_t"], "forecast": out, "hint": None, **ytd}

    @r.get("/api/carbon/limits", tags=["carbon"], summary="Emission limits from the factor tables (mg/m³)")
    async def limits(p: Reader) -> dict[str, Any]:
        from .carbon.factors import FactorSet

        fs = FactorSet.default()
        items = [{"source_type": k[0], "regime": k[1], "pollutant": k[2], **ref.as_dict()}
                 for k, ref in sorted(fs.limits.items())]
        return {"items": items, "count": len(items)}

    return r


def mount_console(app: FastAPI) -> None:
    """The console's page and files, and Swagger UI at /docs, all served from installed packages."""
    web = resources.files("carbonlink.cloud").joinpath("web")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        html = web.joinpath("index.html").read_text("utf-8")
        return HTMLResponse(html.replace("{{version}}", __version__),
                            headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP})

    @app.get("/console/{path:path}", include_in_schema=False)
    async def console_file(path: str) -> Response:
        parts = path.split("/")
        if not path or any(x in ("", ".", "..") or x.startswith(".") for x in parts):
            raise HTTPException(404, "no such file")
        f = web.joinpath(*parts)
        suffix = Path(path).suffix
        if suffix not in WEB_TYPES or not f.is_file():
            raise HTTPException(404, "no such file")
        return Response(f.read_bytes(), media_type=WEB_TYPES[suffix], headers={"Cache-Control": "no-cache"})

    swagger = _swagger_dir()

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if swagger is None:
            raise HTTPException(404, "Swagger UI is not installed: install the 'cloud' extra (swagger-ui-bundle)")
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="CarbonLink API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        allowed = {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"}
        if swagger is None or name not in allowed:
            raise HTTPException(404, "no such file")
        return FileResponse(swagger / name, media_type=WEB_TYPES[Path(name).suffix])


# Only this origin: scripts, styles, images and connections (fetch of /api, the live stream).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
       " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _swagger_dir() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(str(swagger_ui_path))
