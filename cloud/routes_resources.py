"""The resource hierarchy: tenants → sites → gateways → devices → points → readings and rollups.

Every path starts at the caller's own tenant; another tenant's anything answers 404. Readings over a
range come as JSON pages (keyset cursor) or as CSV streamed page by page, so a year of data never
sits in memory. Users and API keys of a tenant are managed here too (admins only).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from carbonlink.kernel.ids import ID_PATTERN

from . import auth
from .auth import Auditor, Manager, Principal, Provisioner, Reader, not_found, same_tenant
from .rollups import DAY_MS, Granularity, ValidityRules, rollups
from .routes_data import MAX_RANGE_MS, ts_param
from .store import ClaimError, ReadingQuery, SeriesQuery, Store, decode_cursor, encode_cursor
from .store.model import Role

PAGE = 5000  # rows per JSON page at most
CSV_PAGE = 2000  # rows per keyset page under a CSV stream: what one stream holds in memory
MAX_JSON_RANGE_MS = 31 * DAY_MS
MAX_CSV_RANGE_MS = 400 * DAY_MS
_ID = ID_PATTERN
PATH_TEXT = r'^[^\x00-\x1f\x7f"\\/]{1,128}$'  # device and point ids as the wire format allows them, no slashes
TenantId = Annotated[str, Path(pattern=_ID)]
SiteId = Annotated[str, Path(pattern=_ID)]
GatewayId = Annotated[str, Path(pattern=_ID)]
DeviceId = Annotated[str, Path(pattern=PATH_TEXT)]
PointId = Annotated[str, Path(pattern=PATH_TEXT)]
Start = Annotated[str, Query(description="inclusive; ISO UTC with ms (2026-01-01T00:00:00.000Z) or epoch ms")]
End = Annotated[str, Query(description="exclusive; ISO UTC with ms or epoch ms")]
Format = Annotated[Literal["json", "csv"], Query(alias="format", description="csv streams the whole range")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantPublic(BaseModel):
    id: str
    name: str
    created_ms: int


class SiteCreate(Strict):
    id: str = Field(pattern=_ID)


class SitePublic(BaseModel):
    id: str
    tenant: str
    name: str
    created_ms: int


class GatewayPublic(BaseModel):
    id: str
    tenant: str
    site: str
    alg: str
    status: str
    status_ms: int | None
    last_seen_ms: int | None
    revoked: bool
    batches: int


class DevicePublic(BaseModel):
    id: str
    gateway: str
    points: int
    last_ts_ms: int


class PointPublic(BaseModel):
    id: str
    device: str
    gateway: str
    unit: str = Field(description="the registered unit: readings in another unit become dead letters")
    last_ts_ms: int
    last_ts: str
    last_value: float
    last_quality: str


class ReadingPublic(BaseModel):
    gateway: str
    device: str
    point: str
    ts_ms: int
    ts: str
    value: float
    unit: str
    quality: str
    seq: int


class ReadingPage(BaseModel):
    items: list[ReadingPublic]
    count: int
    next_cursor: str | None = Field(description="pass as cursor for the next page; null at the end")


class DeadLetterPublic(BaseModel):
    id: int
    received_ms: int
    topic: str
    gateway: str | None
    reason: str
    size: int
    payload_preview: str


class UserCreate(Strict):
    username: str = Field(pattern=_ID)
    role: Role
    password: str = Field(min_length=12, max_length=1024)


class UserPublic(BaseModel):
    username: str
    tenant: str
    role: str
    created_ms: int


class KeyCreate(Strict):
    role: Role
    name: str = Field(min_length=1, max_length=100)


class KeyPublic(BaseModel):
    id: str
    tenant: str
    role: str
    name: str
    created_ms: int
    revoked_ms: int | None = None


class KeyCreated(KeyPublic):
    key: str = Field(description="the API key; shown this once, only its hash is kept")


def parse_cursor(cursor: str | None) -> tuple[str, str, int] | None:
    """The keyset position a previous page returned as next_cursor."""
    if not cursor:
        return None
    try:
        return decode_cursor(cursor)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _bounded(start: str, end: str, max_ms: int) -> tuple[int, int]:
    s, e = ts_param("start", start), ts_param("end", end)
    if e <= s:
        raise HTTPException(422, "end must be after start")
    if e - s > max_ms:
        raise HTTPException(422, f"range is longer than {max_ms // DAY_MS} days; ask for a shorter one"
                                 " (or format=csv, which streams up to 400 days)")
    return s, e


async def _csv_stream(store: Store, q: ReadingQuery) -> AsyncIterator[bytes]:
    """CSV of every reading in ``q`` from a server-side cursor on the export connections.

    One ordered index scan per point at a steady rate (no page query that slows as it goes deeper), on
    connections of its own, so a long export never delays the ingest; memory stays one chunk.
    """
    cols = ("gateway", "device", "point", "ts", "ts_ms", "value", "unit", "quality", "seq")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    yield buf.getvalue().encode()
    async for rows in store.data.stream_readings(q, chunk=CSV_PAGE):
        buf.seek(0)
        buf.truncate()
        writer.writerows([r[c] for c in cols] for r in rows)
        yield buf.getvalue().encode()


def create_resources_router(store: Store) -> APIRouter:
    r = APIRouter(prefix="/api/tenants")

    async def gateway_of(p: Principal, tenant: str, site: str, gateway: str) -> dict[str, Any]:
        same_tenant(p, tenant)
        rows = [g for g in await store.registry.list_gateways(tenant) if g["id"] == gateway]
        if not rows or rows[0]["site"] != site:
            raise not_found("gateway", gateway)
        return rows[0]

    async def points_of(p: Principal, tenant: str, site: str, gateway: str, device: str) -> list[dict[str, Any]]:
        await gateway_of(p, tenant, site, gateway)
        rows = [x for x in await store.data.latest(device, tenant) if x["gateway"] == gateway]
        if not rows:
            raise not_found("device", device)
        return rows

    def point_public(x: dict[str, Any]) -> PointPublic:
        return PointPublic(id=x["point"], device=x["device"], gateway=x["gateway"], unit=x["unit"],
                           last_ts_ms=x["ts_ms"], last_ts=x["ts"], last_value=x["value"], last_quality=x["quality"])

    # --- tenants and sites -------------------------------------------------------------------------

    @r.get("", tags=["hierarchy"], summary="Tenants the caller belongs to (one)")
    async def list_tenants(p: Reader) -> list[TenantPublic]:
        return [TenantPublic(**t) for t in await store.registry.list_tenants() if t["id"] == p.tenant]

    @r.get("/{tenant}", tags=["hierarchy"])
    async def get_tenant(p: Reader, tenant: TenantId) -> TenantPublic:
        same_tenant(p, tenant)
        rows = [t for t in await store.registry.list_tenants() if t["id"] == tenant]
        if not rows:
            raise not_found("tenant", tenant)
        return TenantPublic(**rows[0])

    @r.get("/{tenant}/sites", tags=["hierarchy"])
    async def list_sites(p: Reader, tenant: TenantId) -> list[SitePublic]:
        same_tenant(p, tenant)
        return [SitePublic(**s) for s in await store.registry.list_sites(tenant)]

    @r.post("/{tenant}/sites", tags=["hierarchy"], status_code=201, summary="Add a site (admin, operator, installer)")
    async def create_site(p: Provisioner, tenant: TenantId, body: SiteCreate) -> SitePublic:
        same_tenant(p, tenant)
        try:
            await store.registry.ensure_site(tenant, body.id)
        except ClaimError:
            raise HTTPException(409, f"site id {body.id!r} is taken; choose another") from None
        return next(SitePublic(**s) for s in await store.registry.list_sites(tenant) if s["id"] == body.id)

    @r.get("/{tenant}/sites/{site}", tags=["hierarchy"])
    async def get_site(p: Reader, tenant: TenantId, site: SiteId) -> SitePublic:
        same_tenant(p, tenant)
        rows = [s for s in await store.registry.list_sites(tenant) if s["id"] == site]
        if not rows:
            raise not_found("site", site)
        return SitePublic(**rows[0])

    # --- gateways, devices, points ---------------------------------------------------------------

    @r.get("/{tenant}/sites/{site}/gateways", tags=["hierarchy"])
    async def list_gateways(p: Reader, tenant: TenantId, site: SiteId) -> list[GatewayPublic]:
        await get_site(p, tenant, site)
        return [GatewayPublic(**g) for g in await store.registry.list_gateways(tenant) if g["site"] == site]

    @r.get("/{tenant}/sites/{site}/gateways/{gateway}", tags=["hierarchy"])
    async def get_gateway(p: Reader, tenant: TenantId, site: SiteId, gateway: GatewayId) -> GatewayPublic:
        return GatewayPublic(**await gateway_of(p, tenant, site, gateway))

    @r.get("/{tenant}/sites/{site}/gateways/{gateway}/devices", tags=["hierarchy"])
    async def list_devices(p: Reader, tenant: TenantId, site: SiteId, gateway: GatewayId) -> list[DevicePublic]:
        await gateway_of(p, tenant, site, gateway)
        return [DevicePublic(id=d["device"], gateway=d["gateway"], points=d["points"], last_ts_ms=d["last_ts_ms"])
                for d in await store.data.list_devices(tenant) if d["gateway"] == gateway]

    @r.get("/{tenant}/sites/{site}/gateways/{gateway}/devices/{device}", tags=["hierarchy"])
    async def get_device(p: Reader, tenant: TenantId, site: SiteId, gateway: GatewayId,
                         device: DeviceId) -> DevicePublic:
        pts = await points_of(p, tenant, site, gateway, device)
        return DevicePublic(id=device, gateway=gateway, points=len(pts), last_ts_ms=max(x["ts_ms"] for x in pts))

    @r.get("/{tenant}/sites/{site}/gateways/{gateway}/devices/{device}/points", tags=["hierarchy"])
    async def list_points(p: Reader, tenant: TenantId, site: SiteId, gateway: GatewayId,
                          device: DeviceId) -> list[PointPublic]:
        return [point_public(x) for x in await points_of(p, tenant, site, gateway, device)]

    @r.get("/{tenant}/sites/{site}/gateways/{gateway}/devices/{device}/points/{point}", tags=["hierarchy"])
    async def get_point(p: Reader, tenant: TenantId, site: SiteId, gateway: GatewayId, device: DeviceId,
                        point: PointId) -> PointPublic:
        rows = [x for x in await points_of(p, tenant, site, gateway, device) if x["point"] == point]
        if not rows:
            raise not_found("point", point)
        return point_public(rows[0])

    # --- readings and rollups ---------------------------------------------------------------------

    async def readings_of(p: Principal, tenant: str, site: str, gateway: str, device: str, point: str | None,
                          start: str, end: str, limit: int, cursor: str | None, fmt: str) -> Any:
        if point is None:
            await points_of(p, tenant, site, gateway, device)
        else:
            await get_point(p, tenant, site, gateway, device, point)
        s, e = _bounded(start, end, MAX_CSV_RANGE_MS if fmt == "csv" else MAX_JSON_RANGE_MS)
        q = ReadingQuery(device, point, gateway, s, e, limit, parse_cursor(cursor), tenant)
        if fmt == "csv":
            name = f"{gateway}_{device}_{point or 'all'}_{s}_{e}.csv".replace('"', "")
            return StreamingResponse(_csv_stream(store, q), media_type="text/csv; charset=utf-8",
                                     headers={"Content-Disposition": f'attachment; filename="{name}"'})
        rows = await store.data.readings(q)
        next_cursor = encode_cursor(rows[-1]) if len(rows) == limit else None
        return ReadingPage(items=[ReadingPublic(**x) for x in rows], count=len(rows), next_cursor=next_cursor)

    csv_doc: dict[int | str, dict[str, Any]] = {200: {"content": {"text/csv": {}},
                                                      "description": "a JSON page, or CSV with format=csv"}}

    @r.get("/{tenant}/sites/{site}/gateways/{gateway}/devices/{device}/readings", tags=["readings"],
           response_model=ReadingPage, responses=csv_doc, summary="Raw readings of every point of a device")
    async def device_readings(p: Reader, tenant: TenantId, site: SiteId, gateway: GatewayId, device: DeviceId,
                              start: Start, end: End, limit: Annotated[int, Query(ge=1, le=PAGE)] = 1000,
                              cursor: Annotated[str | None, Query(max_length=300)] = None,
                              fmt: Format = "json") -> Any:
        return await readings_of(p, tenant, site, gateway, device, None, start, end, limit, cursor, fmt)

    @r.get("/{tenant}/sites/{site}/gateways/{gateway}/devices/{device}/points/{point}/readings", tags=["readings"],
           response_model=ReadingPage, responses=csv_doc, summary="Raw readings of one point")
    async def point_readings(p: Reader, tenant: TenantId, site: SiteId, gateway: GatewayId, device: DeviceId,
                             point: PointId, start: Start, end: End,
                             limit: Annotated[int, Query(ge=1, le=PAGE)] = 1000,
                             cursor: Annotated[str | None, Query(max_length=300)] = None,
                             fmt: Format = "json") -> Any:
        return await readings_of(p, tenant, site, gateway, device, point, start, end, limit, cursor, fmt)

    @r.get("/{tenant}/sites/{site}/gateways/{gateway}/devices/{device}/points/{point}/rollups", tags=["readings"],
           responses=csv_doc, summary="Hour, day or month statistics of one point, with HJ 76 validity")
    async def point_rollups(p: Reader, tenant: TenantId, site: SiteId, gateway: GatewayId, device: DeviceId,
                            point: PointId, start: Start, end: End, granularity: Granularity = "hour",
                            fmt: Format = "json") -> Any:
        await get_point(p, tenant, site, gateway, device, point)
        s, e = _bounded(start, end, MAX_RANGE_MS[granularity])
        rules = ValidityRules()
        items = await rollups(store, SeriesQuery(device, s, e, point, gateway, tenant), granularity, rules)
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["start", "start_ms", "n", "n_valid", "min", "max", "mean", "valid"])
            w.writerows([i["start"], i["start_ms"], i["n"], i["n_valid"], i["min"], i["max"], i["mean"], i["valid"]]
                        for i in items)
            return StreamingResponse(iter([buf.getvalue().encode()]), media_type="text/csv; charset=utf-8")
        return {"granularity": granularity, "rules": rules.__dict__, "items": items, "count": len(items)}

    # --- dead letters -----------------------------------------------------------------------------

    @r.get("/{tenant}/dead-letters", tags=["readings"], summary="Refused batches and readings of the tenant")
    async def dead_letters(p: Auditor, tenant: TenantId, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                           before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None) -> list[DeadLetterPublic]:
        same_tenant(p, tenant)
        return [DeadLetterPublic(**d) for d in await store.audit.dead_letters(limit, tenant, before_id)]

    # --- users and API keys (admins) ------------------------------------------------------------

    @r.get("/{tenant}/users", tags=["access"])
    async def list_users(p: Manager, tenant: TenantId) -> list[UserPublic]:
        same_tenant(p, tenant)
        return [UserPublic(**u) for u in await store.access.list_users(tenant)]

    @r.post("/{tenant}/users", tags=["access"], status_code=201)
    async def create_user(p: Manager, tenant: TenantId, body: UserCreate) -> UserPublic:
        same_tenant(p, tenant)
        if not await auth.create_user(store, body.username, tenant, body.role, body.password):
            raise HTTPException(409, f"username {body.username!r} is taken")
        return next(UserPublic(**u) for u in await store.access.list_users(tenant) if u["username"] == body.username)

    @r.delete("/{tenant}/users/{username}", tags=["access"], status_code=204)
    async def delete_user(p: Manager, tenant: TenantId, username: Annotated[str, Path(pattern=_ID)]) -> None:
        same_tenant(p, tenant)
        if not await store.access.delete_user(tenant, username):
            raise not_found("user", username)

    @r.get("/{tenant}/api-keys", tags=["access"])
    async def list_keys(p: Manager, tenant: TenantId) -> list[KeyPublic]:
        same_tenant(p, tenant)
        return [KeyPublic(**k) for k in await store.access.list_api_keys(tenant)]

    @r.post("/{tenant}/api-keys", tags=["access"], status_code=201, summary="Make an API key (shown once)")
    async def create_key(p: Manager, tenant: TenantId, body: KeyCreate) -> KeyCreated:
        same_tenant(p, tenant)
        key_id, key = await auth.create_api_key(store, tenant, body.role, body.name)
        row = await store.access.get_api_key(key_id)
        assert row is not None
        return KeyCreated(key=key, **{k: row[k] for k in KeyPublic.model_fields})

    @r.delete("/{tenant}/api-keys/{key_id}", tags=["access"], status_code=204, summary="Revoke an API key")
    async def revoke_key(p: Manager, tenant: TenantId, key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]) -> None:
        same_tenant(p, tenant)
        if not await store.access.revoke_api_key(tenant, key_id, int(time.time() * 1000)):
            raise not_found("API key", key_id)

    return r
