"""Provisioning over HTTP: claim tokens, claims, key rotation, revocation."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from . import provisioning
from .auth import Manager, Provisioner, not_found, same_tenant, tenant_gateway
from .store import ClaimError, Store


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenRequest(Strict):
    tenant: str = Field(min_length=1, max_length=64)
    site: str = Field(min_length=1, max_length=64)
    ttl_s: int = Field(default=3600, ge=60, le=30 * 24 * 3600)


class ClaimRequest(Strict):
    token: str = Field(min_length=8, max_length=128)
    gateway: str = Field(min_length=1, max_length=64)
    alg: Literal["ed25519", "hmac-sha256"] = "ed25519"
    key: str = Field(min_length=64, max_length=128, description="Ed25519 public key or HMAC secret, hex")


class ReKeyRequest(Strict):
    alg: Literal["ed25519", "hmac-sha256"] = "ed25519"
    key: str = Field(min_length=64, max_length=128, description="the new Ed25519 public key or HMAC secret, hex")
    reason: str = Field(min_length=3, max_length=500, description="why: kept in the audit log")


class RotateRequest(Strict):
    public_key: str = Field(min_length=64, max_length=64)
    signature: str = Field(min_length=128, max_length=128, description="old key's signature, hex")


def provisioning_router(store: Store) -> APIRouter:
    """Issuing claim tokens and revoking need admin, operator or installer of that tenant (cloud/auth.py)."""
    r = APIRouter(tags=["provisioning"])

    @r.post("/api/provision/claim-tokens", status_code=201)
    async def issue(p: Provisioner, req: TokenRequest) -> dict[str, Any]:
        same_tenant(p, req.tenant)
        try:
            token, expires = await provisioning.issue_claim_token(store, req.tenant, req.site, req.ttl_s)
        except ClaimError as exc:
            if "another tenant" in str(exc):
                raise not_found("site", req.site) from None  # do not reveal another tenant's site
            raise HTTPException(400, str(exc)) from None
        return {"token": token, "tenant": req.tenant, "site": req.site, "expires_ms": expires}

    @r.post("/api/provision/claim", status_code=201)
    async def claim(req: ClaimRequest) -> dict[str, Any]:
        # The one-time token is the credential here: the installer has nothing else yet.
        try:
            res = await provisioning.claim(store, req.token, req.gateway, req.alg, req.key)
        except ClaimError as exc:
            msg = str(exc)
            # reserved: a cloud account; already registered: a claim never replaces a gateway
            conflict = any(w in msg for w in ("taken", "revoked", "reserved", "already registered"))
            status = 410 if "expired" in msg or "already used" in msg else 409 if conflict \
                else 400 if "must be" in msg else 404
            raise HTTPException(status, msg) from None
        return {"tenant": res.tenant, "site": res.site, "gateway": res.gateway,
                "mqtt": {"username": res.mqtt_username, "password": res.mqtt_password}}

    @r.post("/api/gateways/{gateway_id}/rotate-key")
    async def rotate(gateway_id: str, req: RotateRequest) -> dict[str, Any]:
        # Authorised by the old key's signature, so a gateway can rotate without an operator.
        try:
            await provisioning.rotate_key(store, gateway_id, req.public_key, req.signature)
        except ClaimError as exc:
            raise HTTPException(404 if "not registered" in str(exc) else 400, str(exc)) from None
        return {"gateway": gateway_id, "public_key": req.public_key}

    @r.post("/api/gateways/{gateway_id}/re-key")
    async def re_key(p: Manager, gateway_id: str, req: ReKeyRequest) -> dict[str, Any]:
        """Admins only: replace a gateway's key and broker password (lost or stolen key); audited.

        The gateway's own way is rotate-key (signed by its current key); this is for when that key is gone.
        """
        await tenant_gateway(store, p, gateway_id)
        try:
            res = await provisioning.re_key(store, gateway_id, req.alg, req.key, actor=p.subject, reason=req.reason,
                                            tenant=p.tenant)
        except ClaimError as exc:
            msg = str(exc)
            raise HTTPException(409 if "revoked" in msg else 404 if "not registered" in msg else 400, msg) from None
        return {"gateway": res.gateway, "site": res.site, "alg": req.alg,
                "mqtt": {"username": res.mqtt_username, "password": res.mqtt_password}}

    @r.post("/api/gateways/{gateway_id}/revoke")
    async def revoke(p: Provisioner, gateway_id: str) -> dict[str, Any]:
        await tenant_gateway(store, p, gateway_id)
        if not await store.registry.set_revoked(gateway_id, True):
            raise HTTPException(404, f"gateway {gateway_id!r} is not registered")
        return {"gateway": gateway_id, "revoked": True}

    return r
