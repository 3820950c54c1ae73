# Modbus RTU master over a UART (Modbus over Serial Line V1.02; Modbus Application Protocol V1.1b3).
# Reads holding (3) or input (4) registers from a CEMS analyser or a flow meter on RS-485.
import struct
import time


def crc16(data):
    # CRC-16/MODBUS: init 0xFFFF, reflected polynomial 0xA001; sent low byte first.
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class ModbusError(OSError):
    pass


class ModbusRTU:
    def __init__(self, uart, baud=9600, de=None, timeout_ms=500):
        self.uart = uart
        self.de = de  # RS-485 driver-enable pin, high while sending
        self.timeout_ms = timeout_ms
        # 3.5 character times of silence delimit a frame (11 bits a character); fixed 1.75 ms above 19200.
        self.gap_us = 1750 if baud > 19200 else 38500000 // baud

    def _exchange(self, req, want):
        req = req + struct.pack("<H", crc16(req))
        while self.uart.any():
            self.uart.read()  # stale bytes from a previous, late answer
        if self.de:
            self.de.value(1)
        self.uart.write(req)
        if self.de:
            if hasattr(self.uart, "flush"):
                self.uart.flush()
            self.de.value(0)
        buf = b""
        t0 = time.ticks_ms()
        last = t0
        while True:
            n = self.uart.any()
            if n:
                buf += self.uart.read(n)
                last = time.ticks_ms()
                if len(buf) >= want or (len(buf) >= 5 and buf[1] & 0x80):
                    break
            elif buf and time.ticks_diff(time.ticks_ms(), last) * 1000 > self.gap_us * 4:
                break  # the slave stopped talking: a short frame
            elif time.ticks_diff(time.ticks_ms(), t0) > self.timeout_ms:
                raise ModbusError("no answer from unit %d" % req[0])
            else:
                time.sleep_ms(1)
        if len(buf) >= 5 and buf[1] & 0x80:
            if crc16(buf[:3]) != struct.unpack("<H", buf[3:5])[0]:
                raise ModbusError("bad CRC on an exception response")
            raise ModbusError("unit %d exception code %d" % (req[0], buf[2]))
        if len(buf) != want:
            raise ModbusError("answer is %d bytes, expected %d" % (len(buf), want))
        if crc16(buf[:-2]) != struct.unpack("<H", buf[-2:])[0]:
            raise ModbusError("bad CRC")
        if buf[0] != req[0] or buf[1] != req[1]:
            raise ModbusError("answer from the wrong unit or function")
        return buf

    def read_registers(self, unit, addr, count, fn=3):
        """Read `count` 16-bit registers (fn 3 holding, 4 input); returns the raw data bytes, big-endian."""
        if not 1 <= unit <= 247 or not 1 <= count <= 125 or fn not in (3, 4) or not 0 <= addr <= 0xFFFF:
            raise ValueError("bad Modbus request")
        buf = self._exchange(struct.pack(">BBHH", unit, fn, addr, count), 5 + 2 * count)
        if buf[2] != 2 * count:
            raise ModbusError("byte count %d, expected %d" % (buf[2], 2 * count))
        return buf[3:-2]


# Register types: (registers, struct format, is float)
TYPES = {"u16": (1, ">H", 0), "i16": (1, ">h", 0), "u32": (2, ">I", 0), "i32": (2, ">i", 0), "f32": (2, ">f", 1)}


def decode(data, typ, decimals):
    """Register bytes to a wire value: integers stay fixed-point (raw, decimals), never a float32."""
    n, fmt, flt = TYPES[typ]
    v = struct.unpack(fmt, data[: 2 * n])[0]
    if flt:
        return v
    return (v, decimals) if decimals else v
