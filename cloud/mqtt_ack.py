"""An aiomqtt client that acknowledges QoS 1 messages when told to, and holds a bounded number of them.

The ingest sends the PUBACK for a telemetry message only after its batch is committed (or stored as
a dead letter): until then the broker keeps the message, so a killed worker loses nothing.

The broker's in-flight window was meant to bound what one worker holds in memory, but Mosquitto 2.0.11
(this machine's) keeps it only until the first PUBACK: after that it sends everything it has queued
for the client (tests/cloud/test_mqtt_ack.py shows it; 2.0.13 lists "various fixes around inflight
quota management"). A worker then held 1,300 batches (70 MB of payload) after a burst and kept the
high-water mark. So the client bounds itself: once ``max_held_bytes`` of payload is received and not
yet acknowledged, it stops reading its socket. TCP then holds the broker back, which keeps the rest
queued, as it does for any slow client. Reading goes on regardless while one of the client's own
publishes waits for its PUBACK (the ingest's acks wait for theirs before the group is acknowledged:
pausing then would wait forever), and at least every ``max_pause_s`` (a keepalive PINGRESP must get
through). The ingest publishes its acks on a second connection, so its reader is never held open
for them: on this one, a PUBACK comes behind everything the broker has queued for the client.

aiomqtt (2.5) has no public manual-ack API nor flow control; paho, under it, has manual acks
(``manual_ack_set``, ``ack``), and the socket reader is registered on the event loop by aiomqtt. This
subclass registers its own reader in place of aiomqtt's (the same paho calls) so that it can take it
off and put it back. It is the one place that reaches under aiomqtt; tests/cloud/test_mqtt_ack.py
fails if that changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiomqtt

T = TypeVar("T")
MESSAGE_OVERHEAD = 512  # bytes a held message costs besides its payload (topic, objects): small ones count too


class ManualAckClient(aiomqtt.Client):
    def __init__(self, *args: Any, max_held_bytes: int = 0, max_pause_s: float = 5.0, **kwargs: Any) -> None:
        if max_held_bytes < 0 or max_pause_s <= 0:
            raise ValueError("max_held_bytes must be >= 0 (0: no bound) and max_pause_s > 0")
        super().__init__(*args, **kwargs)
        self._paho().manual_ack_set(True)
        self.max_held_bytes = max_held_bytes
        self.max_pause_s = max_pause_s
        self.held_bytes = 0  # payload (and overhead) received at QoS > 0 and not acknowledged yet
        self.held_peak = 0  # the most it held at once (for tests and the bench)
        self.pauses = 0  # times reading was paused (for tests and the bench)
        self._held: dict[int, int] = {}  # mid -> cost, so an ack (or a repeated one) subtracts what was added
        self._publishing = 0
        self._fd: int | None = None
        self._paused = False
        self._resume_timer: asyncio.TimerHandle | None = None

    def _paho(self) -> Any:
        return self._client

    def ack(self, message: aiomqtt.Message) -> None:
        """Send the PUBACK of a QoS 1 message (nothing for QoS 0)."""
        if message.qos > 0:
            self._paho().ack(message.mid, message.qos)
            self.held_bytes -= self._held.pop(message.mid, 0)
            self._flow()

    async def publish(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        await self._reading_meanwhile(super().publish(*args, **kwargs))

    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        # A worker that reconnects to its persistent session gets its backlog (up to the broker's window)
        # before the SUBACK: with reading paused, the subscribe waited out its time-out and the worker
        # reconnected, again and again, whenever that window held more than max_held_bytes.
        return await self._reading_meanwhile(super().subscribe(*args, **kwargs))

    async def _reading_meanwhile(self, op: Awaitable[T]) -> T:
        """Await one of our own requests with reading on: its answer comes behind what the broker sent first."""
        self._publishing += 1
        self._flow()
        try:
            return await op
        finally:
            self._publishing -= 1
            self._flow()

    # --- flow control -------------------------------------------------------------------------------

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        super()._on_message(client, userdata, message)
        if message.qos > 0 and self.max_held_bytes:
            cost = len(message.payload) + MESSAGE_OVERHEAD
            self.held_bytes += cost - self._held.get(message.mid, 0)
            self._held[message.mid] = cost
            self.held_peak = max(self.held_peak, self.held_bytes)
            self._flow()

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        super()._on_socket_open(client, userdata, sock)  # schedules aiomqtt's reader (and its misc task)
        # paho calls this from the thread that connects: the rest happens on the loop, after aiomqtt's.
        self._loop.call_soon_threadsafe(self._own_reader, sock.fileno())

    def _own_reader(self, fd: int) -> None:
        self._loop.add_reader(fd, self._read)  # replaces aiomqtt's reader for this socket
        self._fd, self._paused = fd, False
        self.held_bytes, self._held = 0, {}  # a new connection: the broker delivers anything unacked again

    def _read(self) -> None:
        """What aiomqtt's reader does: read what paho can, TLS's decrypted bytes too; a failure disconnects."""
        client = self._paho()
        try:
            client.loop_read()
            while (pending := getattr(client._sock, "pending", None)) is not None and pending() > 0:
                client.loop_read()
        except Exception as exc:  # as aiomqtt: a broken socket ends the connection, the caller reconnects
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._fd = None
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        super()._on_socket_close(client, userdata, sock)

    def _flow(self) -> None:
        """Pause reading while too much is held and nothing of ours awaits a PUBACK; resume otherwise."""
        if self._fd is None or not self.max_held_bytes:
            return
        hold = self.held_bytes >= self.max_held_bytes and not self._publishing
        if hold and not self._paused:
            self._pause()
        elif not hold and self._paused:
            self._resume()

    def _pause(self) -> None:
        assert self._fd is not None
        self._loop.remove_reader(self._fd)
        self._paused = True
        self.pauses += 1
        self._resume_timer = self._loop.call_later(self.max_pause_s, self._resume)

    def _resume(self) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        if not self._paused or self._fd is None:
            return
        self._paused = False
        self._loop.add_reader(self._fd, self._read)
        self._loop.call_soon(self._read)  # bytes a TLS socket decrypted already do not wake the selector
