"""The HTTP API and the dashboard (FastAPI).

Every ``/api`` call needs credentials (cloud/auth.py: API keys, login tokens, roles per tenant) and
sees only its tenant's data; ``/health``, the console's files and ``/docs`` are open. Errors are
``application/problem+json`` (RFC 9457) everywhere, 500 included, without internals.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carbonlink import __version__

from . import auth
from .auth import Auditor, Authenticator, Permission, Principal, Reader, tenant_gateway
from .logs import RequestContext
from .metrics import CONTENT_TYPE, Metrics, instrument
from .routes_data import ts_param
from .routes_resources import create_resources_router, parse_cursor
from .routes_rules import create_rules_router, policy_of
from .settings import CloudSettings
from .shadows import ShadowService
from .store import ReadingQuery, Store, encode_cursor
from .store.models import MAX_MODEL_BYTES

if TYPE_CHECKING:
    from .commands import ControlLink
    from .rules_service import RulesService

MAX_PAGE = 5000
PROBLEM = "application/problem+json"


def problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    titles = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
              409: "Conflict", 410: "Gone", 413: "Content too large", 422: "Invalid request",
              429: "Too many requests", 500: "Server error", 503: "Service unavailable"}
    title = titles.get(status, "Request error" if status < 500 else "Server error")
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail},
                        status_code=status, media_type=PROBLEM, headers=dict(headers) if headers else None)


class Problem(BaseModel):
    """An error (RFC 9457)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text, "content": {PROBLEM: {}}}
    for code, text in ((401, "no or bad credentials"), (403, "the role may not do this"),
                       (404, "not found (or another tenant's)"), (413, "request body too large"),
                       (422, "invalid parameters or body"))}


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before the app sees any of it."""

    def __init__(self, app: ASGIApp, max_bytes: int, larger: dict[str, int] | None = None) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.larger = larger or {}  # path prefix -> its own limit (model files)

    async def _too_large(self, send: Send, limit: int) -> None:
        body = (b'{"type":"about:blank","title":"Content too large","status":413,"detail":"request body is over '
                + str(limit).encode() + b' bytes"}')
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = next((n for prefix, n in self.larger.items() if scope["path"].startswith(prefix)), self.max_bytes)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._too_large(send, limit)
            return
        # Chunked or lying about its length: read up to the limit here, then hand the app what was read.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            size += len(message.get("body", b""))
            if size > limit:
                await self._too_large(send, limit)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _has_non_finite(scope, body):
            await _send_problem(send, 422, "JSON may not contain NaN or Infinity (RFC 8259 has no such numbers)")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def _has_non_finite(scope: Scope, body: bytes) -> bool:
    """Whether a JSON body uses NaN, Infinity or -Infinity, which Python's parser accepts and RFC 8259 does not.

    Only bodies that contain those words are parsed here; a body that is not JSON is left to the route.
    """
    if b"NaN" not in body and b"Infinity" not in body:
        return False
    ctype = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
    if not (ctype == b"application/json" or ctype.endswith(b"+json")):
        return False
    try:
        json.loads(body, parse_constant=_refuse_constant)
    except ValueError as exc:
        return str(exc) in ("NaN", "Infinity", "-Infinity")
    except RecursionError:
        return False
    return False


async def _send_problem(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"type": "about:blank", "title": "Invalid request", "status": status, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RefuseNul:
    """ASGI middleware: a NUL (U+0000) in the path or the query string is 422 before any route runs.

    PostgreSQL text cannot hold NUL, so such a value would otherwise fail deep in a query as a 500.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"").lower()
            raw = scope.get("raw_path") or b""
            if "\x00" in scope["path"] or b"%00" in query or b"\x00" in query or b"%00" in raw.lower():
                await _send_problem(send, 422, "a path or query parameter contains a NUL character (%00)")
                return
        await self.app(scope, receive, send)


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=130, description="username@tenant, or a username that only one"
                          " tenant has")
    password: str = Field(min_length=1, max_length=1024)
    tenant: str | None = Field(default=None, min_length=1, max_length=64, description="the tenant, if the username"
                               " does not name it")

    _nul = field_validator("username", "password", "tenant")(_no_nul)


