"""Settings shared by every driver's device entry in gateway.yaml."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from carbonlink.kernel.ids import DEVICE_ID_PATTERN


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt key must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DeviceBase(StrictModel):
    id: str = Field(pattern=DEVICE_ID_PATTERN, description="device id, unique in the gateway")
    enabled: bool = True
    poll_interval_s: float = Field(default=1.0, gt=0, le=86400)
