"""An aiomqtt client that acknowledges QoS 1 messages when told to, not when they arrive.

The ingest sends the PUBACK for a telemetry message only after its batch is committed (or stored as
a dead letter): until then the broker keeps the message, so a killed worker loses nothing, and the
broker's in-flight window bounds what one worker holds in memory. aiomqtt (2.5) has no public
manual-ack API; paho, under it, has (``manual_ack_set``, ``ack``). This subclass is the one place
that reaches paho through aiomqtt's handle; tests/cloud/test_mqtt_ack.py fails if that changes.
"""

from __future__ import annotations

from typing import Any

import aiomqtt


class ManualAckClient(aiomqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paho().manual_ack_set(True)

    def _paho(self) -> Any:
        return self._client

    def ack(self, message: aiomqtt.Message) -> None:
        """Send the PUBACK of a QoS 1 message (nothing for QoS 0)."""
        if message.qos > 0:
            self._paho().ack(message.mid, message.qos)
