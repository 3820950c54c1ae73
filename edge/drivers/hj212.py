"""HJ 212 server driver: CEMS data-acquisition units push uploads to the gateway.

A push driver: ``session()`` listens, yields an empty list once it is listening
(so the supervisor sees the device online), then yields each accepted data
packet's readings as it arrives. Protocol work lives in ``edge.hj212``; this
module only maps settings and turns packets into readings.

Only the stations listed under ``stations`` are accepted, each with its own PW
(HJ 212-2017 §6.3.2): inline (``pw``), from a file (``pw_file``, absolute path,
not readable by others) or from an environment variable (``pw_env``). The
server listens on loopback unless ``host`` says otherwise. A station's readings
carry its ``device`` id, or ``<this device id>.<MN>`` when it has none.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, StringConstraints, model_validator

from carbonlink.codecs.hj212.codec import VERSION_2017, Packet
from carbonlink.codecs.hj212.readings import packet_to_readings
from carbonlink.edge.hj212.server import Hj212Server, ServerConfig
from carbonlink.kernel.ids import DEVICE_ID_PATTERN
from carbonlink.kernel.wire import Reading

from .base import Driver
from .settings import DeviceBase, StrictModel

log = logging.getLogger(__name__)

Mn = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{1,24}$")]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
_PW_RE = re.compile(r"[A-Za-z0-9]{1,6}")  # HJ 212-2017 PW: up to 6 letters or digits
_ENV_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class Hj212Station(StrictModel):
    """One data-acquisition unit allowed to upload: its PW (one of three sources) and its device id."""

    device: DeviceId | None = Field(default=None, description="device id of its readings; default <id>.<MN>")
    pw: SecretStr | None = Field(default=None, description="the station's PW, 1-6 letters or digits")
    pw_file: Path | None = Field(default=None, description="absolute path of a file holding the PW (mode 0600)")
    pw_env: str | None = Field(default=None, pattern=_ENV_RE, description="environment variable holding the PW")
    _secret: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _pw_is_text(cls, data: Any) -> Any:
        # Checked on the whole entry so that an error message never carries the value itself.
        if isinstance(data, dict) and "pw" in data and not isinstance(data["pw"], str | SecretStr):
            raise ValueError("quote the PW so YAML keeps it as text (pw: \"001234\"), a number loses its zeros")
        return data

    @model_validator(mode="after")
    def _load_pw(self) -> Hj212Station:
        given = [k for k in ("pw", "pw_file", "pw_env") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give the station's PW as exactly one of 'pw', 'pw_file' or 'pw_env'"
                             f" (got {', '.join(given) or 'none'})")
        if self.pw is not None:
            value, where = self.pw.get_secret_value(), "pw"
        elif self.pw_env is not None:
            if self.pw_env not in os.environ:
                raise ValueError(f"pw_env: the environment variable {self.pw_env} is not set; set it or use pw_file")
            value, where = os.environ[self.pw_env].strip(), f"the environment variable {self.pw_env}"
        else:
            assert self.pw_file is not None
            value, where = _read_pw_file(self.pw_file), f"the file {self.pw_file}"
        if not _PW_RE.fullmatch(value):  # never echo the value: it is a secret, possibly a typo of one
            raise ValueError(f"the PW in {where} must be 1-6 letters or digits (HJ 212-2017)")
        self._secret = value
        return self

    def secret(self) -> str:
        return self._secret


def _read_pw_file(path: Path) -> str:
    if not path.is_absolute():
        raise ValueError(f"pw_file {path} must be an absolute path")
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"pw_file {path} cannot be read ({exc}); check the path and its permissions") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"pw_file {path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    return text.strip()


class Hj212ServerDevice(DeviceBase):
    driver: Literal["hj212_server"]
    host: str = Field(default="127.0.0.1", min_length=1, description=(
        "address to listen on; loopback by default, set the LAN address (or 0.0.0.0) the units reach"))
    port: int = Field(ge=0, le=65535, description="TCP port the data-acquisition units connect to")
    stations: dict[Mn, Hj212Station] = Field(min_length=1, description="MN → its PW and device id; no one else")
    protocol_version: int = Field(default=VERSION_2017, ge=0, le=63,
                                  description="Flag version bits: 1 = HJ 212-2017")
    utc_offset_minutes: int = Field(default=480, ge=-720, le=840, description="time zone of DataTime (CST = 480)")
    idle_timeout_s: float = Field(default=600.0, gt=0, le=86400)
    max_connections: int = Field(default=64, ge=1, le=10_000)
    auth_timeout_s: float = Field(default=120.0, gt=0, le=86400, description=(
        "a connection that sends no packet from a configured station with its PW this long is closed"))
    max_unauthenticated_per_host: int = Field(default=8, ge=1, le=10_000, description=(
        "connections one address may hold open before a station on them has authenticated"))
    queue_packets: int = Field(default=1000, ge=1, le=100_000, description="accepted packets waiting for the agent")
    max_pw_failures: int = Field(default=5, ge=1, le=1000, description="wrong PWs before an MN is locked out")
    lockout_s: float = Field(default=300.0, gt=0, le=86400, description="how long a locked-out MN is refused")

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and ({"allowed_mn", "pw"} & data.keys()):
            raise ValueError("'allowed_mn' and 'pw' were replaced by 'stations': {MN: {pw: ..., device: ...}}:"
                             " every station is listed with its own PW")
        return data


class Hj212ServerDriver(Driver):
    kind = "hj212_server"
    settings: Hj212ServerDevice

    def __init__(self, device_id: str, settings: Hj212ServerDevice) -> None:
        super().__init__(device_id, settings)
        self._skipped_logged: set[str] = set()
        self.port: int | None = None  # the bound port once listening (settings.port may be 0)

    def device_for(self, mn: str) -> str:
        station = self.settings.stations.get(mn)
        return (station.device if station else None) or f"{self.device_id}.{mn}"

    def server_config(self) -> ServerConfig:
        s = self.settings
        return ServerConfig(stations={mn: st.secret() for mn, st in s.stations.items()}, host=s.host,
                            port=s.port, protocol_version=s.protocol_version, idle_timeout_s=s.idle_timeout_s,
                            auth_timeout_s=s.auth_timeout_s,
                            max_unauthenticated_per_host=s.max_unauthenticated_per_host,
                            max_connections=s.max_connections, max_pw_failures=s.max_pw_failures,
                            lockout_s=s.lockout_s)

    async def session(self) -> AsyncIterator[list[Reading]]:
        queue: asyncio.Queue[list[Reading]] = asyncio.Queue(self.settings.queue_packets)

        async def sink(packet: Packet) -> None:
            conv = packet_to_readings(packet, self.device_for(packet.mn),
                                      utc_offset_minutes=self.settings.utc_offset_minutes)
            for key, why in conv.skipped:
                self.counters.bump("skipped_fields")
                if key not in self._skipped_logged:  # once per field name, not once per packet
                    self._skipped_logged.add(key)
                    log.warning("%s: MN %s field %s left out: %s", self.describe(), packet.mn, key, why)
            if conv.readings:
                await queue.put(conv.readings)  # a full queue slows the senders: TCP back-pressure

        server = Hj212Server(self.server_config(), sink, self.counters, events=self.events, device=self.device_id)
        await server.start()  # OSError (port taken) goes to the supervisor, which retries with backoff
        self.port = server.port
        try:
            yield []
            while True:
                yield await queue.get()
        finally:
            await server.close()
