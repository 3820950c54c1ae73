"""HJ 212-2017 frames: encode, decode, validate, and cut a TCP stream into frames.

Frame (HJ 212-2017 §6.3): ``##`` + 4-digit decimal length of the data segment
(0000-1024) + data segment + CRC16 as 4 uppercase hex digits + ``\\r\\n``.
The data segment is ``QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;[PNUM=…;PNO=…;]CP=&&…&&``;
CP holds groups separated by ``;``, each of ``key=value`` items separated by ``,``.

The CRC is NOT the Modbus CRC (see ``crc16``). Flag = (version<<2)|(D<<1)|A:
A asks for a reply, D marks a split packet; the 2017 revision is version 1, and
the version is a parameter everywhere so the 2025 revision only needs a new number.

Strictness: anything that does not follow the rules raises ``Hj212Error`` whose
``reason`` names what is wrong (and maps to a 9011 QnRtn code). The only leniency:
header fields may come in any order, QN and Flag may be absent (2005-era units),
and one trailing ``;`` inside CP is ignored. ``#`` may not appear in a data
segment, so a stream framer can always resynchronise on ``##``.

Pollutant codes and the conversion of data packets to readings: ``readings.py``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

MAX_DATA_LEN = 1024  # HJ 212-2017 §6.3.1: data segment 0-1024 bytes
FRAME_OVERHEAD = 2 + 4 + 4 + 2  # "##", length, CRC, CR LF
MAX_FRAME = MAX_DATA_LEN + FRAME_OVERHEAD
VERSION_2017 = 1
REPLY_ST = "91"  # system interaction

CN_REALTIME, CN_MINUTE, CN_HOURLY, CN_DAILY = "2011", "2051", "2061", "2031"
DATA_CNS = frozenset({CN_REALTIME, CN_MINUTE, CN_HOURLY, CN_DAILY})
CN_REQUEST_REPLY, CN_EXEC_RESULT, CN_NOTICE_REPLY, CN_DATA_REPLY = "9011", "9012", "9013", "9014"
PERIOD = {CN_MINUTE: "1m", CN_HOURLY: "1h", CN_DAILY: "1d"}


class Reason(enum.StrEnum):
    """What is wrong with an input; the value is the counter name."""

    GARBAGE = "garbage"  # bytes outside any frame
    TRUNCATED = "truncated"  # a frame that stops before its declared end
    LENGTH = "length"  # length field not 4 digits, over 1024, or not matching the frame
    CRC = "crc"
    FORMAT = "format"  # data segment structure (separators, characters, fields)
    QN = "qn"
    ST = "st"
    CN = "cn"  # malformed or not handled here
    PW = "pw"
    MN = "mn"
    FLAG = "flag"  # Flag, PNUM, PNO, protocol version
    CP = "cp"


# 9011 QnRtn codes (HJ 212-2017 table 7): 3 PW, 4 MN, 5 ST, 6 Flag, 7 QN, 8 CN, 9 CRC, 100 unknown.
QNRTN = {Reason.PW: 3, Reason.MN: 4, Reason.ST: 5, Reason.FLAG: 6, Reason.QN: 7, Reason.CN: 8, Reason.CRC: 9}
QNRTN_READY, QNRTN_REJECTED, QNRTN_UNKNOWN = 1, 2, 100


class Hj212Error(ValueError):
    """An input that breaks HJ 212; ``reason`` says which rule, the text says how.

    ``header`` holds what could still be read of the header (QN, MN, Flag, …), so a
    server can answer a packet it refuses with a 9011 naming the fault.
    """

    def __init__(self, reason: Reason, message: str, header: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.header: dict[str, str] = dict(header or {})

    @property
    def qn_rtn(self) -> int:
        return QNRTN.get(self.reason, QNRTN_UNKNOWN)


# --- CRC ------------------------------------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """HJ 212-2017 Appendix A CRC over the data segment.

    Per byte: crc = (crc >> 8) ^ byte, then eight shifts right with 0xA001 on a
    carried-out 1. The ``crc >> 8`` (not ``crc ^ byte``) is what makes it differ
    from the Modbus CRC-16. This is the table-driven form of that loop.
    """
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ b
        crc = (crc >> 8) ^ _CRC_TABLE[crc & 0xFF]
    return crc


def crc_text(data: bytes) -> str:
    return f"{crc16(data):04X}"


# --- flags ----------------------------------------------------------------------------------


def make_flag(version: int = VERSION_2017, *, reply: bool = False, split: bool = False) -> int:
    if not 0 <= version <= 63:
        raise Hj212Error(Reason.FLAG, f"protocol version {version} must be 0-63 (six bits of Flag)")
    return (version << 2) | (int(split) << 1) | int(reply)


# --- packets --------------------------------------------------------------------------------

CpGroup = tuple[tuple[str, str], ...]

_QN_RE = re.compile(r"^\d{17}$")
_ST_RE = re.compile(r"^\d{2}$")
_CN_RE = re.compile(r"^\d{4}$")
_PW_RE = re.compile(r"^[A-Za-z0-9]{1,6}$")
_MN_RE = re.compile(r"^[A-Za-z0-9]{1,24}$")
_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_VALUE_RE = re.compile(r"^[A-Za-z0-9.+-]{0,64}$")
_HEADER_ORDER = ("QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO")
_REQUIRED = ("ST", "CN", "PW", "MN")


def _check_qn(qn: str, hdr: Mapping[str, str]) -> None:
    if not _QN_RE.match(qn):
        raise Hj212Error(Reason.QN, f"QN {qn!r} must be 17 digits yyyyMMddHHmmssSSS", hdr)
    try:
        datetime.strptime(qn[:14], "%Y%m%d%H%M%S")
    except ValueError:
        raise Hj212Error(Reason.QN, f"QN {qn!r} is not a valid date and time", hdr) from None


@dataclass(frozen=True)
class Packet:
    """One HJ 212 data segment, validated on construction."""

    st: str
    cn: str
    pw: str
    mn: str
    qn: str | None = None
    flag: int | None = None
    pnum: int | None = None
    pno: int | None = None
    cp: tuple[CpGroup, ...] = ()

    def __post_init__(self) -> None:
        hdr = self.header_fields()
        if self.qn is not None:
            _check_qn(self.qn, hdr)
        if not _ST_RE.match(self.st):
            raise Hj212Error(Reason.ST, f"ST {self.st!r} must be 2 digits (31 air source, 91 system)", hdr)
        if not _CN_RE.match(self.cn):
            raise Hj212Error(Reason.CN, f"CN {self.cn!r} must be 4 digits", hdr)
        if not _PW_RE.match(self.pw):
            raise Hj212Error(Reason.PW, f"PW must be 1-6 letters or digits (it has {len(self.pw)} characters)", hdr)
        if not _MN_RE.match(self.mn):
            raise Hj212Error(Reason.MN, f"MN {self.mn!r} must be 1-24 letters or digits", hdr)
        if self.flag is not None and not 0 <= self.flag <= 255:
            raise Hj212Error(Reason.FLAG, f"Flag {self.flag} must be 0-255", hdr)
        split = self.flag is not None and bool(self.flag & 2)
        if split != (self.pnum is not None) or split != (self.pno is not None):
            raise Hj212Error(Reason.FLAG, "PNUM and PNO must be present exactly when Flag has the split bit (2)",
                             hdr)
        if self.pnum is not None and self.pno is not None and not 1 <= self.pno <= self.pnum <= 9999:
            raise Hj212Error(Reason.FLAG, f"need 1 <= PNO ({self.pno}) <= PNUM ({self.pnum}) <= 9999", hdr)
        seen: set[str] = set()
        for group in self.cp:
            if not group:
                raise Hj212Error(Reason.CP, "CP has an empty group (';;')", hdr)
            for key, value in group:
                if not _KEY_RE.match(key):
                    raise Hj212Error(Reason.CP, f"CP key {key!r} is not a field name", hdr)
                if not _VALUE_RE.match(value):
                    raise Hj212Error(Reason.CP, f"CP value {value!r} of {key} has characters HJ 212 does not use",
                                     hdr)
                if key in seen:
                    raise Hj212Error(Reason.CP, f"CP field {key} appears twice", hdr)
                seen.add(key)

    def header_fields(self) -> dict[str, str]:
        h = {"QN": self.qn} if self.qn is not None else {}
        h |= {"ST": self.st, "CN": self.cn, "PW": self.pw, "MN": self.mn}
        if self.flag is not None:
            h["Flag"] = str(self.flag)
        return h

    # Flag bits
    @property
    def version(self) -> int | None:
        return None if self.flag is None else self.flag >> 2

    @property
    def reply_requested(self) -> bool:
        return self.flag is not None and bool(self.flag & 1)

    @property
    def split(self) -> bool:
        return self.flag is not None and bool(self.flag & 2)

    def cp_fields(self) -> dict[str, str]:
        return {k: v for group in self.cp for k, v in group}

    def data_segment(self) -> bytes:
        parts = []
        if self.qn is not None:
            parts.append(f"QN={self.qn}")
        parts += [f"ST={self.st}", f"CN={self.cn}", f"PW={self.pw}", f"MN={self.mn}"]
        if self.flag is not None:
            parts.append(f"Flag={self.flag}")
        if self.pnum is not None:
            parts += [f"PNUM={self.pnum}", f"PNO={self.pno}"]
        cp = ";".join(",".join(f"{k}={v}" for k, v in g) for g in self.cp)
        parts.append(f"CP=&&{cp}&&")
        return ";".join(parts).encode("ascii")

    def encode(self) -> bytes:
        return frame(self.data_segment())


def frame(data: bytes) -> bytes:
    """Wrap a data segment: ##, length, data, CRC, CR LF."""
    if len(data) > MAX_DATA_LEN:
        raise Hj212Error(Reason.LENGTH, f"data segment is {len(data)} bytes; HJ 212 allows at most {MAX_DATA_LEN}:"
                         " send fewer fields per packet")
    return b"##%04d%s%s\r\n" % (len(data), data, crc_text(data).encode())


