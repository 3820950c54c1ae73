# A Modbus RTU slave on the far end of a fake UART, with registers from the sim file.
import struct

from hw_fakes import sim
from modbus import crc16


class FakeUART:
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
