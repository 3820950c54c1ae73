# A small MQTT 3.1.1 client for MicroPython (OASIS MQTT 3.1.1, 2014): CONNECT with last will and
# keep-alive, PUBLISH QoS 0/1 (PUBACK awaited), SUBSCRIBE, PINGREQ, DISCONNECT; TLS where the board
# has it. Blocking sockets with timeouts: a node does one thing at a time, and this keeps RAM small.
# Every network failure surfaces as OSError; the caller reconnects (see Backoff).
import select
import socket
import struct
import time

try:
    import random
except ImportError:
    random = None

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
MAX_PACKET = 64 * 1024  # the broker may send nothing bigger to a node


class MQTTError(OSError):
    pass


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!H", len(s)) + s


def _varlen(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


class Backoff:
    """Reconnect delays: doubling from `initial` to `cap`, with jitter so a fleet does not stampede."""

    def __init__(self, initial=0.5, cap=60.0):
        self.initial, self.cap, self.attempt = initial, cap, 0

    def next(self):
        d = min(self.cap, self.initial * (2 ** self.attempt))
        self.attempt += 1
        if random:
            d *= 0.5 + random.getrandbits(8) / 512
        return d

    def reset(self):
        self.attempt = 0


class MQTTClient:
    def __init__(self, client_id, host, port=1883, user=None, password=None, keepalive=60, tls=False,
                 clean=False, will=None, cb=None, timeout=10):
        self.client_id, self.host, self.port = client_id, host, port
        self.user, self.password = user, password
        self.keepalive = keepalive
        self.tls = tls
        self.clean = clean
        self.will = will  # (topic, message, retain, qos)
        self.cb = cb  # cb(topic: str, message: bytes) for incoming PUBLISH
        self.idle = None  # called while waiting, e.g. to feed a watchdog
        self.timeout = timeout
        self.sock = None
        self._pid = 0
        self._acked = set()
        self._last_tx = 0
        self._ping_out = 0

    # --- transport -----------------------------------------------------------------------

    def connect(self):
        """Open the session; returns True if the broker kept a previous session for us."""
        self.close()
        addr = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0][-1]
        s = socket.socket()
        try:
            s.settimeout(self.timeout)
            s.connect(addr)
            if self.tls:
                import ssl
                ctx = self.tls if not isinstance(self.tls, bool) else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                s = ctx.wrap_socket(s, server_hostname=self.host)
        except OSError:
            s.close()
            raise
        self.sock = s
        self._poll = select.poll()
        self._poll.register(s, select.POLLIN)
        flags = 0x02 if self.clean else 0
        body = bytearray(b"\x00\x04MQTT\x04")
        payload = bytearray(_str(self.client_id))
        if self.will:
            topic, msg, retain, qos = self.will
            flags |= 0x04 | (qos & 3) << 3 | (0x20 if retain else 0)
            payload += _str(topic) + _str(msg)
        if self.user is not None:
            flags |= 0x80
            payload += _str(self.user)
            if self.password is not None:
                flags |= 0x40
                payload += _str(self.password)
        body.append(flags)
        body += struct.pack("!H", self.keepalive)
        self._send(CONNECT << 4, body + payload)
        kind, _, data = self._read_packet(self.timeout)
        if kind != CONNACK or len(data) != 2:
            self.close()
            raise MQTTError("expected CONNACK")
        if data[1]:
            self.close()
            raise MQTTError("broker refused the connection: code %d" % data[1])
        self._ping_out = 0
        return bool(data[0] & 1)

    def close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def disconnect(self):
        try:
            self._send(DISCONNECT << 4, b"")
        except OSError:
            pass
        self.close()

    def _send(self, first, body, tail=b""):
        # tail: a large payload written as it is, never copied into one packet buffer.
        if not self.sock:
            raise MQTTError("not connected")
        pkt = bytes((first,)) + _varlen(len(body) + len(tail))
        try:
            self.sock.write(pkt)
            if body:
                self.sock.write(body)
            if tail:
                if hasattr(tail, "write_to"):
                    tail.write_to(self.sock)  # e.g. a record streamed from flash
                else:
                    self.sock.write(tail)
        except OSError:
            self.close()
            raise
        self._last_tx = time.ticks_ms()

    def _read(self, n):
        buf = bytearray(n)
        mv = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.readinto(mv[got:])
            if not k:
                self.close()
                raise MQTTError("connection closed by the broker")
            got += k
        return buf

    def _read_packet(self, timeout):
        # One whole packet, or (None, 0, b"") if nothing arrived within timeout seconds.
        if not self.sock:
            raise MQTTError("not connected")
        try:
            ready = self._poll.poll(int(timeout * 1000))
            if not ready:
                return None, 0, b""
            if ready[0][1] & (select.POLLHUP | select.POLLERR) and not ready[0][1] & select.POLLIN:
                raise MQTTError("connection lost")
            first = self._read(1)[0]
            n, shift = 0, 0
            while True:
                b = self._read(1)[0]
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
                if shift > 21:
                    raise MQTTError("malformed remaining length")
            if n > MAX_PACKET:
                raise MQTTError("packet too large")
            return first >> 4, first & 0x0F, self._read(n) if n else b""
        except OSError:
            self.close()
            raise

    # --- operations ----------------------------------------------------------------------

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    def publish(self, topic, msg, retain=False, qos=0, dup=False):
        """Send one message; with QoS 1, return only when the broker's PUBACK arrived."""
        first = PUBLISH << 4 | (qos & 1) << 1 | (1 if retain else 0) | (8 if dup else 0)
        head = _str(topic)
        pid = 0
        if qos:
            pid = self._next_pid()
            head += struct.pack("!H", pid)
        self._send(first, head, msg)
        if qos:
            self._wait(lambda: pid in self._acked, self.timeout, "no PUBACK")
            self._acked.discard(pid)
        return pid

    def subscribe(self, topic, qos=1):
        pid = self._next_pid()
        self._send(SUBSCRIBE << 4 | 2, struct.pack("!H", pid) + _str(topic) + bytes((qos,)))
        self._wait(lambda: pid in self._acked, self.timeout, "no SUBACK")
        self._acked.discard(pid)

    def _wait(self, done, timeout, what):
        t0 = time.ticks_ms()
        while not done():
            left = timeout - time.ticks_diff(time.ticks_ms(), t0) / 1000
            if left <= 0:
                self.close()
                raise MQTTError(what)
            if self.idle:
                self.idle()
            self.check_msg(min(left, 1))

    def check_msg(self, timeout=0):
        """Handle at most one incoming packet; keeps the connection alive. Returns True if one came."""
        self._keepalive()
        kind, flags, data = self._read_packet(timeout)
        if kind is None:
            self._keepalive()
            return False
        if kind == PUBLISH:
            n = struct.unpack_from("!H", data, 0)[0]
            topic = bytes(data[2:2 + n]).decode()
            off = 2 + n
            qos = flags >> 1 & 3
            pid = 0
            if qos:
                pid = struct.unpack_from("!H", data, off)[0]
                off += 2
            if self.cb:
                self.cb(topic, bytes(memoryview(data)[off:]))
            if qos == 1:
                # After the callback: a crash inside it means the broker sends the message again.
                self._send(PUBACK << 4, struct.pack("!H", pid))
        elif kind in (PUBACK, SUBACK):
            self._acked.add(struct.unpack_from("!H", data, 0)[0])
            if kind == SUBACK and data[2] == 0x80:
                raise MQTTError("subscription refused")
        elif kind == PINGRESP:
            self._ping_out = 0
        return True

    def _keepalive(self):
        if not self.keepalive or not self.sock:
            return
        now = time.ticks_ms()
        if self._ping_out and time.ticks_diff(now, self._ping_out) > self.keepalive * 1000:
            self.close()
            raise MQTTError("no PINGRESP: the broker is gone")
        if not self._ping_out and time.ticks_diff(now, self._last_tx) > self.keepalive * 500:
            self._send(PINGREQ << 4, b"")
            self._ping_out = time.ticks_ms()

    def ping(self):
        self._send(PINGREQ << 4, b"")
        self._ping_out = time.ticks_ms()
        self._wait(lambda: not self._ping_out, self.timeout, "no PINGRESP")