# --- decoding -------------------------------------------------------------------------------


def peek_header(data: bytes) -> dict[str, str]:
    """Best-effort header fields of a data segment that failed validation (for 9011 replies)."""
    head = data.split(b"CP=", 1)[0]
    out: dict[str, str] = {}
    for item in head.split(b";"):
        key, sep, value = item.partition(b"=")
        k = key.decode("ascii", "replace")
        if sep and k in _HEADER_ORDER and k not in out:
            out[k] = value.decode("ascii", "replace")
    return out


def _parse_int(name: str, text: str, reason: Reason, hdr: Mapping[str, str]) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 4):
        raise Hj212Error(reason, f"{name} {text!r} must be a number of at most 4 digits", hdr)
    return int(text)


def parse_data(data: bytes) -> Packet:
    """Validate and parse a data segment (the bytes between the length and the CRC)."""
    hdr = peek_header(data)
    if len(data) > MAX_DATA_LEN:
        raise Hj212Error(Reason.LENGTH, f"data segment is {len(data)} bytes, over {MAX_DATA_LEN}", hdr)
    if any(b < 0x20 or b > 0x7E or b == 0x23 for b in data):  # printable ASCII, no '#'
        raise Hj212Error(Reason.FORMAT, "data segment has a byte outside printable ASCII or a '#'", hdr)
    text = data.decode("ascii")
    at = text.find("CP=&&")
    if at < 0:
        raise Hj212Error(Reason.CP, "no CP=&&…&& field", hdr)
    if at == 0 or text[at - 1] != ";":
        raise Hj212Error(Reason.FORMAT, "CP must come last, after the header fields and a ';'", hdr)
    if not text.endswith("&&") or len(text) < at + 7:
        raise Hj212Error(Reason.CP, "CP must end the data segment with '&&'", hdr)
    fields: dict[str, str] = {}
    for item in text[: at - 1].split(";"):
        key, sep, value = item.partition("=")
        if not sep:
            raise Hj212Error(Reason.FORMAT, f"header item {item!r} is not key=value", hdr)
        if key not in _HEADER_ORDER:
            raise Hj212Error(Reason.FORMAT, f"unknown header field {key!r} (expected {', '.join(_HEADER_ORDER)})",
                             hdr)
        if key in fields:
            raise Hj212Error(Reason.FORMAT, f"header field {key} appears twice", hdr)
        fields[key] = value
    for key in _REQUIRED:
        if key not in fields:
            raise Hj212Error(Reason[key], f"header field {key} is missing", hdr)
    flag = _parse_int("Flag", fields["Flag"], Reason.FLAG, hdr) if "Flag" in fields else None
    pnum = _parse_int("PNUM", fields["PNUM"], Reason.FLAG, hdr) if "PNUM" in fields else None
    pno = _parse_int("PNO", fields["PNO"], Reason.FLAG, hdr) if "PNO" in fields else None
    body = text[at + 5 : -2]
    if "&&" in body:
        raise Hj212Error(Reason.CP, "'&&' inside CP", hdr)
    groups: list[CpGroup] = []
    raw_groups = body.split(";") if body else []
    if len(raw_groups) > 1 and raw_groups[-1] == "":
        raw_groups.pop()  # a trailing ';' some units write
    for g in raw_groups:
        items = []
        for item in g.split(","):
            key, sep, value = item.partition("=")
            if not sep or "=" in value:
                raise Hj212Error(Reason.CP, f"CP item {item!r} is not key=value", hdr)
            items.append((key, value))
        groups.append(tuple(items))
    return Packet(st=fields["ST"], cn=fields["CN"], pw=fields["PW"], mn=fields["MN"], qn=fields.get("QN"),
                  flag=flag, pnum=pnum, pno=pno, cp=tuple(groups))