class TokenPublic(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class PrincipalPublic(BaseModel):
    subject: str
    tenant: str
    role: str
    via: str
    permissions: list[str]


def create_app(store: Store, stats: Callable[[], dict[str, Any]] | None = None, *,
               settings: CloudSettings | None = None, metrics: Metrics | None = None,
               control: ControlLink | None = None, rules: RulesService | None = None) -> FastAPI:
    """The app. Pass the service's ``metrics`` (and ``stats``) to expose the ingest's figures."""
    settings = settings or CloudSettings()
    if metrics is None:
        metrics = Metrics(stats)
        if store.db.observer is None:
            instrument(store, metrics)
    app = FastAPI(title="CarbonLink", version=__version__, responses=_ERRORS, docs_url=None, redoc_url=None,
                  description="Signed telemetry from field gateways: tenants, sites, gateways, devices, points,"
                              " readings, rollups and proofs. Authenticate with `Authorization: Bearer <API key or"
                              " login token>` or `X-API-Key`; see cloud/auth.py for what each role may do.")
    app.state.store, app.state.settings, app.state.metrics = store, settings, metrics
    app.state.auth = Authenticator(store, settings)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, larger={"/api/models/": MAX_MODEL_BYTES})
    app.add_middleware(RefuseNul)
    app.add_middleware(RequestContext, observe=metrics.observe_http)  # outermost: every answer has an id

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), exc.headers)

    try:
        from asyncpg.exceptions import CharacterNotInRepertoireError, UntranslatableCharacterError
    except ImportError:  # pragma: no cover - the postgres extra is not installed
        pass
    else:
        @app.exception_handler(CharacterNotInRepertoireError)
        @app.exception_handler(UntranslatableCharacterError)
        async def _bad_text(_: Request, exc: Exception) -> JSONResponse:
            # A value PostgreSQL cannot hold as text (a NUL, most often) reached a query: the input's fault.
            return problem(422, "a value contains a character the store cannot hold (NUL, U+0000)")

    @app.exception_handler(auth.Busy)
    async def _busy(_: Request, exc: auth.Busy) -> JSONResponse:
        return problem(503, "too many password checks at once; try again in a second", {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return problem(422, "; ".join(parts)[:2000])

    @app.get("/health", tags=["service"], summary="Liveness and readiness; open to all",
             responses={503: {"description": "the store is refusing writes: ingest holds its messages"}})
    async def health() -> JSONResponse:
        body: dict[str, Any] = {"status": "ok", "version": __version__, "storage": store.dialect}
        ingest = (stats() if stats is not None else {}).get("ingest", {})
        if ingest:
            body["ingest"] = ingest.get("state")
        if ingest.get("state") == "store-retry":
            # Say that the store refuses, not why in detail: the reason may name hosts; it is in the logs.
            body["status"] = "degraded"
            body["problem"] = "the store refuses writes; ingest holds its messages and retries"
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/metrics", tags=["service"], response_class=Response,
             summary="Prometheus metrics; Authorization: Bearer <CARBONLINK_METRICS_TOKEN>")
    async def get_metrics(request: Request) -> Response:
        import hmac

        token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        if token is None:
            raise HTTPException(404, "metrics are off: set CARBONLINK_METRICS_TOKEN and scrape with it")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise auth.unauthorized("missing or wrong metrics token (Authorization: Bearer ...)")
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.post("/api/auth/token", tags=["auth"], summary="Log in with a username (username@tenant) and password",
              responses={429: {"model": Problem, "description": "too many failed logins: wait Retry-After seconds"},
                         503: {"model": Problem, "description": "too many logins at once: retry after a second"}})
    async def login(req: LoginRequest, request: Request) -> TokenPublic:
        authn: Authenticator = app.state.auth
        try:
            name, tenant = auth.split_login(req.username, req.tenant)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        wait, keys = authn.throttle.check(f"{name}@{tenant or ''}", request.client.host if request.client else None)
        if wait:
            raise HTTPException(429, f"too many failed logins; try again in {wait} s",
                                headers={"Retry-After": str(wait)})
        outcome: bool | None = False
        try:
            token = await auth.login(store, settings, name, req.password, tenant=tenant, workers=authn.workers)
            outcome = token is not None
        except auth.Busy:
            outcome = None  # not an attempt: nothing was checked
            raise HTTPException(503, "too many logins at once; try again in a second",
                                headers={"Retry-After": "1"}) from None
        finally:
            authn.throttle.done(keys, outcome)
        if token is None:
            raise auth.unauthorized("wrong username or password (a username that several tenants have needs its"
                                    " tenant: username@tenant)")
        return TokenPublic(access_token=token, expires_in=settings.jwt_ttl_s)

    @app.get("/api/auth/me", tags=["auth"], summary="Who the credentials belong to and what they may do")
    async def me(principal: Annotated[Principal, Depends(auth.current_principal)]) -> PrincipalPublic:
        return PrincipalPublic(subject=principal.subject, tenant=principal.tenant, role=principal.role,
                               via=principal.via, permissions=sorted(p.value for p in Permission
                                                                     if principal.can(p)))

    @app.get("/api/gateways", tags=["fleet"], summary="The tenant's gateways")
    async def gateways(p: Reader) -> list[dict[str, Any]]:
        return await store.registry.list_gateways(p.tenant)

    @app.get("/api/devices", tags=["fleet"], summary="The tenant's devices, per gateway")
    async def devices(p: Reader) -> list[dict[str, Any]]:
        return await store.data.list_devices(p.tenant)

    @app.get("/api/latest", tags=["data"], summary="Latest value of every point")
    async def latest(p: Reader, device: Annotated[str | None, Query(max_length=128)] = None) -> list[dict[str, Any]]:
        return await store.data.latest(device, p.tenant)

    @app.get("/api/stats", tags=["service"], summary="The tenant's counts and the ingest's state")
    async def get_stats(p: Reader) -> dict[str, Any]:
        out: dict[str, Any] = await store.data.counts(p.tenant)
        if stats is not None:
            out["ingest"] = {"state": stats().get("ingest", {}).get("state")}
        return out

    @app.get("/api/dead-letters", tags=["data"], summary="Refused messages and readings, with the reason")
    async def dead_letters(p: Auditor, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                           before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None) -> list[dict[str, Any]]:
        return await store.audit.dead_letters(limit, p.tenant, before_id)

    @app.get("/api/readings", tags=["data"],
             summary="Raw readings of a device: keyset pages, point by point in time order")
    async def readings(
        p: Reader,
        device: Annotated[str, Query(min_length=1, max_length=128)],
        point: Annotated[str | None, Query(max_length=128)] = None,
        gateway: Annotated[str | None, Query(max_length=64)] = None,
        start: Annotated[str | None, Query(description="inclusive; ISO UTC with ms, or epoch ms")] = None,
        end: Annotated[str | None, Query(description="exclusive; ISO UTC with ms, or epoch ms")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
        cursor: Annotated[str | None, Query(max_length=300, description="next_cursor of the previous page")] = None,
    ) -> dict[str, Any]:
        start_ms = ts_param("start", start) if start is not None else None
        end_ms = ts_param("end", end) if end is not None else None
        if start_ms is not None and end_ms is not None and end_ms <= start_ms:
            raise HTTPException(422, "end must be after start")
        after = parse_cursor(cursor)
        rows = await store.data.readings(ReadingQuery(device, point, gateway, start_ms, end_ms, limit, after, p.tenant))
        next_cursor = encode_cursor(rows[-1]) if len(rows) == limit else None
        return {"items": rows, "count": len(rows), "next_cursor": next_cursor}

    @app.get("/api/proof", tags=["proofs"], summary="The proof bundle of one reading")
    async def proof(
        p: Reader,
        gateway: Annotated[str, Query(min_length=1, max_length=64)],
        device: Annotated[str, Query(min_length=1, max_length=128)],
        point: Annotated[str, Query(min_length=1, max_length=128)],
        ts: Annotated[str, Query(description="ISO UTC with ms, or epoch ms")],
    ) -> dict[str, Any]:
        """Its signed batch, Merkle proof, root and anchoring transaction."""
        from .anchor.proof import BundleError, build_bundle

        ts_ms = ts_param("ts", ts)
        await tenant_gateway(store, p, gateway)
        try:
            return await build_bundle(store, gateway, device, point, ts_ms)
        except BundleError as exc:
            msg = str(exc)
            raise HTTPException(409 if "not yet" in msg or "sealed" in msg or "anchored" in msg else 404, msg) from None

    from .routes_data import create_data_router
    from .routes_provision import provisioning_router

    app.include_router(create_data_router(store))
    app.include_router(provisioning_router(store))
    app.include_router(create_resources_router(store))
    app.include_router(create_rules_router(store, shadows=control.shadows if control else ShadowService(store),
                                           rules=rules, policy=policy_of(settings)))
    from .routes_carbon import create_carbon_router

    app.include_router(create_carbon_router(store))
    from .routes_reports import create_reports_router

    app.include_router(create_reports_router(store))
    from .routes_anomaly import create_anomaly_router

    app.include_router(create_anomaly_router(store))
    if control is not None:
        from .routes_control import create_control_router

        async def control_guard(request: Request, p: Reader) -> None:
            await tenant_gateway(store, p, request.path_params.get("gateway", ""))
            if request.method != "GET" and not p.can(Permission.CONTROL):
                raise HTTPException(403, f"role {p.role!r} may not control gateways (admin, operator may)")

        app.include_router(create_control_router(control), dependencies=[Depends(control_guard)])

    from .routes_console import create_console_router, mount_console

    app.include_router(create_console_router(store))
    mount_console(app)

    return app

