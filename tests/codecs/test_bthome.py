"""The BTHome v2 codec against adverts built by hand from the format, and AES-CCM round trips."""

from __future__ import annotations

import pytest
from bthome_ble.bthome_v2_encryption import encrypt_payload

from carbonlink.codecs.bthome import BTHomeError, advertised_mac, decode, encode

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MAC = "54:48:E6:8F:80:A5"


def values(data: bytes, **kw: object) -> dict[str, float]:
    return {m.name: m.value for m in decode(data, **kw).measurements}  # type: ignore[arg-type]


def test_plain_advert_by_hand() -> None:
    # info 0x40 (v2, plain); packet id 9; battery 97 %; temp 0x09CA = 25.06 °C; humidity 0x13BF = 50.55 %
    adv = decode(bytes.fromhex("40 00 09 01 61 02 CA 09 03 BF 13"))
    assert (adv.encrypted, adv.trigger, adv.mac, adv.packet_id, adv.counter, adv.ordered) == (
        False, False, None, 9, None, True)
    assert [(m.name, m.value, m.unit) for m in adv.measurements] == [
        ("battery", 97.0, "%"), ("temperature", 25.06, "°C"), ("humidity", 50.55, "%")]


@pytest.mark.parametrize("hexdata, name, want", [
    ("40 02 18 FC", "temperature", -10.0),  # s16: 0xFC18 = -1000 → -10.00 °C
    ("40 04 13 8A 01", "pressure", 1008.83),  # u24 ×0.01 hPa
    ("40 0C 02 0C", "voltage", 3.074),  # u16 ×0.001 V
    ("40 12 E2 04", "co2", 1250.0),
    ("40 14 02 0C", "moisture", 30.74),  # u16 ×0.01 %
    ("40 2F 23", "moisture", 35.0),  # u8 %
    ("40 40 0C 00", "distance", 12.0),  # mm
    ("40 41 4E 00", "distance", 7.8),  # u16 ×0.1 m
    ("40 5B 87 13 00 00", "count", 4999.0),  # s32
    ("40 5B FF FF FF FF", "count", -1.0),
])
def test_objects_by_hand(hexdata: str, name: str, want: float) -> None:
    assert values(bytes.fromhex(hexdata)) == {name: want}


def test_trigger_and_mac_included() -> None:
    data = bytes.fromhex("46 A5 80 8F E6 48 54 00 01 01 50")  # info: v2, MAC follows (reversed), trigger
    adv = decode(data)
    assert adv.trigger and adv.mac == MAC and adv.packet_id == 1 and values(data) == {"battery": 80.0}
    assert advertised_mac(data) == MAC and advertised_mac(bytes.fromhex("40 01 50")) is None


def test_out_of_order_objects_are_flagged_not_refused() -> None:
    adv = decode(bytes.fromhex("40 03 BF 13 02 CA 09"))
    assert not adv.ordered and {m.name for m in adv.measurements} == {"temperature", "humidity"}


@pytest.mark.parametrize("hexdata, reason", [
    ("", "truncated"),
    ("20 02 CA 09", "version"),  # version 1 in a v2 UUID
    ("60 02 CA 09", "version"),  # version 3
    ("40 02 CA", "truncated"),  # temperature needs two bytes
    ("42 A5 80 8F", "truncated"),  # MAC flag but no MAC
    ("40 01 50 F0 01 02 02 CA 09", "unknown_object"),  # device type id 0xF0: length unknown to us
    ("40 3A 01", "unknown_object"),  # a button event
    ("41 00 01 02 03 04 05 06 07", "no_key"),
])
def test_refusals(hexdata: str, reason: str) -> None:
    with pytest.raises(BTHomeError) as err:
        decode(bytes.fromhex(hexdata), mac=MAC)
    assert err.value.reason == reason


def test_unknown_object_refuses_the_whole_advert() -> None:
    # Values before the unknown id are not returned either: a half-read advert would hide the gap.
    with pytest.raises(BTHomeError, match="0x3a"):
        decode(bytes.fromhex("40 01 50 02 CA 09 3A 01"))


def test_decrypts_an_advert_sealed_by_bthome_ble() -> None:
    # bthome-ble's own example encryptor: temperature 25.06 °C and humidity 50.55 %, counter 0x00112233.
    sealed = encrypt_payload(bytes.fromhex("02CA0903BF13"), bytes.fromhex("5448E68F80A5"), b"\xd2\xfc", b"\x41",
                             (1122867).to_bytes(4, "little"), KEY)
    adv = decode(sealed[2:], mac=MAC, key=KEY)  # drop the UUID: bleak hands over the data after it
    assert adv.encrypted and adv.counter == 1122867
    assert {m.name: m.value for m in adv.measurements} == {"temperature": 25.06, "humidity": 50.55}


def test_encryption_round_trip_and_wire_layout() -> None:
    objs = [(0x00, 7), (0x02, 21.5), (0x14, 33.3)]
    data = encode(objs, key=KEY, mac=MAC, counter=5)
    plain = encode(objs)
    assert data[0] == 0x41 and len(data) == len(plain) + 8  # ciphertext + counter (4) + MIC (4)
    assert data[-8:-4] == (5).to_bytes(4, "little") and data[1:-8] != plain[1:]
    adv = decode(data, mac=MAC, key=KEY)
    assert adv.packet_id == 7 and adv.counter == 5 and values(plain) == {m.name: m.value for m in adv.measurements}
    with_mac = encode(objs, key=KEY, mac=MAC, counter=6, include_mac=True)
    assert decode(with_mac, mac="00:00:00:00:00:01", key=KEY).mac == MAC  # the MAC inside wins for the nonce


@pytest.mark.parametrize("tamper", ["key", "mic", "counter", "cipher", "info", "mac"])
def test_wrong_key_or_tampering_is_refused(tamper: str) -> None:
    data = bytearray(encode([(0x00, 1), (0x02, 20.0)], key=KEY, mac=MAC, counter=42))
    key, mac = KEY, MAC
    if tamper == "key":
        key = bytes(16)
    elif tamper == "mic":
        data[-1] ^= 0x01
    elif tamper == "counter":
        data[-5] ^= 0x01
    elif tamper == "cipher":
        data[2] ^= 0x80
    elif tamper == "info":
        data[0] |= 0x04  # the info byte is in the nonce
    else:
        mac = "54:48:E6:8F:80:A6"
    with pytest.raises(BTHomeError) as err:
        decode(bytes(data), mac=mac, key=key)
    assert err.value.reason == "mic"


def test_plaintext_from_a_keyed_device_is_a_downgrade() -> None:
    with pytest.raises(BTHomeError) as err:
        decode(encode([(0x02, 20.0)]), mac=MAC, key=KEY)
    assert err.value.reason == "downgrade"


def test_encrypted_needs_a_real_mac() -> None:
    data = encode([(0x02, 20.0)], key=KEY, mac=MAC, counter=1)
    with pytest.raises(BTHomeError) as err:
        decode(data, mac="6F2D8B1C-0000-4B1E-9A51-7E8C2B5A3F10", key=KEY)  # a macOS CoreBluetooth id
    assert err.value.reason == "no_mac"


def test_encoder_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode([(0x01, 300)])
    with pytest.raises(ValueError, match="not in OBJECTS"):
        encode([(0x3A, 1)])
    with pytest.raises(ValueError, match="MAC"):
        encode([(0x01, 3)], key=KEY)
    assert encode([(0x14, 30.74), (0x00, 3)]) == bytes.fromhex("40 00 03 14 02 0C")  # sorted by id
