"""HTTP API for the control plane: read a gateway's shadow, patch its desired state, send commands."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Query

from carbonlink.kernel.ids import ID_PATTERN

from .commands import CommandError, ControlLink
from .shadows import ShadowError

GatewayId = Annotated[str, Path(pattern=ID_PATTERN)]


def non_finite_at(doc: object) -> str | None:
    """The path of the first NaN or ±Infinity in ``doc`` (JSON cannot carry them to a gateway), else None."""
    stack: list[tuple[str, object]] = [("", doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path or "/"
        if isinstance(value, dict):
            stack += [(f"{path}/{k}", v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(f"{path}/{i}", v) for i, v in enumerate(value)]
    return None


def create_control_router(control: ControlLink) -> APIRouter:
    router = APIRouter(prefix="/api/gateways", tags=["control"])

    @router.get("/{gateway}/shadow")
    async def get_shadow(gateway: GatewayId) -> dict[str, Any]:
        try:
            return await control.shadows.get(gateway)
        except ShadowError as exc:
            raise HTTPException(exc.status, exc.message) from None

    @router.patch("/{gateway}/shadow")
    async def patch_shadow(
        gateway: GatewayId,
        body: Annotated[dict[str, Any], Body(examples=[{"state": {"desired": {"log_level": "DEBUG"}}, "version": 3}])],
    ) -> dict[str, Any]:
        """JSON Merge Patch of desired (``null`` deletes a key); give ``version`` to refuse stale writes."""
        state = body.get("state")
        if set(body) - {"state", "version"} or not isinstance(state, dict) or set(state) != {"desired"}:
            raise HTTPException(422, "body must be {\"state\": {\"desired\": {...}}, \"version\": n (optional)}")
        bad = non_finite_at(body)
        if bad is not None:
            raise HTTPException(422, f"{bad} is NaN or Infinity: JSON has no such numbers, and a gateway could not"
                                     " read the shadow")
        try:
            return await control.shadows.update(gateway, desired=state["desired"], version=body.get("version"))
        except ShadowError as exc:
            raise HTTPException(exc.status, exc.message) from None

    @router.post("/{gateway}/commands")
    async def send_command(
        gateway: GatewayId,
        body: Annotated[dict[str, Any], Body(examples=[{"name": "read_now", "args": {"device": "cems-1"}}])],
        wait_s: Annotated[float, Query(alias="timeout", gt=0, le=300)] = 10.0,
    ) -> dict[str, Any]:
        """Send a command and wait for its result; 504 if the gateway did not answer in time."""
        if set(body) - {"name", "args"} or not isinstance(body.get("name"), str):
            raise HTTPException(422, "body must be {\"name\": \"read_now|restart_driver|reload_config\", \"args\": {}}")
        try:
            out = await control.commands.send(gateway, body["name"], body.get("args"), wait_s=wait_s)
        except CommandError as exc:
            raise HTTPException(exc.status, exc.message) from None
        if out["status"] == "timeout":
            raise HTTPException(504, f"gateway {gateway!r} did not answer command {out['id']} within {wait_s} s")
        return out

    @router.get("/{gateway}/commands")
    async def list_commands(gateway: GatewayId,
                            limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
        return await control.commands.store.control.list_commands(gateway, limit)

    return router
