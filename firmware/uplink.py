# The uplink phase of a wake: connect, collect what the broker kept (acks, shadow deltas), deliver
# the flash buffer in windows, answer deltas, report, and say goodbye. A batch is consumed only on
# the cloud's ack naming its seq; anything unacked is sent again byte for byte on the next try.
import gc
import json

import hw
from mqtt import Backoff, MQTTClient
from node import FW_VERSION


class Uplink:
    def __init__(self, node):
        self.n = node
        p = "cl/%s/%s/" % (node.cfg["site"], node.node_id)
        self.t_telemetry, self.t_ack, self.t_status = p + "telemetry", p + "ack", p + "status"
        self.t_shadow, self.t_delta = p + "shadow/update", p + "shadow/update/delta"
        self.acks = {}
        self.deltas = []


    def _on_message(self, topic, msg):
        if topic == self.t_ack:
            try:
                a = json.loads(msg)
                seq, status = a["seq"], a["status"]
                if type(seq) is not int or status not in ("committed", "duplicate", "rejected"):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                self.n.counters["bad_acks"] += 1
                return
            if seq <= self.n.buf.last_tag and len(self.acks) < 256:
                self.acks[seq] = status
        elif topic == self.t_delta:
            # Answered after the current wait; a flood keeps only the newest few (each supersedes the last).
            if len(self.deltas) >= 8:
                self.deltas.pop(0)
            self.deltas.append(msg if len(msg) <= 2048 else b"too large")

    def _client(self):
        m = self.n.cfg["mqtt"]
        c = MQTTClient("%s.%s" % (self.n.cfg["site"], self.n.node_id), m["host"], m["port"], m.get("user"),
                       m.get("password"), m["keepalive_s"], m["tls"], False,
                       (self.t_status, b"offline", True, 1), self._on_message, self.n.cfg["ack_timeout_s"])
        c.idle = self.n.feed
        return c

    def _wait_acks(self, c, tags):
        t = self.n.cfg["ack_timeout_s"] * 1000
        while t > 0 and any(tag not in self.acks for tag in tags):
            self.n.feed()
            c.check_msg(0.2)
            t -= 200
        return all(tag in self.acks for tag in tags)

    def _deliver(self, c):
        window = self.n.cfg["window"]
        while True:
            self.n.feed()
            recs = []  # (tag, position after it): the payloads are not kept
            for tag, payload, pos in self.n.buf.each(window, stream=True):
                recs.append((tag, pos))
                if tag not in self.acks:
                    c.publish(self.t_telemetry, payload, qos=1)
                    self.n.counters["published"] += 1
                    self.n.feed()
                payload = None
            if not recs:
                return
            tags = [r[0] for r in recs]
            gc.collect()
            self._wait_acks(c, tags)
            k = 0
            while k < len(recs) and recs[k][0] in self.acks:
                st = self.acks.pop(recs[k][0])
                self.n.counters["acked" if st == "committed" else st if st == "duplicate" else "refused"] += 1
                k += 1
            if k:
                self.n.buf.consume(recs[k - 1][1], recs[k - 1][0], k)
            if k < len(recs):
                raise OSError("no ack for batch %d within %d s" % (recs[k][0], self.n.cfg["ack_timeout_s"]))

    def _shadow(self, c, always):
        while self.deltas:
            c.publish(self.t_shadow, self.n.shadow.on_delta(self.deltas.pop(0)).encode(), qos=1)
        if always:
            c.publish(self.t_shadow, self.report().encode(), qos=1)

    def report(self):
        st = self.n.buf.stats()
        return self.n.shadow.report(extra={"fw": FW_VERSION, "buffer": {
            "pending": st["pending"], "corrupt": st["corrupt"], "dropped": st["dropped"], "bytes": st["bytes"]},
            "sensor_errors": self.n.sensor_errors, "counters": self.n.counters})

    def session(self):
        c = self._client()
        try:
            c.connect()
            self.n.counters["connects"] += 1
            c.subscribe(self.t_ack, 1)
            c.subscribe(self.t_delta, 1)
            c.publish(self.t_status, b"online", retain=True, qos=1)
            for _ in range(50):  # what the broker kept for us while we slept: acks, deltas
                self.n.feed()
                if not c.check_msg(0.05):
                    break
            self._shadow(c, True)
            self._deliver(c)
            self._shadow(c, False)
            c.publish(self.t_status, b"offline", retain=True, qos=1)  # asleep: a clean goodbye, no will
            c.disconnect()
        finally:
            c.close()
            self.acks = {}

    def run(self):
        """Connect and deliver everything; retries with backoff. Returns True when the buffer is empty."""
        w = self.n.cfg["wifi"]
        if w and not hw.wifi_up(w["ssid"], w.get("password", ""), 20000, self.n.feed):
            self.n.counters["uplink_failures"] += 1
            return False
        if not self.n.rtc.get("ntp") or not hw.clock_valid():
            try:
                hw.sync_time(self.n.cfg["ntp_host"])
                self.n.rtc["ntp"] = 1
            except OSError:
                pass
        backoff = Backoff(self.n.cfg["reconnect_initial_ms"] / 1000, 60.0)
        for attempt in range(self.n.cfg["uplink_attempts"]):
            try:
                self.session()
                return True
            except OSError as e:
                self.n.counters["uplink_failures"] += 1
                self.n.last_error = str(e)
                print("uplink:", e)
                if attempt + 1 < self.n.cfg["uplink_attempts"]:
                    self._sleep(int(backoff.next() * 1000))
        return False

    def _sleep(self, ms):
        while ms > 0:
            self.n.feed()
            hw.sleep_ms(min(ms, 1000))
            ms -= 1000
