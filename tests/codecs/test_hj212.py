"""HJ 212-2017 codec: frames, CRC, field validation, code table and readings."""

from __future__ import annotations

import pytest

from carbonlink.codecs.hj212.codec import (
    MAX_DATA_LEN,
    Hj212Error,
    Packet,
    Reason,
    check_frame,
    crc16,
    crc_text,
    data_packet,
    data_packets,
    decode_frame,
    frame,
    make_flag,
    parse_data,
    reply_packet,
)
from carbonlink.codecs.hj212.readings import CODES, packet_to_readings, parse_point, point_name
from carbonlink.kernel.wire import Quality, parse_ts

# The worked example of HJ 212-2017 (§6.3, "set real-time data interval"), CRC as printed there.
STD_DATA = b"QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&"
STD_FRAME = b"##0101" + STD_DATA + b"1C80\r\n"
MN = "010000A8900016F000169DC0"


def crc_by_the_rules(data: bytes) -> int:
    """HJ 212-2017 Appendix A, written out bit by bit as the standard describes it."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ byte
        for _ in range(8):
            lsb = crc & 1
            crc >>= 1
            if lsb:
                crc ^= 0xA001
    return crc


def modbus_crc(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def test_standard_example_crc_and_frame() -> None:
    assert len(STD_DATA) == 101
    assert crc_text(STD_DATA) == "1C80"
    assert frame(STD_DATA) == STD_FRAME
    p = decode_frame(STD_FRAME)
    assert (p.qn, p.st, p.cn, p.pw, p.mn, p.flag) == ("20160801085857223", "32", "1062", "100000", MN, 5)
    assert p.version == 1 and p.reply_requested and not p.split
    assert p.cp_fields() == {"RtdInterval": "30"}
    assert p.encode() == STD_FRAME


def test_hand_built_realtime_packet() -> None:
    # Built by hand from the rules: data segment, its length in 4 digits, CRC by the bitwise loop.
    data = (b"QN=20240315103000123;ST=31;CN=2011;PW=123456;MN=CEMS0001;Flag=5;"
            b"CP=&&DataTime=20240315103000;a21026-Rtd=12.3,a21026-Flag=N;a19001-Rtd=6.5,a19001-Flag=C&&")
    raw = b"##%04d" % len(data) + data + b"%04X" % crc_by_the_rules(data) + b"\r\n"
    p = decode_frame(raw)
    assert p.cn == "2011" and p.mn == "CEMS0001"
    conv = packet_to_readings(p, "stack-1")
    ts = parse_ts("2024-03-15T02:30:00.000Z")  # DataTime is China Standard Time (UTC+8)
    got = {(r.point, r.value, r.unit, r.quality, r.ts_ms) for r in conv.readings}
    assert got == {("so2", 12.3, "mg/m³", Quality.NORMAL, ts), ("o2", 6.5, "%", Quality.CALIBRATION, ts)}
    assert conv.skipped == []


@pytest.mark.parametrize("data", [STD_DATA, b"", b"1", b"QN=1;CP=&&&&", bytes(range(256))])
def test_table_crc_matches_the_bitwise_rule_and_is_not_modbus(data: bytes) -> None:
    assert crc16(data) == crc_by_the_rules(data)
    if data:
        assert crc16(data) != modbus_crc(data)


def test_flag_bits() -> None:
    assert make_flag(1) == 4 and make_flag(1, reply=True) == 5
    assert make_flag(1, split=True) == 6 and make_flag(1, reply=True, split=True) == 7
    assert make_flag(2, reply=True) == 9  # a later revision only changes the version number
    with pytest.raises(Hj212Error):
        make_flag(64)


def _data(**override: str) -> bytes:
    fields = {"QN": "20240315103000123", "ST": "31", "CN": "2011", "PW": "123456", "MN": "CEMS0001", "Flag": "5"}
    fields.update(override)
    head = ";".join(f"{k}={v}" for k, v in fields.items() if v != "")
    return (head + ";CP=&&DataTime=20240315103000;a21026-Rtd=1.5,a21026-Flag=N&&").encode()


@pytest.mark.parametrize("override, reason", [
    ({"QN": "2024"}, Reason.QN),
    ({"QN": "20241315103000123"}, Reason.QN),  # month 13
    ({"ST": "3"}, Reason.ST),
    ({"ST": ""}, Reason.ST),
    ({"CN": "20x1"}, Reason.CN),
    ({"PW": "1234567"}, Reason.PW),
    ({"MN": "A" * 25}, Reason.MN),
    ({"MN": ""}, Reason.MN),
    ({"Flag": "x"}, Reason.FLAG),
    ({"Flag": "256"}, Reason.FLAG),
    ({"Flag": "7"}, Reason.FLAG),  # split bit without PNUM/PNO
    ({"Foo": "1"}, Reason.FORMAT),
])
def test_header_validation_names_the_field(override: dict[str, str], reason: Reason) -> None:
    with pytest.raises(Hj212Error) as ei:
        parse_data(_data(**override))
    assert ei.value.reason is reason


def test_split_packets_need_pnum_and_pno() -> None:
    p = parse_data(_data(Flag="7", PNUM="3", PNO="2"))
    assert p.split and (p.pnum, p.pno) == (3, 2)
    with pytest.raises(Hj212Error, match="PNO"):
        parse_data(_data(Flag="7", PNUM="2", PNO="3"))


@pytest.mark.parametrize("data, reason", [
    (b"QN=20240315103000123;ST=31;CN=2011;PW=1;MN=A;Flag=4", Reason.CP),  # no CP
    (b"ST=31;CN=2011;PW=1;MN=A;Flag=4;CP=&&a=1", Reason.CP),  # CP not closed
    (b"CP=&&a=1&&;ST=31", Reason.FORMAT),  # CP not last
    (b"ST=31;CN=2011;PW=1;MN=A;CP=&&a=1;;b=2&&", Reason.CP),  # empty group
    (b"ST=31;CN=2011;PW=1;MN=A;CP=&&a=1,a=2&&", Reason.CP),  # duplicate key
    (b"ST=31;CN=2011;PW=1;MN=A;CP=&&a==1&&", Reason.CP),
    (b"ST=31;CN=2011;PW=1;MN=A;CP=&&a=1&&b=2&&", Reason.CP),
    (b"ST=31;CN=2011;PW=1;MN=A;CP=&&a=\xff&&", Reason.FORMAT),
    (b"ST=31;CN=2011;PW=1;MN=A;CP=&&a=#&&", Reason.FORMAT),
    (b"ST=31;CN=2011;PW=1;CP=&&&&", Reason.MN),  # MN missing
])
def test_data_segment_errors(data: bytes, reason: Reason) -> None:
    with pytest.raises(Hj212Error) as ei:
        parse_data(data)
    assert ei.value.reason is reason


def test_minimal_and_lenient_forms() -> None:
    p = parse_data(b"ST=31;CN=2011;PW=1;MN=A;CP=&&&&")  # no QN, no Flag (2005-era units)
    assert p.qn is None and p.flag is None and not p.reply_requested and p.cp == ()
    p = parse_data(b"MN=A;PW=1;CN=2011;ST=31;CP=&&DataTime=20240101000000;&&")  # any order, trailing ';'
    assert p.cp_fields() == {"DataTime": "20240101000000"}


@pytest.mark.parametrize("raw, reason", [
    (b"#0101" + STD_DATA + b"1C80\r\n", Reason.GARBAGE),
    (STD_FRAME[:-1], Reason.TRUNCATED),
    (STD_FRAME[:50], Reason.TRUNCATED),
    (STD_FRAME[:4], Reason.TRUNCATED),
    (STD_FRAME.replace(b"1C80", b"1C81"), Reason.CRC),
    (STD_FRAME.replace(b"1C80", b"1c80"), Reason.CRC),  # the standard prints uppercase hex
    (STD_FRAME.replace(b"##0101", b"##0100"), Reason.LENGTH),
    (STD_FRAME.replace(b"##0101", b"##01a1"), Reason.LENGTH),
    (b"##1025" + b"x" * 1025 + b"0000\r\n", Reason.LENGTH),
    (STD_FRAME + b"\r\n", Reason.LENGTH),
])
def test_frame_errors(raw: bytes, reason: Reason) -> None:
    with pytest.raises(Hj212Error) as ei:
        decode_frame(raw)
    assert ei.value.reason is reason


def test_bad_crc_keeps_the_header_for_a_9011() -> None:
    with pytest.raises(Hj212Error) as ei:
        check_frame(STD_FRAME.replace(b"1C80", b"0000"))
    assert ei.value.qn_rtn == 9 and ei.value.header["QN"] == "20160801085857223"
    reply = reply_packet(ei.value.header, "9011", cp=[("QnRtn", str(ei.value.qn_rtn))])
    assert reply.data_segment() == (b"QN=20160801085857223;ST=91;CN=9011;PW=100000;MN=010000A8900016F000169DC0;"
                                    b"Flag=4;CP=&&QnRtn=9&&")


def test_data_reply_is_the_standard_9014() -> None:
    p = decode_frame(STD_FRAME)
    assert reply_packet(p, "9014").data_segment() == (
        b"QN=20160801085857223;ST=91;CN=9014;PW=100000;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&")


def test_encoder_refuses_oversize_and_splits() -> None:
    values = {code: {"Avg": "1.5", "Min": "1.0", "Max": "2.0", "Cou": "3.25", "Flag": "N"} for code in CODES}
    big = data_packet(cn="2051", mn=MN, pw="123456", datatime="20240101000000", values=values | {
        f"a9{i:04d}": {"Avg": "1"} for i in range(20)})
    with pytest.raises(Hj212Error) as ei:
        big.encode()
    assert ei.value.reason is Reason.LENGTH
    qns = iter(f"2024010100000{i:04d}" for i in range(100))
    parts = data_packets(cn="2051", mn=MN, pw="123456", datatime="20240101000000", values=values,
                         next_qn=lambda: next(qns))
    assert len(parts) >= 2
    merged: dict[str, str] = {}
    for part in parts:
        raw = part.encode()
        assert len(raw) <= MAX_DATA_LEN + 12 and decode_frame(raw) == part
        assert part.cp_fields()["DataTime"] == "20240101000000"
        merged |= part.cp_fields()
    assert len({p.qn for p in parts}) == len(parts)
    assert merged == {"DataTime": "20240101000000"} | {
        f"{c}-{s}": v for c, f in values.items() for s, v in f.items()}


def test_code_table_units() -> None:
    assert CODES["a21026"].name == "so2" and CODES["a21026"].unit == "mg/m³" and CODES["a21026"].cou_unit == "kg"
    assert CODES["a00000"].unit == "m³/s" and CODES["a00000"].cou_unit == "m³"
    assert CODES["a19001"].unit == "%" and CODES["a19001"].cou_unit is None
    assert {CODES[c].name for c in ("a01011", "a01012", "a01013", "a01014")} == {
        "velocity", "temp", "pressure", "moisture"}


@pytest.mark.parametrize("cn, suffix, point", [
    ("2011", "Rtd", "so2"), ("2011", "ZsRtd", "so2_zs"), ("2051", "Avg", "so2_avg_1m"),
    ("2061", "Max", "so2_max_1h"), ("2031", "Cou", "so2_cou_1d"), ("2061", "ZsMin", "so2_zs_min_1h"),
    ("2011", "Avg", None), ("2051", "Rtd", None), ("2021", "Rtd", None),
])
def test_point_naming_rule_and_inverse(cn: str, suffix: str, point: str | None) -> None:
    assert point_name(CODES["a21026"], suffix, cn) == point
    if point:
        assert parse_point(point) == (CODES["a21026"], suffix, cn)


def _packet(cn: str, cp: str) -> Packet:
    return parse_data(f"QN=20240315103000123;ST=31;CN={cn};PW=123456;MN=M1;Flag=5;CP=&&{cp}&&".encode())


def test_hourly_packet_to_readings_with_flags_and_totals() -> None:
    p = _packet("2061", "DataTime=20240315100000;a21026-Avg=10.5,a21026-Min=8,a21026-Max=13.25,a21026-Cou=1.2,"
                        "a21026-Flag=M;a00000-Avg=100,a00000-Cou=360000,a00000-Flag=N;a19001-Avg=6.1,a19001-Flag=D")
    conv = packet_to_readings(p, "stack-1")
    got = {r.point: (r.value, r.unit, r.quality.value) for r in conv.readings}
    assert got == {"so2_avg_1h": (10.5, "mg/m³", "M"), "so2_min_1h": (8.0, "mg/m³", "M"),
                   "so2_max_1h": (13.25, "mg/m³", "M"), "so2_cou_1h": (1.2, "kg", "M"),
                   "flow_avg_1h": (100.0, "m³/s", "N"), "flow_cou_1h": (360000.0, "m³", "N"),
                   "o2_avg_1h": (6.1, "%", "D")}
    assert {r.ts_ms for r in conv.readings} == {parse_ts("2024-03-15T02:00:00.000Z")}


@pytest.mark.parametrize("cp, why", [
    ("a99999-Rtd=1", "not in the code table"),
    ("a21026-Rtd=1,a21026-Flag=X", "data flag"),
    ("a21026-Rtd=1e5", "plain decimal"),
    ("a21026-Rtd=nan", "plain decimal"),
    ("a21026-Rtd=", "plain decimal"),
    ("a21026-Avg=1", "does not belong"),
    ("a21026-Rtd=1234567890123456", "plain decimal"),
])
def test_fields_that_cannot_be_mapped_are_left_out_with_a_reason(cp: str, why: str) -> None:
    conv = packet_to_readings(_packet("2011", f"DataTime=20240315100000;{cp}"), "d")
    assert conv.readings == [] and len(conv.skipped) == 1 and why in conv.skipped[0][1]


def test_cou_of_a_code_without_totals_is_left_out() -> None:
    conv = packet_to_readings(_packet("2051", "DataTime=20240315100000;a19001-Cou=1"), "d")
    assert conv.readings == [] and "no total" in conv.skipped[0][1]


@pytest.mark.parametrize("cn, cp, reason", [
    ("2011", "a21026-Rtd=1", Reason.CP),  # no DataTime
    ("2011", "DataTime=20241301000000;a21026-Rtd=1", Reason.CP),
    ("2011", "DataTime=2024;a21026-Rtd=1", Reason.CP),
    ("1062", "RtdInterval=30", Reason.CN),
])
def test_packets_that_cannot_become_readings(cn: str, cp: str, reason: Reason) -> None:
    with pytest.raises(Hj212Error) as ei:
        packet_to_readings(_packet(cn, cp), "d")
    assert ei.value.reason is reason


def test_utc_offset_is_configurable() -> None:
    conv = packet_to_readings(_packet("2011", "DataTime=20240315100000;a21026-Rtd=1"), "d", utc_offset_minutes=0)
    assert conv.readings[0].ts_ms == parse_ts("2024-03-15T10:00:00.000Z")
