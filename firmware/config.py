# config.json: written by `carbonlink provision`, validated here before anything runs.
# The keys are documented in firmware/README.md. Every error names the key and what it must be.
import json

KINDS = ("modbus", "soil_adc", "soil_i2c", "bthome")


class ConfigError(ValueError):
    pass


def ident(v, name):
    if type(v) is not str or not 1 <= len(v) <= 64:
        raise ConfigError(name + " must be 1-64 of A-Z a-z 0-9 _ . -")
    for c in v:
        if not (c.isalpha() or c.isdigit() or c in "_.-") or ord(c) > 127:
            raise ConfigError(name + " must be 1-64 of A-Z a-z 0-9 _ . -")
    return v


def integer(d, key, lo, hi, default=None, name=None):
    v = d.get(key, default)
    if type(v) is not int or not lo <= v <= hi:
        raise ConfigError("%s must be an integer from %d to %d" % (name or key, lo, hi))
    return v


def text(d, key, default=None, name=None, lo=1, hi=128):
    v = d.get(key, default)
    if type(v) is not str or not lo <= len(v) <= hi:
        raise ConfigError("%s must be text of %d-%d characters" % (name or key, lo, hi))
    return v


def _sensor(s, i):
    where = "sensors[%d]" % i
    if type(s) is not dict:
        raise ConfigError(where + " must be an object")
    ident(s.get("id"), where + ".id")
    kind = s.get("kind")
    if kind not in KINDS:
        raise ConfigError(where + ".kind must be one of " + ", ".join(KINDS))
    if kind != "bthome":
        ident(s.get("device"), where + ".device")
    if kind == "modbus":
        for k, lo, hi, dflt in (("uart", 0, 2, 1), ("baud", 1200, 115200, 9600), ("tx", 0, 48, 17),
                                ("rx", 0, 48, 16), ("unit", 1, 247, 1), ("timeout_ms", 50, 5000, 500)):
            s[k] = integer(s, k, lo, hi, dflt, where + "." + k)
        if s.get("de") is not None:
            integer(s, "de", 0, 48, None, where + ".de")
        pts = s.get("points")
        if type(pts) is not list or not pts:
            raise ConfigError(where + ".points must be a non-empty list")
        for j, p in enumerate(pts):
            pw = "%s.points[%d]" % (where, j)
            if type(p) is not dict:
                raise ConfigError(pw + " must be an object")
            ident(p.get("point"), pw + ".point")
            p["reg"] = integer(p, "reg", 0, 65535, None, pw + ".reg")
            p["fn"] = integer(p, "fn", 3, 4, 3, pw + ".fn")
            p["decimals"] = integer(p, "decimals", 0, 9, 0, pw + ".decimals")
            p["unit"] = text(p, "unit", "", pw + ".unit", 0, 32)
            if p.setdefault("type", "u16") not in ("u16", "i16", "u32", "i32", "f32"):
                raise ConfigError(pw + ".type must be u16, i16, u32, i32 or f32")
    elif kind == "soil_adc":
        s["pin"] = integer(s, "pin", 0, 48, None, where + ".pin")
        s["dry"] = integer(s, "dry", 0, 65535, None, where + ".dry")
        s["wet"] = integer(s, "wet", 0, 65535, None, where + ".wet")
        s["samples"] = integer(s, "samples", 1, 64, 8, where + ".samples")
        if s["dry"] == s["wet"]:
            raise ConfigError(where + ": dry and wet calibration must differ")
    elif kind == "soil_i2c":
        for k, lo, hi, dflt in (("i2c", 0, 1, 0), ("scl", 0, 48, 22), ("sda", 0, 48, 21), ("addr", 8, 119, 0x20),
                                ("dry", 0, 65535, 250), ("wet", 0, 65535, 600)):
            s[k] = integer(s, k, lo, hi, dflt, where + "." + k)
    else:
        s["scan_ms"] = integer(s, "scan_ms", 500, 30000, 5000, where + ".scan_ms")
        devs = s.get("devices")
        if type(devs) is not dict or not devs:
            raise ConfigError(where + '.devices must map MAC addresses ("A4:C1:38:00:00:01") to device ids')
        for mac, dev in devs.items():
            if type(mac) is not str or len(mac) != 17 or mac.count(":") != 5:
                raise ConfigError(where + ".devices: %r is not a MAC address like A4:C1:38:00:00:01" % (mac,))
            ident(dev, where + ".devices[" + mac + "]")
    return s


