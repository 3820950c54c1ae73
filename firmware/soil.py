# Soil probes: a capacitive probe on an ADC, or a Chirp-style I2C probe (capacitance and temperature).
# Moisture is calibrated linearly between a dry and a wet raw reading and kept in integer tenths of a percent.


def moisture_tenths(raw, dry, wet):
    if dry == wet:
        raise ValueError("dry and wet calibration must differ")
    t = (dry - raw) * 1000 // (dry - wet)
    return 0 if t < 0 else 1000 if t > 1000 else t


class AdcProbe:
    def __init__(self, adc, dry, wet, samples=8):
        self.adc, self.dry, self.wet, self.samples = adc, dry, wet, samples

    def read(self):
        total = 0
        for _ in range(self.samples):
            total += self.adc.read_u16()
        raw = total // self.samples
        return {"soil_moisture": ((moisture_tenths(raw, self.dry, self.wet), 1), "%"), "soil_raw": (raw, "")}


class I2cProbe:
    # Chirp I2C soil sensor: register 0 capacitance (u16), 5 temperature (i16, tenths of a degree), big-endian.
    REG_CAP, REG_TEMP = 0, 5

    def __init__(self, i2c, addr=0x20, dry=250, wet=600):
        self.i2c, self.addr, self.dry, self.wet = i2c, addr, dry, wet

    def _u16(self, reg):
        b = self.i2c.readfrom_mem(self.addr, reg, 2)
        return b[0] << 8 | b[1]

    def read(self):
        cap = self._u16(self.REG_CAP)
        t = self._u16(self.REG_TEMP)
        if t >= 0x8000:
            t -= 0x10000
        return {"soil_moisture": ((moisture_tenths(cap, self.dry, self.wet), 1), "%"),
                "soil_temperature": ((t, 1), "°C"), "soil_raw": (cap, "")}
