# The CarbonLink wire format for MicroPython: the mirror of carbonlink/wire.py.
# Held to the same vectors (tests/vectors/). MicroPython's json.dumps cannot sort
# keys and formats floats its own way, so the canonical bytes are written by hand
# and numbers are rendered with integer arithmetic only.
import hashlib
import struct
from binascii import hexlify

SIG = 15  # significant digits of the canonical number rule
MAX_ABS = 10 ** 15
MAX_SEQ = 2 ** 53 - 1
QUALITY = "NFMSDCTB"  # HJ 212-2017 data flags
TS_MAX = 253402300800000
# A float32 build (the ESP32) holds about 7 significant digits: render no more than it has.
FLOAT_SIG = SIG if (1.0 + 1e-12) != 1.0 else 7


class WireError(ValueError):
    pass


# --- numbers ------------------------------------------------------------------------------
# A value is an int, a float, or a fixed-point pair (mantissa, decimals): 2835, 2 is 28.35.
# Sensors hand over fixed-point pairs so a float32 never touches the value.


def _float_exact(x):
    # IEEE 754 double bits -> (negative, digits, fractional places), exact: x = digits / 10**places.
    b = struct.unpack("<Q", struct.pack("<d", x))[0]
    neg = b >> 63
    e = (b >> 52) & 0x7FF
    m = b & 0xFFFFFFFFFFFFF
    if e == 0x7FF:
        raise WireError("value must be finite")
    if e:
        m |= 1 << 52
        e -= 1075
    else:
        e = -1074
    if e >= 0:
        return neg, m << e, 0
    # m / 2**k == m * 5**k / 10**k
    return neg, m * 5 ** -e, -e


def _render(neg, d, p, sig):
    # Round to `sig` significant digits, half to even on the exact value (as CPython's format does).
    n = len(str(d)) if d else 0
    if n > sig:
        drop = n - sig
        q, r = divmod(d, 10 ** drop)
        half = 5 * 10 ** (drop - 1)
        if r > half or (r == half and q & 1):
            q += 1
        d = q * 10 ** drop
    if d >= MAX_ABS * 10 ** p:
        raise WireError("value is out of range (|value| < 1e15)")
    if d == 0:
        return "0"
    s = str(d)
    if p:
        if len(s) <= p:
            s = "0" * (p - len(s) + 1) + s
        i = len(s) - p
        frac = s[i:]
        k = len(frac)
        while k and frac[k - 1] == "0":
            k -= 1
        s = s[:i] + ("." + frac[:k] if k else "")
    return "-" + s if neg else s


def number(x):
    """Canonical text of an int, a float or a (mantissa, decimals) pair."""
    t = type(x)
    if t is bool:
        raise WireError("value must be a number")
    if t is int:
        if -MAX_ABS < x < MAX_ABS:
            return str(x)
        raise WireError("value is out of range (|value| < 1e15)")
    if t is float:
        neg, d, p = _float_exact(x)
        return _render(neg, d, p, FLOAT_SIG)
    if t is tuple and len(x) == 2 and type(x[0]) is int and type(x[1]) is int and 0 <= x[1] <= 20:
        m = x[0]
        return _render(m < 0, -m if m < 0 else m, x[1], SIG)
    raise WireError("value must be a number")


# --- timestamps (proleptic Gregorian, UTC; civil-from-days with integers only) ------------------


def _civil(z):
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


def _days(y, m, d):
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def format_ts(ms):
    s, milli = divmod(ms, 1000)
    days, s = divmod(s, 86400)
    y, mo, d = _civil(days)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (y, mo, d, s // 3600, s // 60 % 60, s % 60, milli)


def parse_ts(t):
    try:
        if len(t) != 24 or t[4] != "-" or t[7] != "-" or t[10] != "T" or t[13] != ":" or t[16] != ":" \
                or t[19] != "." or t[23] != "Z":
            raise ValueError
        y, mo, d = int(t[0:4]), int(t[5:7]), int(t[8:10])
        h, mi, s, ms = int(t[11:13]), int(t[14:16]), int(t[17:19]), int(t[20:23])
    except (ValueError, TypeError, IndexError):
        raise WireError("timestamp is not YYYY-MM-DDTHH:MM:SS.mmmZ") from None
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 60) or _civil(_days(y, mo, d)) != (y, mo, d):
        raise WireError("timestamp is not a valid date")
    return ((_days(y, mo, d) * 24 + h) * 60 + mi) * 60000 + s * 1000 + ms