def validate(c):
    if type(c) is not dict:
        raise ConfigError("config.json must hold a JSON object")
    ident(c.get("node_id"), "node_id")
    ident(c.get("site"), "site")
    sec = c.get("secret_hex")
    if type(sec) is not str or len(sec) < 32 or len(sec) % 2 or any(ch not in "0123456789abcdef" for ch in sec):
        raise ConfigError("secret_hex must be lowercase hex of at least 16 bytes (32 digits)")
    m = c.get("mqtt")
    if type(m) is not dict:
        raise ConfigError("mqtt must be an object with host and port")
    text(m, "host", None, "mqtt.host", 1, 253)
    m["tls"] = bool(m.get("tls", False))
    m["port"] = integer(m, "port", 1, 65535, 8883 if m["tls"] else 1883, "mqtt.port")
    m["keepalive_s"] = integer(m, "keepalive_s", 10, 3600, 60, "mqtt.keepalive_s")
    for k in ("user", "password"):
        if m.get(k) is not None:
            text(m, k, None, "mqtt." + k)
    w = c.setdefault("wifi", {})
    if type(w) is not dict or (w and (type(w.get("ssid")) is not str or type(w.get("password", "")) is not str)):
        raise ConfigError("wifi must be an object with ssid and password")
    c["ntp_host"] = text(c, "ntp_host", "pool.ntp.org")
    c["sample_interval_s"] = integer(c, "sample_interval_s", 10, 86400, 300)
    c["uplink_every"] = integer(c, "uplink_every", 1, 288, 1)
    c["deep_sleep"] = bool(c.get("deep_sleep", True))
    c["watchdog_s"] = integer(c, "watchdog_s", 10, 3600, 120)
    c["ack_timeout_s"] = integer(c, "ack_timeout_s", 1, 120, 10)
    if c["watchdog_s"] < 2 * c["ack_timeout_s"] + 10:
        raise ConfigError("watchdog_s must be at least 2 x ack_timeout_s + 10")
    c["uplink_attempts"] = integer(c, "uplink_attempts", 1, 20, 3)
    c["window"] = integer(c, "window", 1, 32, 4)
    c["reconnect_initial_ms"] = integer(c, "reconnect_initial_ms", 100, 60000, 1000)
    b = c.setdefault("buffer", {})
    if type(b) is not dict:
        raise ConfigError("buffer must be an object")
    b["dir"] = text(b, "dir", "buf", "buffer.dir")
    b["segment_bytes"] = integer(b, "segment_bytes", 2048, 65536, 16384, "buffer.segment_bytes")
    b["max_segments"] = integer(b, "max_segments", 2, 1024, 16, "buffer.max_segments")
    sensors = c.get("sensors")
    if type(sensors) is not list or not sensors:
        raise ConfigError("sensors must be a non-empty list")
    ids = []
    for i, s in enumerate(sensors):
        ids.append(_sensor(s, i)["id"])
    if len(set(ids)) != len(ids):
        raise ConfigError("sensor ids must be unique")
    return c


def load(path="config.json"):
    try:
        with open(path) as f:
            c = json.load(f)
    except OSError:
        raise ConfigError(path + " is missing: write it with `carbonlink provision`") from None
    except ValueError:
        raise ConfigError(path + " is not valid JSON") from None
    return validate(c)
