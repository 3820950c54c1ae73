# bluetooth.BLE with gap_scan delivering the sim file's adverts through the IRQ handler.
from hw_fakes import sim


class FakeBLE:
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
