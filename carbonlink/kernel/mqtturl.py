"""Parse ``mqtt://host:port`` URLs the same way everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse


@dataclass(frozen=True)
class MqttUrl:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> MqttUrl:
        u = urlparse(url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError(f"broker URL {url!r} must look like mqtt://host:port or mqtts://host:port")
        return cls(u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883), u.scheme == "mqtts")

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
