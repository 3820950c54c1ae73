# Unix-port implementation of the hardware layer: fakes for the peripherals, driven by a JSON file
# named in $CL_SIM. The fakes speak the real protocols (a Modbus RTU slave answering CRC'd frames,
# BLE scan IRQs carrying raw adverts), so the firmware above them runs exactly as on a board.
import json
import os
import struct
import time

from modbus import crc16

_sim = None
STATE_DIR = os.getenv("CL_STATE") or "."
SLEEP_SCALE = int(os.getenv("CL_SLEEP_SCALE") or "1")  # tests shorten deep sleep by this factor


def sim():
    global _sim
    if _sim is None:
        path = os.getenv("CL_SIM")
        _sim = {}
        if path:
            with open(path) as f:
                _sim = json.load(f)
    return _sim


class FakeUART:
    """A Modbus RTU slave on the far end of the line, with registers from the sim file."""

    def __init__(self, n):
        self.n = n
        self.out = b""
        self.requests = 0

    def any(self):
        return len(self.out)

    def read(self, n=None):
        n = len(self.out) if n is None else n
        b, self.out = self.out[:n], self.out[n:]
        return b

    def write(self, req):
        self.requests += 1
        s = sim()
        unit = req[0]
        regs = s.get("modbus", {}).get(str(unit))
        if regs is None or unit in s.get("modbus_silent", []):
            return len(req)  # nobody home: the master times out
        if len(req) != 8 or crc16(req[:6]) != struct.unpack("<H", req[6:])[0]:
            return len(req)  # a real slave ignores a damaged frame
        fn, addr, count = struct.unpack(">BHH", req[1:6])
        if fn not in (3, 4):
            body = struct.pack(">BBB", unit, fn | 0x80, 1)
        elif any(str(a) not in regs for a in range(addr, addr + count)):
            body = struct.pack(">BBB", unit, fn | 0x80, 2)  # illegal data address
        else:
            body = struct.pack(">BBB", unit, fn, 2 * count) + b"".join(
                struct.pack(">H", regs[str(a)] & 0xFFFF) for a in range(addr, addr + count))
        crc = crc16(body)
        if unit in s.get("modbus_bad_crc", []):
            crc ^= 0x5555
        self.out = body + struct.pack("<H", crc)
        return len(req)


class FakePin:
    def __init__(self, n):
        self.n, self.v = n, 0

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v


class FakeI2C:
    def __init__(self, n):
        self.n = n

    def readfrom_mem(self, addr, reg, n):
        dev = sim().get("i2c", {}).get(str(addr))
        if dev is None or str(reg) not in dev:
            raise OSError(19)  # ENODEV: no ACK from the address
        return struct.pack(">H", dev[str(reg)] & 0xFFFF)[:n]


class FakeADC:
    def __init__(self, pin):
        self.pin = pin

    def read_u16(self):
        v = sim().get("adc", {}).get(str(self.pin))
        if v is None:
            raise OSError(5)
        return v


class FakeBLE:
    """bluetooth.BLE with gap_scan delivering the sim file's adverts through the IRQ handler."""

    def __init__(self):
        self._irq = None
        self._active = False

    def active(self, on=None):
        if on is not None:
            self._active = on
        return self._active

    def irq(self, handler):
        self._irq = handler

    def gap_scan(self, ms, *args):
        if ms is None:
            return
        from binascii import unhexlify
        for mac, adv in sim().get("ble", []):
            self._irq(5, (0, memoryview(unhexlify(mac)), 0, -60, memoryview(unhexlify(adv))))
        self._irq(6, ())


class FakeWDT:
    """Holds the node to its watchdog: a feed that comes too late is a reset, as on the board."""

    def __init__(self, ms):
        self.ms = ms
        self.last = time.ticks_ms()
        self.feeds = 0

    def feed(self):
        gap = time.ticks_diff(time.ticks_ms(), self.last)
        if gap > self.ms:
            raise RuntimeError("watchdog reset: %d ms without a feed" % gap)
        self.last = time.ticks_ms()
        self.feeds += 1


def uart(n, baud, tx, rx):
    return FakeUART(n)


def pin_out(n):
    return FakePin(n) if n is not None else None


def i2c(n, scl, sda, freq=100000):
    return FakeI2C(n)


def adc(pin):
    return FakeADC(pin)


def ble():
    return FakeBLE()


def watchdog(ms):
    return FakeWDT(ms)


def _rtc_path():
    return STATE_DIR + "/rtc.bin"


def rtc_load():
    try:
        with open(_rtc_path(), "rb") as f:
            return f.read()
    except OSError:
        return b""


def rtc_save(data):
    if len(data) > 2048:
        raise ValueError("RTC memory holds 2048 bytes")
    with open(_rtc_path(), "wb") as f:
        f.write(data)


_slept = False


def woke_from_deep_sleep():
    return _slept


def deep_sleep(ms):
    # The board resets on wake; here the caller's loop starts over from RTC memory, like a reset.
    global _slept
    _slept = True
    time.sleep_ms(ms // SLEEP_SCALE)


def sleep_ms(ms):
    time.sleep_ms(ms)


def now_ms():
    return time.time_ns() // 1000000


def clock_valid():
    return now_ms() > 1704067200000


def sync_time(host):
    pass  # the host's clock is already set


def wifi_up(ssid, password, timeout_ms, feed):
    return True


def wifi_down():
    pass


def reset():
    raise SystemExit(3)
