# Unix-port implementation of the hardware layer. RTC memory is a file, deep sleep a scaled sleep,
# the watchdog a strict fake; the peripheral fakes (fake_uart, fake_i2c, fake_ble) load only while a
# sensor is read, as RAM is scarce.
import os
import time

STATE_DIR = os.getenv("CL_STATE") or "."
SLEEP_SCALE = int(os.getenv("CL_SLEEP_SCALE") or "1")  # tests shorten deep sleep by this factor


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
    from fake_uart import FakeUART
    return FakeUART(n)


def pin_out(n):
    from fake_uart import FakePin
    return FakePin(n) if n is not None else None


def i2c(n, scl, sda, freq=100000):
    from fake_i2c import FakeI2C
    return FakeI2C(n)


def adc(pin):
    from fake_i2c import FakeADC
    return FakeADC(pin)


def ble():
    from fake_ble import FakeBLE
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
