# The node's sensors, built from config.json; each sample is a list of canonical reading texts.
# A failing sensor is counted and skipped: the others still report.
import gc
import sys

import hw
import wire


def _mac(text):
    return bytes(int(x, 16) for x in text.split(":"))


class Sensors:
    def __init__(self, cfg, errors):
        self.cfg = {s["id"]: s for s in cfg["sensors"]}
        self.errors = errors  # the node's counters, kept across unloads of this module

    def _fail(self, sid, exc):
        self.errors[sid] = self.errors.get(sid, 0) + 1
        print("sensor", sid, exc)

    def _modbus(self, s, ts, out, feed):
        from modbus import TYPES, ModbusRTU, decode
        bus = ModbusRTU(hw.uart(s["uart"], s["baud"], s["tx"], s["rx"]), s["baud"], hw.pin_out(s.get("de")),
                        s["timeout_ms"])
        for p in s["points"]:
            feed()
            try:
                data = bus.read_registers(s["unit"], p["reg"], TYPES[p["type"]][0], p["fn"])
                out.append(wire.reading(s["device"], p["point"], ts, decode(data, p["type"], p["decimals"]),
                                        p["unit"]))
            except (OSError, ValueError) as e:  # ModbusError, WireError: this point only
                self._fail(s["id"], e)

    def _soil(self, s, ts, out):
        from soil import AdcProbe, I2cProbe
        if s["kind"] == "soil_adc":
            probe = AdcProbe(hw.adc(s["pin"]), s["dry"], s["wet"], s["samples"])
        else:
            probe = I2cProbe(hw.i2c(s["i2c"], s["scl"], s["sda"]), s["addr"], s["dry"], s["wet"])
        for point, (value, unit) in sorted(probe.read().items()):
            out.append(wire.reading(s["device"], point, ts, value, unit))

    def _bthome(self, s, ts, out):
        from bthome import Scanner
        wanted = {}
        for mac, dev in s["devices"].items():
            wanted[_mac(mac)] = dev
        sc = Scanner(hw.ble(), wanted)
        found = sc.scan(s["scan_ms"], hw.sleep_ms)
        if sc.errors:
            self._fail(s["id"], "%d adverts not readable" % sc.errors)
        for dev in sorted(found):
            for point, (value, unit) in sorted(found[dev].items()):
                out.append(wire.reading(dev, point, ts, value, unit))

    def sample(self, enabled, ts, feed):
        out = []
        for sid in enabled:
            s = self.cfg.get(sid)
            if s is None:
                continue
            feed()
            try:
                if s["kind"] == "modbus":
                    self._modbus(s, ts, out, feed)
                elif s["kind"] == "bthome":
                    self._bthome(s, ts, out)
                else:
                    self._soil(s, ts, out)
            except (OSError, ValueError) as e:  # bus errors, missing devices, bad values
                self._fail(sid, e)
            for m in ("modbus", "soil", "bthome", "fake_uart", "fake_i2c", "fake_ble", "hw_fakes"):
                if m in sys.modules:
                    del sys.modules[m]  # one sensor kind's code in RAM at a time
            gc.collect()
        return out
