# The node's main loop: wake, sample, store a signed batch in flash, and when the schedule says so
# connect and deliver. A batch leaves the flash buffer only when the cloud's ack names its seq
# (never on PUBACK); anything unacked is sent again, byte for byte, and the cloud drops duplicates.
import gc
import json
from binascii import unhexlify

import hw
import wire
import config as configmod
from ringbuf import RingBuffer
from mqtt import MQTTClient, Backoff
from shadow import Shadow
from sensors import Sensors

FW_VERSION = "0.1.0"


class Node:
    def __init__(self, cfg):
        self.cfg = cfg
        self.node_id = cfg["node_id"]
        self.secret = unhexlify(cfg["secret_hex"])
        b = cfg["buffer"]
        self.buf = RingBuffer(b["dir"], b["segment_bytes"], b["max_segments"])
        self.shadow = Shadow(cfg, b["dir"] + "/shadow.json")
        self.sensors = Sensors(cfg)
        p = "cl/%s/%s/" % (cfg["site"], cfg["node_id"])
        self.t_telemetry, self.t_ack, self.t_status = p + "telemetry", p + "ack", p + "status"
        self.t_shadow, self.t_delta = p + "shadow/update", p + "shadow/update/delta"
        self.wdt = hw.watchdog(cfg["watchdog_s"] * 1000)
        self.rtc = self._rtc_load()
        self.counters = {"batches": 0, "published": 0, "acked": 0, "duplicate": 0, "refused": 0,
                         "uplink_failures": 0, "connects": 0, "bad_acks": 0}
        self.acks = {}
        self.deltas = []
        self.backoff = Backoff(cfg["reconnect_initial_ms"] / 1000, 60.0)
        self.last_error = ""

    def feed(self):
        self.wdt.feed()

    # --- RTC memory: what must survive deep sleep without a flash write -------------------------

    def _rtc_load(self):
        try:
            st = json.loads(hw.rtc_load() or b"{}")
            if type(st) is dict and type(st.get("wake", 0)) is int and type(st.get("seq", 0)) is int:
                return st
        except ValueError:
            pass
        return {}

    def _rtc_save(self):
        self.rtc["seq"] = self.buf.last_tag
        hw.rtc_save(json.dumps(self.rtc).encode())

    # --- sampling ----------------------------------------------------------------------

    def next_seq(self):
        last = max(self.buf.last_tag, self.rtc.get("seq", 0))
        if last == 0:
            # A node with no history starts at the clock's seconds: a reflashed node then never
            # reuses a seq the cloud has already committed (it makes far fewer than one batch a second).
            return max(1, hw.now_ms() // 1000)
        return last + 1

    def sample(self):
        """Read the enabled sensors and store one signed batch; returns its seq or 0."""
        self.feed()
        if not hw.clock_valid():
            return 0  # timestamps would be wrong: wait for NTP
        ts = hw.now_ms()
        readings = self.sensors.sample(self.shadow.state["sensors_enabled"], ts, self.feed)
        if not readings:
            return 0
        seq = self.next_seq()
        msg = wire.batch(self.node_id, seq, hw.now_ms(), readings, self.secret)
        del readings
        self.buf.append(seq, msg)
        self.counters["batches"] += 1
        return seq

    # --- uplink -------------------------------------------------------------------------

    def _on_message(self, topic, msg):
        if topic == self.t_ack:
            try:
                a = json.loads(msg)
                seq, status = a["seq"], a["status"]
                if type(seq) is not int or status not in ("committed", "duplicate", "rejected"):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                self.counters["bad_acks"] += 1
                return
            if seq <= self.buf.last_tag and len(self.acks) < 256:
                self.acks[seq] = status
        elif topic == self.t_delta:
            # Answered after the current wait; a flood keeps only the newest few (each supersedes the last).
            if len(self.deltas) >= 8:
                self.deltas.pop(0)
            self.deltas.append(msg if len(msg) <= 2048 else b"too large")

    def _client(self):
        m = self.cfg["mqtt"]
        c = MQTTClient("%s.%s" % (self.cfg["site"], self.node_id), m["host"], m["port"], m.get("user"),
                       m.get("password"), m["keepalive_s"], m["tls"], False,
                       (self.t_status, b"offline", True, 1), self._on_message, self.cfg["ack_timeout_s"])
        c.idle = self.feed
        return c

    def _wait_acks(self, c, tags):
        t = self.cfg["ack_timeout_s"] * 1000
        while t > 0 and any(tag not in self.acks for tag in tags):
            self.feed()
            c.check_msg(0.2)
            t -= 200
        return all(tag in self.acks for tag in tags)

    def _deliver(self, c):
        window = self.cfg["window"]
        while True:
            self.feed()
            recs = self.buf.peek(window)
            if not recs:
                return
            tags = []
            for tag, payload, pos in recs:
                tags.append(tag)
                if tag not in self.acks:
                    c.publish(self.t_telemetry, payload, qos=1)
                    self.counters["published"] += 1
                    self.feed()
            recs = [(r[0], r[2]) for r in recs]  # drop the payloads before waiting
            gc.collect()
            self._wait_acks(c, tags)
            k = 0
            while k < len(recs) and recs[k][0] in self.acks:
                st = self.acks.pop(recs[k][0])
                self.counters["acked" if st == "committed" else st if st == "duplicate" else "refused"] += 1
                k += 1
            if k:
                self.buf.consume(recs[k - 1][1], recs[k - 1][0], k)
            if k < len(recs):
                raise OSError("no ack for batch %d within %d s" % (recs[k][0], self.cfg["ack_timeout_s"]))

    def _shadow(self, c, always):
        while self.deltas:
            c.publish(self.t_shadow, self.shadow.on_delta(self.deltas.pop(0)).encode(), qos=1)
        if always:
            c.publish(self.t_shadow, self.report().encode(), qos=1)

    def report(self):
        st = self.buf.stats()
        return self.shadow.report(extra={"fw": FW_VERSION, "buffer": {
            "pending": st["pending"], "corrupt": st["corrupt"], "dropped": st["dropped"], "bytes": st["bytes"]},
            "sensor_errors": self.sensors.errors, "counters": self.counters})

    def session(self):
        c = self._client()
        try:
            c.connect()
            self.counters["connects"] += 1
            c.subscribe(self.t_ack, 1)
            c.subscribe(self.t_delta, 1)
            c.publish(self.t_status, b"online", retain=True, qos=1)
            for _ in range(50):  # what the broker kept for us while we slept: acks, deltas
                self.feed()
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

    def uplink(self):
        """Connect and deliver everything; retries with backoff. Returns True when the buffer is empty."""
        w = self.cfg["wifi"]
        if w and not hw.wifi_up(w["ssid"], w.get("password", ""), 20000, self.feed):
            self.counters["uplink_failures"] += 1
            return False
        if not self.rtc.get("ntp") or not hw.clock_valid():
            try:
                hw.sync_time(self.cfg["ntp_host"])
                self.rtc["ntp"] = 1
            except OSError:
                pass
        self.backoff.reset()
        for attempt in range(self.cfg["uplink_attempts"]):
            try:
                self.session()
                return True
            except OSError as e:
                self.counters["uplink_failures"] += 1
                self.last_error = str(e)
                print("uplink:", e)
                if attempt + 1 < self.cfg["uplink_attempts"]:
                    self._sleep(int(self.backoff.next() * 1000))
        return False

    def _sleep(self, ms):
        while ms > 0:
            self.feed()
            hw.sleep_ms(min(ms, 1000))
            ms -= 1000

    # --- one wake ----------------------------------------------------------------------

    def cycle(self):
        wake = self.rtc.get("wake", 0) + 1
        self.rtc["wake"] = wake
        self.sample()
        sleep = self.shadow.state["sleep"]
        ok = None
        if wake % sleep["uplink_every"] == 0 or self.deltas:
            ok = self.uplink()
            if self.cfg["wifi"]:
                hw.wifi_down()
        self._rtc_save()
        return ok


def main(path="config.json", cycles=None):
    cfg = configmod.load(path)
    n = 0
    while cycles is None or n < cycles:
        t0 = hw.now_ms()
        node = Node(cfg)  # as after a reset: state comes back from flash and RTC memory
        ok = node.cycle()
        n += 1
        print("cycle", n, "seq", node.buf.last_tag, "pending", node.buf.pending, "uplink", ok)
        interval = node.shadow.state["sample_interval_s"] * 1000
        deep = node.shadow.state["sleep"]["deep"]
        left = max(0, interval - (hw.now_ms() - t0))
        node.feed()
        del node
        gc.collect()
        if cycles is not None and n >= cycles:
            break
        if deep:
            hw.deep_sleep(left)
        else:
            hw.sleep_ms(left)
