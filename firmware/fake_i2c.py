# A Chirp-style soil probe on a fake I2C bus, and a fake ADC, with values from the sim file.
import struct

from hw_fakes import sim


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
