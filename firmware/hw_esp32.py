# ESP32 implementation of the hardware layer, over machine, network and bluetooth.
import time

import machine

_EPOCH_OFFSET_MS = 946684800000 if time.gmtime(0)[0] == 2000 else 0  # ports with a 2000 epoch
_wdt = None


def uart(n, baud, tx, rx):
    return machine.UART(n, baudrate=baud, tx=tx, rx=rx, timeout=0)


def pin_out(n):
    return machine.Pin(n, machine.Pin.OUT, value=0) if n is not None else None


def i2c(n, scl, sda, freq=100000):
    return machine.I2C(n, scl=machine.Pin(scl), sda=machine.Pin(sda), freq=freq)


def adc(pin):
    a = machine.ADC(machine.Pin(pin))
    a.atten(machine.ADC.ATTN_11DB)  # the full 0-3.3 V range of a capacitive probe
    return a


def ble():
    import bluetooth
    return bluetooth.BLE()


class _Wdt:
    def __init__(self, ms):
        global _wdt
        if _wdt is None:
            _wdt = machine.WDT(timeout=ms)  # cannot be stopped once started; deep sleep resets it

    def feed(self):
        _wdt.feed()


def watchdog(ms):
    return _Wdt(ms)


def rtc_load():
    return machine.RTC().memory()


def rtc_save(data):
    machine.RTC().memory(data)


def woke_from_deep_sleep():
    return machine.reset_cause() == machine.DEEPSLEEP_RESET


def deep_sleep(ms):
    machine.deepsleep(ms)


def sleep_ms(ms):
    time.sleep_ms(ms)


def now_ms():
    return time.time_ns() // 1000000 + _EPOCH_OFFSET_MS


def clock_valid():
    return now_ms() > 1704067200000  # after 2024-01-01: the RTC has been set


def sync_time(host):
    import ntptime
    ntptime.host = host
    ntptime.settime()


def wifi_up(ssid, password, timeout_ms, feed):
    import network
    w = network.WLAN(network.STA_IF)
    w.active(True)
    if not w.isconnected():
        w.connect(ssid, password)
        t0 = time.ticks_ms()
        while not w.isconnected() and time.ticks_diff(time.ticks_ms(), t0) < timeout_ms:
            feed()
            time.sleep_ms(100)
    return w.isconnected()


def wifi_down():
    import network
    network.WLAN(network.STA_IF).active(False)


def reset():
    machine.reset()
