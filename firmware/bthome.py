# BTHome v2 adverts (bthome.io): AD type 0x16 service data with UUID 0xFCD2, an info byte, then
# [object id][little-endian value] in ascending id order. Values stay fixed-point (raw, decimals).
from micropython import const

_UUID = b"\xd2\xfc"
_IRQ_SCAN_RESULT = const(5)
_IRQ_SCAN_DONE = const(6)

# id: (bytes, signed, decimals, point, unit)
OBJECTS = {
    0x00: (1, 0, 0, None, None),  # packet id: dedup only
    0x01: (1, 0, 0, "battery", "%"),
    0x02: (2, 1, 2, "temperature", "°C"),
    0x03: (2, 0, 2, "humidity", "%"),
    0x04: (3, 0, 2, "pressure", "hPa"),
    0x05: (3, 0, 2, "illuminance", "lx"),
    0x08: (2, 1, 2, "dewpoint", "°C"),
    0x0C: (2, 0, 3, "voltage", "V"),
    0x12: (2, 0, 0, "co2", "ppm"),
    0x14: (2, 0, 2, "moisture", "%"),
    0x2E: (1, 0, 0, "humidity", "%"),
    0x2F: (1, 0, 0, "moisture", "%"),
    0x45: (2, 1, 1, "temperature", "°C"),
}


class BTHomeError(ValueError):
    pass


def service_data(adv):
    """The BTHome service data inside an advertising payload, or None."""
    i = 0
    n = len(adv)
    while i + 1 < n:
        ln = adv[i]
        if ln == 0 or i + 1 + ln > n:
            return None
        if adv[i + 1] == 0x16 and adv[i + 2:i + 4] == _UUID:
            return bytes(adv[i + 4:i + 1 + ln])
        i += 1 + ln
    return None


def parse(data):
    """BTHome service data (after the UUID) -> ({point: (value, unit)}, packet id or None)."""
    if not data:
        raise BTHomeError("empty service data")
    info = data[0]
    if info >> 5 != 2:
        raise BTHomeError("not BTHome version 2")
    if info & 1:
        raise BTHomeError("encrypted advert: no bind key on this node")
    i = 7 if info & 2 else 1
    out = {}
    pid = None
    last = -1
    while i < len(data):
        oid = data[i]
        spec = OBJECTS.get(oid)
        if spec is None:
            break  # an object we do not know: its length is unknown, so stop here
        if oid < last:
            raise BTHomeError("objects out of order")
        last = oid
        size, signed, dec, point, unit = spec
        if i + 1 + size > len(data):
            raise BTHomeError("truncated object 0x%02x" % oid)
        v = int.from_bytes(data[i + 1:i + 1 + size], "little")
        if signed and v >= 1 << (8 * size - 1):
            v -= 1 << (8 * size)
        if point is None:
            pid = v
        elif point not in out:
            out[point] = ((v, dec) if dec else v, unit)
        i += 1 + size
    return out, pid


class Scanner:
    """Passive BLE scan through `bluetooth`; keeps the newest advert of each wanted MAC."""

    def __init__(self, ble, wanted):
        self.ble = ble
        self.wanted = wanted  # {mac bytes: device id}
        self.found = {}
        self.errors = 0
        self.done = False

    def _irq(self, event, data):
        if event == _IRQ_SCAN_RESULT:
            _, addr, _, _, adv = data
            addr = bytes(addr)
            if addr in self.wanted:
                sd = service_data(adv)
                if sd is not None:
                    self.found[addr] = sd  # copy: the buffer belongs to the stack
        elif event == _IRQ_SCAN_DONE:
            self.done = True

    def scan(self, ms, sleep_ms):
        self.found, self.done = {}, False
        self.ble.active(True)
        self.ble.irq(self._irq)
        self.ble.gap_scan(ms, 30000, 30000, False)
        waited = 0
        while not self.done and waited < ms + 2000:
            sleep_ms(50)
            waited += 50
        self.ble.gap_scan(None)
        self.ble.active(False)
        out = {}
        for addr, sd in self.found.items():
            try:
                out[self.wanted[addr]] = parse(sd)[0]
            except BTHomeError:
                self.errors += 1
        return out