def check_frame(raw: bytes) -> bytes:
    """Check a whole frame's envelope and CRC; return its data segment."""
    if not raw.startswith(b"##"):
        raise Hj212Error(Reason.GARBAGE, "a frame starts with '##'")
    digits = raw[2:6]
    if len(digits) < 4:
        raise Hj212Error(Reason.TRUNCATED, f"frame of {len(raw)} bytes ends inside the length field")
    if not (digits.isascii() and digits.isdigit()):
        raise Hj212Error(Reason.LENGTH, f"length field {digits!r} is not 4 decimal digits")
    n = int(digits)
    if n > MAX_DATA_LEN:
        raise Hj212Error(Reason.LENGTH, f"declared data length {n} is over {MAX_DATA_LEN}")
    want = n + FRAME_OVERHEAD
    data = raw[6 : 6 + n]
    if len(raw) < want:
        raise Hj212Error(Reason.TRUNCATED, f"frame is {len(raw)} bytes, its length field says {want}",
                         peek_header(data))
    if len(raw) > want or raw[-2:] != b"\r\n":
        raise Hj212Error(Reason.LENGTH, f"no CR LF where the length field ({n}) says the frame ends",
                         peek_header(data))
    got = raw[6 + n : 10 + n]
    expected = crc_text(data)
    if got != expected.encode():
        raise Hj212Error(Reason.CRC, f"CRC {got.decode('ascii', 'replace')!r} does not match the data"
                         f" (expected {expected}; HJ 212 CRC, not Modbus)", peek_header(data))
    return data


