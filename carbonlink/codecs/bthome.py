"""BTHome v2 advertisement codec: service data 0xFCD2, plain or AES-CCM encrypted.

Written from the BTHome v2 format (bthome.io/format; facts in shared/domain/facts.md
section 4). ``data`` everywhere is the service data *after* the 16-bit UUID, as
bleak hands it over: ``[info byte][MAC, 6 reversed bytes, if bit 1][objects]``,
and when encrypted ``[ciphertext][counter u32 LE][MIC 4 bytes]``.

An object whose length we do not know stops the parse: the bytes after it cannot
be split into objects, so the whole advert is refused (``BTHomeError``) rather
than half-read. Values are never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

UUID16 = 0xFCD2
UUID_BYTES = b"\xd2\xfc"  # little-endian, as in the advert and the nonce
UUID128 = "0000fcd2-0000-1000-8000-00805f9b34fb"  # the key bleak uses in AdvertisementData.service_data

INFO_ENCRYPTED = 0x01
INFO_MAC_INCLUDED = 0x02
INFO_TRIGGER = 0x04
VERSION = 2
MIC_LEN = 4
COUNTER_LEN = 4


class BTHomeError(ValueError):
    """An advert we refuse; ``reason`` is a short counter name (e.g. ``unknown_object``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ObjectType:
    name: str
    length: int
    signed: bool
    factor: float
    unit: str

    @property
    def decimals(self) -> int:
        # Rounding to the factor's decimals removes float noise (2195 * 0.01 = 21.950000000000003).
        text = f"{self.factor:.6f}".rstrip("0")
        return len(text.split(".")[1]) if "." in text else 0


# Fixed-length numeric objects of BTHome v2 (id: name, bytes, signed, factor, unit). Checked against
# bthome-ble's const.py MEAS_TYPES. Ids not listed here (binary sensors, events, text, raw...) end the parse.
OBJECTS: dict[int, ObjectType] = {
    0x00: ObjectType("packet_id", 1, False, 1, ""),
    0x01: ObjectType("battery", 1, False, 1, "%"),
    0x02: ObjectType("temperature", 2, True, 0.01, "°C"),
    0x03: ObjectType("humidity", 2, False, 0.01, "%"),
    0x04: ObjectType("pressure", 3, False, 0.01, "hPa"),
    0x05: ObjectType("illuminance", 3, False, 0.01, "lx"),
    0x08: ObjectType("dew_point", 2, True, 0.01, "°C"),
    0x09: ObjectType("count", 1, False, 1, ""),
    0x0C: ObjectType("voltage", 2, False, 0.001, "V"),
    0x0D: ObjectType("pm25", 2, False, 1, "µg/m³"),
    0x0E: ObjectType("pm10", 2, False, 1, "µg/m³"),
    0x12: ObjectType("co2", 2, False, 1, "ppm"),
    0x13: ObjectType("tvoc", 2, False, 1, "µg/m³"),
    0x14: ObjectType("moisture", 2, False, 0.01, "%"),
    0x2E: ObjectType("humidity", 1, False, 1, "%"),
    0x2F: ObjectType("moisture", 1, False, 1, "%"),
    0x3D: ObjectType("count", 2, False, 1, ""),
    0x3E: ObjectType("count", 4, False, 1, ""),
    0x40: ObjectType("distance", 2, False, 1, "mm"),
    0x41: ObjectType("distance", 2, False, 0.1, "m"),
    0x45: ObjectType("temperature", 2, True, 0.1, "°C"),
    0x4A: ObjectType("voltage", 2, False, 0.1, "V"),
    0x5A: ObjectType("count", 2, True, 1, ""),
    0x5B: ObjectType("count", 4, True, 1, ""),
    0x5F: ObjectType("precipitation", 2, False, 0.1, "mm"),
}


@dataclass(frozen=True, slots=True)
class Measurement:
    object_id: int
    name: str
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class Advert:
    """One decoded advert. ``packet_id`` is object 0x00 if present; ``counter`` only when encrypted."""

    encrypted: bool
    trigger: bool
    mac: str | None  # the MAC carried inside the advert (info bit 1), else None
    packet_id: int | None
    counter: int | None
    measurements: tuple[Measurement, ...]
    ordered: bool  # objects came in ascending id order, as the format asks


class RawAdvert(NamedTuple):
    """One received advert as a source hands it to the driver (bleak, or the forest simulator)."""

    mac: str  # the sender address as the radio reports it
    data: bytes  # service data after the UUID
    rssi: int | None = None
    uuid16: int | None = UUID16  # the service data's 16-bit UUID; None when the advert carried no service data


def advertised_mac(data: bytes) -> str | None:
    """The MAC inside the advert (info bit 1), which identifies devices whose radio address rotates."""
    if len(data) >= 7 and data[0] & INFO_MAC_INCLUDED:
        return format_mac(data[1:7][::-1])
    return None


def mac_bytes(mac: str) -> bytes:
    """'AA:BB:CC:DD:EE:FF' (or without separators) to 6 bytes in reading order."""
    text = mac.replace(":", "").replace("-", "")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise ValueError(f"MAC {mac!r} is not 6 hex bytes like AA:BB:CC:DD:EE:FF")
    return raw


def format_mac(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)


def nonce(mac: bytes, info: int, counter: bytes) -> bytes:
    # BTHome v2: MAC (6, reading order) + UUID D2 FC + device info byte + counter (4) = 13 bytes.
    return mac + UUID_BYTES + bytes([info]) + counter


def decode(data: bytes, mac: str | None = None, key: bytes | None = None) -> Advert:
    """Decode BTHome v2 service data. ``mac`` (the sender's address) is needed to decrypt.

    A device configured with a key must send encrypted adverts: a plaintext one is refused
    (a downgrade), as is an encrypted one without a key or with a MIC that does not verify.
    """
    if not data:
        raise BTHomeError("truncated", "empty service data")
    info = data[0]
    version = info >> 5
    if version != VERSION:
        raise BTHomeError("version", f"BTHome version {version} in info byte 0x{info:02x}; only v2 is read")
    encrypted = bool(info & INFO_ENCRYPTED)
    body = data[1:]
    inner_mac: str | None = None
    if info & INFO_MAC_INCLUDED:
        if len(body) < 6:
            raise BTHomeError("truncated", "MAC flag set but fewer than 6 bytes follow")
        inner_mac = format_mac(body[:6][::-1])  # sent least significant byte first
        body = body[6:]
    counter: int | None = None
    if encrypted:
        if key is None:
            raise BTHomeError("no_key", "encrypted advert but no key is configured for this device")
        try:
            sender = mac_bytes(inner_mac or mac or "")
        except ValueError:  # e.g. macOS gives CoreBluetooth UUIDs, not MACs
            raise BTHomeError("no_mac", f"encrypted advert needs the sender's MAC for the nonce, got {mac!r}") from None
        if len(body) < COUNTER_LEN + MIC_LEN:
            raise BTHomeError("truncated", "encrypted advert shorter than counter + MIC")
        cipher, ctr, mic = body[:-8], body[-8:-4], body[-4:]
        try:
            body = AESCCM(key, tag_length=MIC_LEN).decrypt(nonce(sender, info, ctr), cipher + mic, None)
        except InvalidTag:
            raise BTHomeError("mic", "MIC check failed: wrong key or tampered advert") from None
        counter = int.from_bytes(ctr, "little")
    elif key is not None:
        raise BTHomeError("downgrade", "plaintext advert from a device that has a key")
    packet_id, measurements, ordered = _objects(body)
    return Advert(encrypted, bool(info & INFO_TRIGGER), inner_mac, packet_id, counter, measurements, ordered)


def _objects(body: bytes) -> tuple[int | None, tuple[Measurement, ...], bool]:
    out: list[Measurement] = []
    packet_id: int | None = None
    ordered = True
    last = -1
    i = 0
    while i < len(body):
        oid = body[i]
        typ = OBJECTS.get(oid)
        if typ is None:
            raise BTHomeError("unknown_object", f"object id 0x{oid:02x} at byte {i} is not one we can read")
        raw = body[i + 1 : i + 1 + typ.length]
        if len(raw) < typ.length:
            raise BTHomeError("truncated", f"object 0x{oid:02x} needs {typ.length} bytes, {len(raw)} left")
        ordered = ordered and oid >= last
        last = oid
        value = int.from_bytes(raw, "little", signed=typ.signed)
        if oid == 0x00:
            packet_id = value
        else:
            out.append(Measurement(oid, typ.name, float(round(value * typ.factor, typ.decimals)), typ.unit))
        i += 1 + typ.length
    return packet_id, tuple(out), ordered


def encode(
    objects: Sequence[tuple[int, float]],
    *,
    key: bytes | None = None,
    mac: str | None = None,
    counter: int = 0,
    include_mac: bool = False,
    trigger: bool = False,
) -> bytes:
    """Build service data (after the UUID) from ``(object id, value)`` pairs, sorted by id.

    With ``key`` the objects are AES-CCM encrypted; ``mac`` is then required (it is in the nonce).
    """
    info = VERSION << 5
    if key is not None:
        info |= INFO_ENCRYPTED
    if include_mac:
        info |= INFO_MAC_INCLUDED
    if trigger:
        info |= INFO_TRIGGER
    payload = bytearray()
    for oid, value in sorted(objects, key=lambda o: o[0]):
        typ = OBJECTS.get(oid)
        if typ is None:
            raise ValueError(f"object id 0x{oid:02x} is not in OBJECTS")
        raw = round(value / typ.factor)
        try:
            payload += bytes([oid]) + raw.to_bytes(typ.length, "little", signed=typ.signed)
        except OverflowError:
            raise ValueError(f"{typ.name} = {value} does not fit object 0x{oid:02x}") from None
    head = bytes([info])
    if include_mac or key is not None:
        if mac is None:
            raise ValueError("a MAC is needed to include it or to encrypt")
        raw_mac = mac_bytes(mac)
        if include_mac:
            head += raw_mac[::-1]
    if key is None:
        return head + bytes(payload)
    if not 0 <= counter < 2**32:
        raise ValueError("counter must fit 4 bytes")
    ctr = counter.to_bytes(COUNTER_LEN, "little")
    sealed = AESCCM(key, tag_length=MIC_LEN).encrypt(nonce(raw_mac, info, ctr), bytes(payload), None)
    return head + sealed[:-MIC_LEN] + ctr + sealed[-MIC_LEN:]
