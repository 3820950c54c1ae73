"""Settings of the OPC-UA driver, apart from the driver so that validating a gateway's configuration
does not import asyncua (tens of megabytes) unless an OPC-UA device is configured."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from .settings import DeviceBase, StrictModel

if TYPE_CHECKING:
    from asyncua import ua

_BROWSE_ELEMENT = re.compile(r"^\d{1,5}:[^/]{1,128}$")


class OpcUaNode(StrictModel):
    name: str = Field(min_length=1, max_length=64, description="point name in readings")
    node_id: str | None = Field(default=None, description="e.g. 'ns=2;i=10' or 'ns=2;s=Stack1.SO2'")
    browse_path: str | None = Field(default=None, description="from Root, e.g. '0:Objects/2:CEMS/2:SO2'")
    unit: str = Field(default="", max_length=32)

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaNode:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError(f"point {self.name!r}: give exactly one of 'node_id' or 'browse_path'")
        if self.node_id is not None:
            from asyncua import ua  # only when an OPC-UA device is configured: asyncua is heavy

            try:
                ua.NodeId.from_string(self.node_id)
            except ua.UaStringParsingError as exc:
                raise ValueError(f"point {self.name!r}: node_id {self.node_id!r} is not an OPC-UA node id "
                                 "(write it like 'ns=2;i=10' or 'ns=2;s=Name')") from exc
        if self.browse_path is not None:
            bad = [e for e in self.browse_path.split("/") if not _BROWSE_ELEMENT.match(e)]
            if bad:
                raise ValueError(f"point {self.name!r}: browse path elements must be 'namespace:Name' "
                                 f"(e.g. '0:Objects/2:CEMS'); not {bad}")
        return self

    def browse_names(self) -> list[ua.QualifiedName]:
        from asyncua import ua

        assert self.browse_path is not None
        return [ua.QualifiedName.from_string(e) for e in self.browse_path.split("/")]


class OpcUaDevice(DeviceBase):
    driver: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://[^/\s]+(/\S*)?$", description="opc.tcp://host:port/path")
    mode: Literal["subscribe", "poll"] = "subscribe"
    publishing_interval_s: float | None = Field(default=None, gt=0, le=3600,
                                                description="subscribe mode; defaults to poll_interval_s")
    keepalive_s: float = Field(default=10.0, gt=0, le=3600,
                               description="server sends a keep-alive this often")
    queue_size: int = Field(default=10, ge=1, le=1000,
                            description="samples a monitored item keeps between publishes")
    timeout_s: float = Field(default=4.0, gt=0, le=120)
    watchdog_s: float = Field(default=5.0, gt=0, le=600, description="how often the connection is probed")
    timestamps: Literal["source", "gateway"] = "source"
    # security: username/password, and/or a client certificate for a signed (and encrypted) channel
    username: str | None = None
    password: SecretStr | None = None
    certificate: Path | None = Field(default=None, description="client application certificate (DER or PEM)")
    private_key: Path | None = None
    private_key_password: SecretStr | None = None
    security_policy: Literal["Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"] = "Basic256Sha256"
    security_mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    server_certificate: Path | None = Field(
        default=None, description="pin the server's certificate; without it the endpoint's one is trusted")
    application_uri: str = Field(default="urn:carbonlink:edge",
                                 description="must match the URI in the client certificate")
    nodes: list[OpcUaNode] = Field(min_length=1, max_length=10_000)

    @field_validator("nodes")
    @classmethod
    def _unique_names(cls, nodes: list[OpcUaNode]) -> list[OpcUaNode]:
        seen: set[str] = set()
        dup = {n.name for n in nodes if n.name in seen or seen.add(n.name)}  # type: ignore[func-returns-value]
        if dup:
            raise ValueError(f"point names must be unique; repeated: {sorted(dup)}")
        return nodes

    @model_validator(mode="after")
    def _security_pairs(self) -> OpcUaDevice:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both 'username' and 'password', or neither")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("give both 'certificate' and 'private_key', or neither")
        return self

    @property
    def publishing_s(self) -> float:
        return self.publishing_interval_s or self.poll_interval_s
