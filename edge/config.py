"""gateway.yaml: the typed, validated configuration of one gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from carbonlink.kernel.configfile import load_yaml_config
from carbonlink.kernel.ids import ID_PATTERN
from carbonlink.kernel.mqtturl import MqttUrl

from .drivers.registry import DeviceConfig
from .drivers.settings import StrictModel
from .hj212.uploader import Hj212UploadConfig


class GatewaySection(StrictModel):
    id: str = Field(pattern=ID_PATTERN)
    site: str = Field(pattern=ID_PATTERN)
    key_file: Path = Field(description="Ed25519 private key (PEM); created on first start if missing")
    data_dir: Path = Field(default=Path("var/edge"), description="outbox and state live here")


class MqttSection(StrictModel):
    url: str = Field(default="mqtt://127.0.0.1:1883", description=(
        "mqtt://HOST[:PORT] or mqtts://HOST[:PORT][?cafile=CA.pem&certfile=…&keyfile=…] (docs/production.md)"))
    username: str | None = None
    password: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    ack_timeout_s: float = Field(default=15.0, gt=0, le=3600, description="resend a batch not acked by then")
    max_inflight: int = Field(default=8, ge=1, le=1000, description="batches published and awaiting ack")

    @field_validator("url")
    @classmethod
    def _url_works(cls, v: str) -> str:
        MqttUrl.parse(v).tls_context()  # a bad URL or an unreadable certificate file fails at load
        return v


class BatchSection(StrictModel):
    max_readings: int = Field(default=500, ge=1, le=10_000)
    max_age_s: float = Field(default=1.0, gt=0, le=3600)


class OutboxSection(StrictModel):
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL", description="FULL survives power loss; NORMAL survives a process crash"
    )
    quota_mb: float = Field(default=512.0, gt=0, description=(
        "disk quota; over it the oldest raw backlog is rolled up to 1-minute means (never dropped),"
        " with an outbox.overflow event"))
    quarantine_max: int = Field(default=1000, ge=1, le=1_000_000, description=(
        "batches the cloud refused kept for an operator (`carbonlink edge quarantine`); when full the oldest"
        " are kept and a newly refused batch is dropped with an error and a critical event"))


class DeliverySection(StrictModel):
    """Two lanes share one sequence: live data first, the backlog oldest-first under a rate limit."""

    live_window_s: float = Field(default=30.0, gt=0, le=86400, description="older pending readings are backlog")
    live_inflight: int = Field(default=4, ge=1, le=1000, description="live batches awaiting ack")
    backlog_max_readings: int = Field(default=5000, ge=1, le=10_000, description="readings per backlog batch")
    backlog_inflight: int = Field(default=8, ge=1, le=1000, description="backlog batches awaiting ack")
    backlog_rate: float = Field(default=5000.0, ge=0, description="backlog readings/s; 0 = no limit")
    live_target_ms: float = Field(default=500.0, ge=0, le=600_000, description=(
        "live batches should be acked within this; while they are not, fewer backlog batches are in flight"
        " (halved per round trip, grown back one at a time); 0 = off"))


class AnomalySection(StrictModel):
    enabled: bool = Field(default=True, description=(
        "score windows with the ONNX anomaly model (edge/anomaly_runner.py; needs the edge-ml extra, about"
        " 55 MB more memory); false keeps a small gateway to the agent alone"))


class GatewayConfig(StrictModel):
    gateway: GatewaySection
    mqtt: MqttSection = MqttSection()
    batch: BatchSection = BatchSection()
    outbox: OutboxSection = OutboxSection()
    delivery: DeliverySection = DeliverySection()
    anomaly: AnomalySection = AnomalySection()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    devices: list[DeviceConfig] = Field(default_factory=list)
    # Monitoring platforms (provincial/national) that receive this gateway's data in HJ 212 form.
    hj212_upload: list[Hj212UploadConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_device_ids(self) -> GatewayConfig:
        seen: set[str] = set()
        for d in self.devices:
            if d.id in seen:
                raise ValueError(f"device id {d.id!r} appears twice; device ids must be unique")
            seen.add(d.id)
        return self


def load_gateway_config(path: str | Path) -> GatewayConfig:
    cfg = load_yaml_config(path, GatewayConfig)
    base = Path(path).resolve().parent
    # Relative paths in the file are relative to the file, not to the working directory.
    gw = cfg.gateway
    fixed = gw.model_copy(update={
        "key_file": gw.key_file if gw.key_file.is_absolute() else base / gw.key_file,
        "data_dir": gw.data_dir if gw.data_dir.is_absolute() else base / gw.data_dir,
    })
    return cfg.model_copy(update={"gateway": fixed})
