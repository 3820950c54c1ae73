"""`carbonlink hj212 …`: decode and encode HJ 212 packets to debug installations."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from carbonlink.codecs.hj212.codec import (
    DATA_CNS,
    MAX_DATA_LEN,
    VERSION_2017,
    CpGroup,
    Hj212Error,
    Packet,
    Reason,
    check_frame,
    crc_text,
    make_flag,
    parse_data,
)
from carbonlink.codecs.hj212.readings import format_datatime, make_qn, packet_to_readings
from carbonlink.kernel.wire import format_ts

app = typer.Typer(help="HJ 212-2017 packets: decode what a unit sends, encode test packets.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

_HINTS = {
    Reason.CRC: "the CRC is HJ 212's (crc>>8 ^ byte per byte, poly 0xA001), not Modbus CRC-16; check the unit's"
                " protocol setting",
    Reason.LENGTH: "the 4 digits after ## must be the byte count of the data segment (QN=… up to the closing &&)",
    Reason.TRUNCATED: "paste the whole packet, from ## to the 4 CRC digits",
    Reason.GARBAGE: "a packet starts with ##",
}


def _normalise(text: str) -> bytes:
    """Shell-pasted packets: allow a literal '\\r\\n', a missing CR LF, or surrounding whitespace."""
    text = text.strip().replace("\\r", "\r").replace("\\n", "\n").rstrip("\r\n")
    try:
        return text.encode("ascii") + b"\r\n"
    except UnicodeEncodeError:
        raise Hj212Error(Reason.FORMAT, "the packet has non-ASCII characters; HJ 212 packets are ASCII") from None


def _fail(exc: Hj212Error, json_out: bool, extra: dict[str, Any] | None = None) -> None:
    hint = _HINTS.get(exc.reason, "")
    if json_out:
        print(json.dumps({"ok": False, "error": str(exc), "reason": exc.reason.value, "hint": hint} | (extra or {}),
                         ensure_ascii=False))
    else:
        err.print(f"[red]error:[/red] {exc}")
        if hint:
            err.print(f"hint: {hint}")
    raise typer.Exit(1)


def _packet_json(p: Packet) -> dict[str, Any]:
    return {"header": p.header_fields() | ({"PNUM": str(p.pnum), "PNO": str(p.pno)} if p.split else {}),
            "flag": None if p.flag is None else {"value": p.flag, "version": p.version,
                                                  "reply_requested": p.reply_requested, "split": p.split},
            "cp": [dict(g) for g in p.cp]}


@app.command()
def decode(
    packet: Annotated[str, typer.Argument(help="the packet, from ## to the CRC (quote it: it contains ';' and '&')")],
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    device: Annotated[str, typer.Option(help="device id to give the readings")] = "hj212",
    utc_offset_minutes: Annotated[int, typer.Option(help="time zone of DataTime (China: 480)")] = 480,
) -> None:
    """Check a packet's length and CRC, show its fields, CP and the readings it becomes."""
    try:
        raw = _normalise(packet)
        data = raw[6:-6]
        crc = {"given": raw[-6:-2].decode("ascii", "replace"), "computed": crc_text(data)}
        try:
            check_frame(raw)
        except Hj212Error as exc:
            if exc.reason is not Reason.CRC:
                raise
            extra: dict[str, Any] = {"crc": crc | {"ok": False}}
            try:  # still show what the packet says, marked as refused
                extra |= _packet_json(parse_data(data))
            except Hj212Error:
                pass
            if not json_out:
                err.print(f"CRC given {crc['given']}, computed {crc['computed']}")
            _fail(exc, json_out, extra)
        p = parse_data(data)
    except Hj212Error as exc:
        _fail(exc, json_out)
        return
    result: dict[str, Any] = {"ok": True, "length": len(data), "crc": crc | {"ok": True}} | _packet_json(p)
    if p.cn in DATA_CNS:
        try:
            conv = packet_to_readings(p, device, utc_offset_minutes=utc_offset_minutes)
        except Hj212Error as exc:
            _fail(exc, json_out, result | {"ok": False})
            return
        result["readings"] = [r.to_wire() for r in conv.readings]
        result["skipped"] = [{"field": k, "why": why} for k, why in conv.skipped]
    if json_out:
        print(json.dumps(result, ensure_ascii=False))
        return
    out.print(f"[green]valid[/green]: length {len(data)}, CRC {crc['given']} ok")
    t = Table("field", "value", title="header")
    for k, v in result["header"].items():
        t.add_row(k, v)
    if p.flag is not None:
        t.add_row("Flag bits", f"version {p.version}, reply {'asked' if p.reply_requested else 'not asked'}"
                  f"{', split' if p.split else ''}")
    out.print(t)
    t = Table("CP field", "value", title="CP")
    for group in p.cp:
        for k, v in group:
            t.add_row(k, v)
    out.print(t)
    if "readings" in result:
        t = Table("point", "value", "unit", "quality", "ts (UTC)", title=f"readings of {device}")
        for r in conv.readings:
            t.add_row(r.point, f"{r.value:g}", r.unit, r.quality.value, format_ts(r.ts_ms))
        out.print(t)
        for k, why in conv.skipped:
            out.print(f"[yellow]left out[/yellow] {k}: {why}")


