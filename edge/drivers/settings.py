"""Settings shared by every driver's device entry in gateway.yaml."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt key must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DeviceBase(StrictModel):
    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="device id, unique in the gateway")
    enabled: bool = True
    poll_interval_s: float = Field(default=1.0, gt=0, le=86400)
