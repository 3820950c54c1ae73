# Runs under MicroPython: Modbus RTU, BTHome, soil probes and the watchdog fake, good and bad input.
import sys
import time
from binascii import unhexlify

import bthome
import hw
import modbus
import soil
from mpcheck import check, done, raises

check("crc16 check value", modbus.crc16(b"123456789"), 0x4B37)
check("crc16 read request", modbus.crc16(bytes([1, 3, 0, 0, 0, 10])), 0xCDC5)
bus = modbus.ModbusRTU(hw.uart(1, 9600, 17, 16), 9600, hw.pin_out(4), 100)
data = bus.read_registers(1, 0, 4)
check("read 4 registers", list(data), [0x04, 0xD2, 0xFF, 0xDC, 0, 1, 0x86, 0xA0])
check("decode u16 fixed", modbus.decode(data, "u16", 2), (1234, 2))
check("decode i16", modbus.decode(data[2:], "i16", 1), (-36, 1))
check("decode u32", modbus.decode(data[4:], "u32", 0), 100000)
check("decode f32", modbus.decode(b"\x41\xc8\x00\x00", "f32", 0), 25.0)
raises("illegal address", modbus.ModbusError, lambda: bus.read_registers(1, 100, 2))
raises("silent unit times out", modbus.ModbusError, lambda: bus.read_registers(9, 0, 1))
raises("bad CRC refused", modbus.ModbusError, lambda: bus.read_registers(2, 0, 1))
raises("bad request", ValueError, lambda: bus.read_registers(0, 0, 1))



adv = unhexlify(sys.argv[1])
sd = bthome.service_data(adv)
vals, pid = bthome.parse(sd)
check("bthome values", vals, {"battery": (97, "%"), "temperature": ((2150, 2), "°C"), "humidity": ((5055, 2), "%")})
check("bthome with MAC", bthome.parse(b"\x42" + b"\x01\x02\x03\x04\x05\x06" + b"\x00\x07\x45\x05\x01")[0],
      {"temperature": ((261, 1), "°C")})
check("bthome packet id", bthome.parse(b"\x40\x00\x09\x01\x50")[1], 9)
check("bthome unknown object stops", bthome.parse(b"\x40\x01\x50\xf0\x01\x02")[0], {"battery": (80, "%")})
raises("bthome encrypted", bthome.BTHomeError, lambda: bthome.parse(b"\x41\x02\x00"))
raises("bthome v1", bthome.BTHomeError, lambda: bthome.parse(b"\x20\x02\x00\x00"))
raises("bthome truncated", bthome.BTHomeError, lambda: bthome.parse(b"\x40\x02\x00"))
raises("bthome empty", bthome.BTHomeError, lambda: bthome.parse(b""))
check("no service data", bthome.service_data(b"\x02\x01\x06\x03\x03\xd2\xfc"), None)
check("broken AD length", bthome.service_data(b"\x02\x01\x06\x09\x16\xd2"), None)


check("moisture mid", soil.moisture_tenths(35000, 50000, 20000), 500)
check("moisture clamps", (soil.moisture_tenths(60000, 50000, 20000), soil.moisture_tenths(1, 50000, 20000)), (0, 1000))
probe = soil.I2cProbe(hw.i2c(0, 22, 21), 0x20, 250, 600)
check("i2c probe", probe.read(), {"soil_moisture": ((428, 1), "%"), "soil_temperature": ((-10, 1), "°C"),
                                  "soil_raw": (400, "")})
raises("i2c probe absent", OSError, lambda: soil.I2cProbe(hw.i2c(0, 22, 21), 0x21).read())

w = hw.watchdog(50)
w.feed()
time.sleep_ms(80)
raises("watchdog starved", RuntimeError, w.feed)

done()