def _groups(values: list[str], datatime: str | None) -> tuple[CpGroup, ...]:
    groups: dict[str, list[tuple[str, str]]] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise Hj212Error(Reason.CP, f"--value {item!r} must be KEY=VALUE, e.g. a21026-Rtd=12.3")
        code = key.split("-", 1)[0] if "-" in key else key
        groups.setdefault(code, []).append((key, value))
    head: list[CpGroup] = [(("DataTime", datatime),)] if datatime else []
    return tuple(head + [tuple(g) for g in groups.values()])


@app.command()
def encode(
    cn: Annotated[str, typer.Option(help="command code: 2011 real-time, 2051 minute, 2061 hour, 2031 day")],
    mn: Annotated[str, typer.Option(help="unit id (MN), up to 24 letters or digits")],
    pw: Annotated[str, typer.Option(help="password (PW), up to 6 letters or digits")],
    value: Annotated[list[str] | None, typer.Option(
        "--value", help="CP field, repeatable: a21026-Rtd=12.3 a21026-Flag=N")] = None,
    st: Annotated[str, typer.Option(help="system type: 31 air pollution source, 32 water, 91 system")] = "31",
    qn: Annotated[str | None, typer.Option(help="request id yyyyMMddHHmmssSSS (default: now)")] = None,
    datatime: Annotated[str | None, typer.Option(
        help="DataTime yyyyMMddHHmmss (default: now for data CNs, none otherwise)")] = None,
    reply: Annotated[bool, typer.Option("--reply/--no-reply", help="set Flag's A bit (ask for an answer)")] = True,
    version: Annotated[int, typer.Option(help="protocol version in Flag (1 = HJ 212-2017)")] = VERSION_2017,
    utc_offset_minutes: Annotated[int, typer.Option(help="time zone of the default QN/DataTime")] = 480,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Build a valid packet (length, CRC, CR LF) from fields."""
    now = time.time_ns() // 1_000_000
    if datatime is None and cn in DATA_CNS:
        datatime = format_datatime(now, utc_offset_minutes)
    try:
        p = Packet(st=st, cn=cn, pw=pw, mn=mn, qn=qn or make_qn(now, utc_offset_minutes),
                   flag=make_flag(version, reply=reply), cp=_groups(value or [], datatime))
        raw = p.encode()
    except Hj212Error as exc:
        if exc.reason is Reason.LENGTH:
            exc = Hj212Error(Reason.LENGTH, f"{exc} (limit {MAX_DATA_LEN}): split the values over two packets")
        _fail(exc, json_out)
        return
    text = raw.decode("ascii")
    if json_out:
        print(json.dumps({"ok": True, "packet": text, "length": len(raw) - 12, "crc": text[-6:-2]}))
    else:
        print(text.rstrip("\r\n"))  # the unit sends CR LF after the CRC