# --- text, readings, batches ------------------------------------------------------------


def check_text(name, v, lo=1, hi=128):
    if type(v) is not str or not lo <= len(v) <= hi:
        raise WireError(name + " must be %d-%d characters" % (lo, hi))
    for c in v:
        o = ord(c)
        if o < 0x20 or o == 0x7F or c == '"' or c == "\\":
            raise WireError(name + " has a quote, backslash or control character")
    return v


def reading(device, point, ts_ms, value, unit, quality="N"):
    """Validate one reading; returns its canonical JSON (bytes), what a batch is built from."""
    check_text("device", device)
    check_text("point", point)
    check_text("unit", unit, 0, 32)
    if type(quality) is not str or len(quality) != 1 or quality not in QUALITY:
        raise WireError("quality must be one of " + QUALITY)
    if type(ts_ms) is not int or not 0 <= ts_ms < TS_MAX:
        raise WireError("timestamp must be integer milliseconds between 1970 and 9999")
    return ('{"device":"%s","point":"%s","quality":"%s","ts":"%s","unit":"%s","value":%s}' % (
        device, point, quality, format_ts(ts_ms), unit, number(value))).encode()


def _parts(gateway, seq, created_ms, readings, alg):
    # The canonical bytes as pieces: hashed and joined without ever holding an extra copy (RAM).
    check_text("gateway", gateway)
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise WireError("seq must be an integer from 1 to 2^53-1")
    if not readings:
        raise WireError("readings must be a non-empty list")
    parts = [('{"alg":"%s","created":"%s","gateway":"%s","readings":[' % (
        alg, format_ts(created_ms), gateway)).encode()]
    for i, r in enumerate(readings):
        if i:
            parts.append(b",")
        parts.append(r)
    parts.append(b'],"seq":%d' % seq)
    return parts


def signing_bytes(gateway, seq, created_ms, readings, alg="hmac-sha256"):
    """Canonical bytes of a batch without its signature; readings are canonical bytes from reading()."""
    parts = _parts(gateway, seq, created_ms, readings, alg)
    parts.append(b',"v":1}')
    return b"".join(parts)


def with_sig(body, sig):
    """The published message: ``sig`` in its sorted place, between seq and v."""
    tail = b',"v":1}'
    if not body.endswith(tail):
        raise WireError("not a version 1 batch")
    return body[: -len(tail)] + b',"sig":"' + sig + b'"' + tail


def hmac_sha256(key, parts):
    # RFC 2104 over SHA-256 (block size 64): MicroPython ships hashlib but no hmac. parts: bytes or a list.
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + b"\x00" * (64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    for p in ([parts] if isinstance(parts, (bytes, bytearray)) else parts):
        inner.update(p)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def sign(body, secret):
    """HMAC-SHA256 of the canonical bytes (or their pieces), lowercase hex (bytes)."""
    return hexlify(hmac_sha256(secret, body))


def batch_parts(gateway, seq, created_ms, readings, secret):
    """Build and sign a batch as the pieces of the message as published: the flash buffer writes
    them one after another, so a 64 KB heap never needs a block of the whole message."""
    parts = _parts(gateway, seq, created_ms, readings, "hmac-sha256")
    parts.append(b',"v":1}')
    sig = sign(parts, secret)
    parts[-1] = b',"sig":"' + sig + b'","v":1}'
    return parts


def batch(gateway, seq, created_ms, readings, secret):
    """Build and sign a batch; returns the message bytes as published."""
    return b"".join(batch_parts(gateway, seq, created_ms, readings, secret))