def decode_frame(raw: bytes) -> Packet:
    """Decode one complete frame (with ## and CR LF)."""
    return parse_data(check_frame(raw))


# --- stream framing -------------------------------------------------------------------------

FramerEvent = bytes | Hj212Error


class StreamFramer:
    """Cuts a TCP byte stream into frames, resynchronising on ``##`` after any error.

    Memory stays bounded: a candidate frame is at most ``MAX_FRAME`` bytes, and
    bytes before a ``##`` are dropped as they arrive. Returned frames have a
    checked envelope and CRC; errors are returned, never raised.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._garbage = 0  # bytes dropped since the last report
        self._quiet = False  # drop the rest of a frame already reported

    def feed(self, data: bytes) -> list[FramerEvent]:
        self._buf += data
        return self._drain(final=False)

    def close(self) -> list[FramerEvent]:
        """End of stream: report a partial frame as truncated, recover frames behind it."""
        out = self._drain(final=True)
        self._buf.clear()
        return out

    def _drop(self, n: int, out: list[FramerEvent]) -> None:
        if n <= 0:
            return
        del self._buf[:n]
        if not self._quiet:
            self._garbage += n

    def _report_garbage(self, out: list[FramerEvent]) -> None:
        if self._garbage:
            out.append(Hj212Error(Reason.GARBAGE, f"{self._garbage} bytes outside any frame"))
            self._garbage = 0

    def _fail(self, err: Hj212Error, out: list[FramerEvent]) -> None:
        self._report_garbage(out)
        out.append(err)
        del self._buf[:1]  # step past this '##' and look for the next one
        self._quiet = True

    def _drain(self, *, final: bool) -> list[FramerEvent]:
        out: list[FramerEvent] = []
        buf = self._buf
        while True:
            start = buf.find(b"##")
            if start < 0:
                keep = 1 if (buf.endswith(b"#") and not final) else 0
                self._drop(len(buf) - keep, out)
                if final:
                    self._report_garbage(out)
                break
            self._drop(start, out)
            if len(buf) < 6:
                if final:
                    self._fail(Hj212Error(Reason.TRUNCATED, "stream ended inside a frame header"), out)
                    continue
                break
            digits = bytes(buf[2:6])
            if not (digits.isascii() and digits.isdigit()):
                self._fail(Hj212Error(Reason.LENGTH, f"length field {digits!r} is not 4 decimal digits"), out)
                continue
            n = int(digits)
            if n > MAX_DATA_LEN:
                self._fail(Hj212Error(Reason.LENGTH, f"declared data length {n} is over {MAX_DATA_LEN}"), out)
                continue
            want = n + FRAME_OVERHEAD
            # A '##' after the header means a new frame began: this one was cut short.
            nxt = buf.find(b"##", 2, min(len(buf), want + 1))
            if nxt >= 0:
                self._fail(Hj212Error(Reason.TRUNCATED, f"a new frame starts {nxt} bytes into a frame of {want}",
                                      peek_header(bytes(buf[6:nxt]))), out)
                continue
            if len(buf) < want:
                if final:
                    self._fail(Hj212Error(Reason.TRUNCATED, f"stream ended {want - len(buf)} bytes before the"
                                          " end of a frame", peek_header(bytes(buf[6:]))), out)
                    continue
                break
            candidate = bytes(buf[:want])
            try:
                check_frame(candidate)
            except Hj212Error as exc:
                self._fail(exc, out)
                continue
            self._quiet = False
            self._report_garbage(out)
            del buf[:want]
            out.append(candidate)
        return out


def data_packet(*, cn: str, mn: str, pw: str, datatime: str, values: Mapping[str, Mapping[str, str]],
                st: str = "31", qn: str | None = None, version: int = VERSION_2017, reply: bool = True) -> Packet:
    """Build a data upload. ``values`` maps code → {suffix: text}, e.g. {"a21026": {"Rtd": "12.3", "Flag": "N"}}."""
    groups: list[CpGroup] = [(("DataTime", datatime),)]
    for code, fields in values.items():
        groups.append(tuple((f"{code}-{suffix}", v) for suffix, v in fields.items()))
    return Packet(st=st, cn=cn, pw=pw, mn=mn, qn=qn, flag=make_flag(version, reply=reply), cp=tuple(groups))


def data_packets(*, cn: str, mn: str, pw: str, datatime: str, values: Mapping[str, Mapping[str, str]],
                 next_qn: Callable[[], str] | None = None, st: str = "31", version: int = VERSION_2017,
                 reply: bool = True) -> list[Packet]:
    """Like ``data_packet`` but split into as many self-contained packets (each with DataTime) as
    the 1024-byte limit needs. Each gets its own QN from ``next_qn`` so replies can be matched."""

    def build(vals: Mapping[str, Mapping[str, str]]) -> Packet:
        return data_packet(cn=cn, mn=mn, pw=pw, datatime=datatime, values=vals, st=st,
                           qn=next_qn() if next_qn else None, version=version, reply=reply)

    base = len(data_packet(cn=cn, mn=mn, pw=pw, datatime=datatime, values={}, st=st, qn="20000101000000000",
                           version=version, reply=reply).data_segment())
    return [build(chunk) for chunk in split_values(values.items(), MAX_DATA_LEN - base)]


def reply_packet(request: Packet | Mapping[str, str], cn: str, *, version: int = VERSION_2017,
                 cp: Sequence[tuple[str, str]] = ()) -> Packet:
    """9011/9014 answer to a request: same QN, PW and MN, ST=91, no reply asked."""
    if isinstance(request, Packet):
        qn, pw, mn = request.qn, request.pw, request.mn
    else:
        qn, pw, mn = request.get("QN"), request.get("PW", ""), request.get("MN", "")
    return Packet(st=REPLY_ST, cn=cn, pw=pw, mn=mn, qn=qn, flag=make_flag(version),
                  cp=(tuple(cp),) if cp else ())


def split_values(items: Iterable[tuple[str, Mapping[str, str]]], budget: int) -> list[dict[str, dict[str, str]]]:
    """Pack code groups into chunks whose CP text stays under ``budget`` bytes."""
    chunks: list[dict[str, dict[str, str]]] = [{}]
    used = 0
    for code, fields in items:
        size = sum(len(code) + len(s) + len(v) + 3 for s, v in fields.items()) + 1
        if chunks[-1] and used + size > budget:
            chunks.append({})
            used = 0
        chunks[-1][code] = dict(fields)
        used += size
    return [c for c in chunks if c]
