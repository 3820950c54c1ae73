"""Hypothesis fuzz of the BTHome decoder and the driver's advert handling."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carbonlink.codecs.bthome import OBJECTS, BTHomeError, RawAdvert, decode, encode
from carbonlink.edge.drivers.ble import BleBthomeDevice, BleBthomeDriver

KEY = bytes(range(16))
MAC = "D2:FC:00:00:00:01"
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def object_ids_walked(body: bytes) -> list[int] | None:
    """The object ids a correct parser meets in ``body``, or None if it must refuse it."""
    ids, i = [], 0
    while i < len(body):
        typ = OBJECTS.get(body[i])
        if typ is None or i + 1 + typ.length > len(body):
            return None
        ids.append(body[i])
        i += 1 + typ.length
    return ids


@FUZZ
@given(st.binary(max_size=40), st.sampled_from([None, KEY]))
def test_random_bytes_decode_or_refuse(data: bytes, key: bytes | None) -> None:
    try:
        adv = decode(data, MAC, key)
    except BTHomeError:
        return
    # Accepted: every object is one we know, and no value came from an id we do not know.
    assert data[0] >> 5 == 2
    assert all(m.object_id in OBJECTS for m in adv.measurements)
    if not adv.encrypted:
        body = data[7:] if data[0] & 2 else data[1:]
        walked = object_ids_walked(body)
        assert walked is not None and [i for i in walked if i != 0] == [m.object_id for m in adv.measurements]


@FUZZ
@given(st.binary(min_size=1, max_size=30), st.integers(0, 255))
def test_plaintext_with_an_unknown_id_never_yields_values(prefix: bytes, unknown: int) -> None:
    if unknown in OBJECTS:
        unknown = 0xF0
    data = b"\x40" + prefix + bytes([unknown])
    walked = object_ids_walked(data[1:])
    try:
        adv = decode(data)
    except BTHomeError:
        assert walked is None
        return
    assert walked is not None  # the unknown byte was swallowed as a known object's value
    assert [m.object_id for m in adv.measurements] == [i for i in walked if i != 0]


values = st.lists(st.tuples(st.sampled_from([0x01, 0x02, 0x03, 0x0C, 0x14, 0x2F, 0x40, 0x5B]),
                            st.integers(0, 60)), max_size=8)


@FUZZ
@given(values, st.integers(0, 2**32 - 1), st.integers(0, 39), st.integers(0, 7))
def test_any_tampered_bit_of_an_encrypted_advert_is_refused(objs: list[tuple[int, int]], counter: int,
                                                            byte: int, bit: int) -> None:
    data = bytearray(encode(objs, key=KEY, mac=MAC, counter=counter))
    assert [(m.object_id, m.value) for m in decode(bytes(data), MAC, KEY).measurements] == [
        (i, float(v)) for i, v in sorted(objs, key=lambda o: o[0])]
    data[byte % len(data)] ^= 1 << bit
    try:
        decode(bytes(data), MAC, KEY)
    except BTHomeError:
        return
    raise AssertionError("a tampered encrypted advert was accepted")


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([MAC, "AA:BB:CC:DD:EE:FF"]), st.binary(max_size=30),
                          st.sampled_from([0xFCD2, 0xFE95, None])), max_size=20))
def test_driver_never_raises_on_garbage(adverts: list[tuple[str, bytes, int | None]]) -> None:
    dev = BleBthomeDevice.model_validate({"id": "f", "driver": "ble_bthome", "sensors": [{"mac": MAC, "id": "t"}]})
    drv = BleBthomeDriver("f", dev)
    for mac, data, uuid in adverts:
        for r in drv.handle(RawAdvert(mac, data, -50, uuid), 1_000):
            assert r.device == "t" and r.quality == "N"
