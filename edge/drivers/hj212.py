"""HJ 212 server driver: CEMS data-acquisition units push uploads to the gateway.

A push driver: ``session()`` listens, yields an empty list once it is listening
(so the supervisor sees the device online), then yields each accepted data
packet's readings as it arrives. Protocol work lives in ``edge.hj212``; this
module only maps settings and turns packets into readings.

Device ids of the readings: ``stations`` maps an MN to a device id; an MN not in
``stations`` becomes ``<this device id>.<MN>``. Allowed MNs are ``allowed_mn``
plus the keys of ``stations``; when both are empty any MN is accepted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from carbonlink.codecs.hj212.codec import VERSION_2017, Packet
from carbonlink.codecs.hj212.readings import packet_to_readings
from carbonlink.edge.hj212.server import Hj212Server, ServerConfig
from carbonlink.kernel.wire import Reading

from .base import Driver
from .settings import DeviceBase

log = logging.getLogger(__name__)

Mn = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{1,24}$")]
DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class Hj212ServerDevice(DeviceBase):
    driver: Literal["hj212_server"]
    host: str = Field(default="0.0.0.0", description="address to listen on")
    port: int = Field(ge=0, le=65535, description="TCP port the data-acquisition units connect to")
    allowed_mn: list[Mn] = Field(default_factory=list, description="MNs accepted; empty with no stations: any")
    pw: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{1,6}$", description="required PW; None: not checked")
    stations: dict[Mn, DeviceId] = Field(default_factory=dict, description="MN → device id of its readings")
    protocol_version: int = Field(default=VERSION_2017, ge=0, le=63,
                                  description="Flag version bits: 1 = HJ 212-2017")
    utc_offset_minutes: int = Field(default=480, ge=-720, le=840, description="time zone of DataTime (CST = 480)")
    idle_timeout_s: float = Field(default=600.0, gt=0, le=86400)
    max_connections: int = Field(default=64, ge=1, le=10_000)
    queue_packets: int = Field(default=1000, ge=1, le=100_000, description="accepted packets waiting for the agent")


class Hj212ServerDriver(Driver):
    kind = "hj212_server"
    settings: Hj212ServerDevice

    def __init__(self, device_id: str, settings: Hj212ServerDevice) -> None:
        super().__init__(device_id, settings)
        self._skipped_logged: set[str] = set()
        self.port: int | None = None  # the bound port once listening (settings.port may be 0)

    def device_for(self, mn: str) -> str:
        return self.settings.stations.get(mn) or f"{self.device_id}.{mn}"

    def server_config(self) -> ServerConfig:
        s = self.settings
        return ServerConfig(host=s.host, port=s.port, allowed_mn=frozenset([*s.allowed_mn, *s.stations]),
                            pw=s.pw, protocol_version=s.protocol_version, idle_timeout_s=s.idle_timeout_s,
                            max_connections=s.max_connections)

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

        server = Hj212Server(self.server_config(), sink, self.counters)
        await server.start()  # OSError (port taken) goes to the supervisor, which retries with backoff
        self.port = server.port
        try:
            yield []
            while True:
                yield await queue.get()
        finally:
            await server.close()
