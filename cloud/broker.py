"""The embedded MQTT broker (amqtt, MQTT 3.1.1) for the zero-setup default.

Production and CI use Mosquitto 2 (MQTT 5, shared subscriptions, ACLs); this
exists so that `carbonlink demo` needs nothing installed. Bound to loopback only.
"""

from __future__ import annotations

import logging
from typing import Any

from carbonlink.kernel.ports import free_port

for _name in ("amqtt", "transitions"):
    logging.getLogger(_name).setLevel(logging.WARNING)  # it logs every packet at INFO


class EmbeddedBroker:
    """``async with EmbeddedBroker() as broker: broker.url``"""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}", "max_connections": 1000}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        await self._broker.start()  # returns once the listener is bound

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
