# The node's main loop: wake, sample, store a signed batch in flash, and when the schedule says so
# connect and deliver. A batch leaves the flash buffer only when the cloud's ack names its seq
# (never on PUBACK); anything unacked is sent again, byte for byte, and the cloud drops duplicates.
#
# RAM is the scarce resource: modules are imported for the phase that needs them (config check,
# sampling, uplink) and unloaded after it, so the peak is one phase's code, not all of it.
import gc
import json
import sys
from binascii import unhexlify

import hw
from ringbuf import RingBuffer
from shadow import Shadow

FW_VERSION = "0.1.0"


def unload(*names):
    for n in names:
        if n in sys.modules:
            del sys.modules[n]
    gc.collect()


class Node:
    def __init__(self, cfg):
        self.cfg = cfg
        self.node_id = cfg["node_id"]
        self.secret = unhexlify(cfg["secret_hex"])
        b = cfg["buffer"]
        self.buf = RingBuffer(b["dir"], b["segment_bytes"], b["max_segments"])
        self.shadow = Shadow(cfg, b["dir"] + "/shadow.json")
        self.sensor_errors = {}
        self.wdt = hw.watchdog(cfg["watchdog_s"] * 1000)
        self.rtc = self._rtc_load()
        self.counters = {"batches": 0, "published": 0, "acked": 0, "duplicate": 0, "refused": 0,
                         "uplink_failures": 0, "connects": 0, "bad_acks": 0}
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
        import wire
        from sensors import Sensors
        try:
            ts = hw.now_ms()
            sensors = Sensors(self.cfg, self.sensor_errors)
            readings = sensors.sample(self.shadow.state["sensors_enabled"], ts, self.feed)
            del sensors
            if not readings:
                return 0
            seq = self.next_seq()
            msg = wire.batch_parts(self.node_id, seq, hw.now_ms(), readings, self.secret)
            del readings
            self.buf.append(seq, msg)
            self.counters["batches"] += 1
            return seq
        finally:
            unload("sensors", "wire")

    def uplink(self):
        from uplink import Uplink
        try:
            return Uplink(self).run()
        finally:
            unload("uplink", "mqtt", "shadow_delta")

    # --- one wake ----------------------------------------------------------------------

    def cycle(self):
        wake = self.rtc.get("wake", 0) + 1
        self.rtc["wake"] = wake
        self.sample()
        sleep = self.shadow.state["sleep"]
        ok = None
        if wake % sleep["uplink_every"] == 0:
            ok = self.uplink()
            if self.cfg["wifi"]:
                hw.wifi_down()
        self._rtc_save()
        return ok


def load_config(path):
    import config
    try:
        return config.load(path)
    finally:
        unload("config")


def main(path="config.json", cycles=None):
    cfg = load_config(path)
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
