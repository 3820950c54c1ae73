"""The ingest's fast path: parse and check a batch without building a Reading object per value.

Two stages, tried in order:

1. Canonical bytes (what every CarbonLink gateway and node sends): one regular expression pass in C
   takes the batch apart into three keys and a value per reading, and the grammar checks the structure
   (field order, quality letters, timestamp digits, plain-decimal numbers). What repeats is checked once
   per distinct key and then cached: a (device, point, quality) key by the wire's identifier rule, a
   timestamp's second by the date rule, a (milliseconds, unit) tail by the unit rule. Python then only
   looks the keys up and turns the value text into a float: no JSON object, no struct, no Reading.
2. Anything else that is valid JSON: msgspec decodes into typed structs (types, required and unknown
   fields checked in C) and the rules are checked per reading.

``fast_parse`` accepts exactly what ``carbonlink.wire.parse_batch`` accepts and yields the same
values, but it only knows the common case: anything unusual (a broken rule, an odd type, a value
that needs normalising through Decimal) returns None and the caller falls back to ``parse_batch``,
which names the broken rule. Identifiers, units and timestamp seconds repeat from batch to batch,
so their checks are cached; the caches are bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from operator import add, itemgetter
from typing import Any, Literal

import msgspec

from carbonlink.kernel.wire import (
    HEX_RE,
    MAX_ABS_VALUE,
    MAX_READINGS_PER_BATCH,
    MAX_SEQ,
    QUALITY_CODES,
    TEXT_CHAR,
    TEXT_RE,
    TS_PATTERN,
    UNIT_RE,
    WIRE_VERSION,
    Quality,
    SigAlg,
    WireError,
    parse_ts,
)

from .store import Group, Row, group_rows

_ALGS = {a.value: a for a in SigAlg}
_QUALITY = {q.encode(): q for q in QUALITY_CODES}
_CACHE_MAX = 100_000
# Timestamps repeat within a poll (every point of a device shares one), not across a drain's hours of
# distinct milliseconds: a short cache keeps the hits and spares a worker ~20 MB of stale entries.
_STAMPS_MAX = 16_384
_MAX_TS = 253402300800000


@dataclass(slots=True)
class FastBatch:
    gateway: str
    seq: int
    created_ms: int
    alg: SigAlg
    sig: str
    # ``parse`` gives rows in batch order (the rules service feeds them to its engine so); ``parse_groups``
    # gives them grouped by (device, point, quality, unit) for the commit, and rows is then empty.
    rows: list[Row]
    groups: list[Group] | None = None

    @property
    def n(self) -> int:
        """How many readings the batch holds."""
        return len(self.rows) if self.groups is None else sum(len(g.ts) for g in self.groups)

    def signed_bytes(self, raw: bytes) -> bytes | None:
        """The bytes the signature covers when the sender sent canonical bytes (the normal case)."""
        member = f',"sig":"{self.sig}"'.encode()
        return raw.replace(member, b"") if raw.count(member) == 1 else None


_NUM = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]*[1-9])?"
_TXT = TEXT_CHAR.encode() + rb"+"  # the wire's identifier rule (its length is checked after the match)
_TS = TS_PATTERN.encode()
_CANON_HEAD = re.compile(
    rb'\{"alg":"(ed25519|hmac-sha256)","created":"(' + _TS + rb')",'
    rb'"gateway":"(' + _TXT + rb')","readings":\[')
_CANON_TAIL = re.compile(rb'\],"seq":([1-9][0-9]{0,15}),"sig":"([0-9a-f]{64}|[0-9a-f]{128})","v":1\}')
# A reading in three cached keys and its value. The grammar fixes the structure only: a text field is any
# run of bytes without a quote, and each distinct key is checked once (UTF-8, the wire's identifier or unit
# rule, a real second) when it is first seen, so the regular expression does no per-character class test.
#   "key": device, point and quality in one group ('D","point":"P","quality":"Q'); a text holds no quote,
#          so the first '","point":"' splits it;
#   "second": the timestamp up to its seconds, "tail": its milliseconds and the unit ('123Z","unit":"U').
_CANON_READING = re.compile(
    rb'\{"device":"([^"]*","point":"[^"]*","quality":"[' + "".join(Quality).encode() + rb'])",'
    rb'"ts":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})\.'
    rb'([0-9]{3}Z","unit":"[^"]*)","value":(' + _NUM + rb')\}')
_POINT_SEP = b'","point":"'
_QUALITY_SEP = b'","quality":"'
_UNIT_SEP = b'Z","unit":"'

_READING_START = b'{"device":"'
_COLUMNS = tuple(itemgetter(i) for i in range(4))
_FIRST, _SECOND = itemgetter(0), itemgetter(1)
# The same reading followed by what may follow it in the list: a comma before the next reading's start,
# or the end of the list.
_CANON_READINGS = re.compile(_CANON_READING.pattern + rb'(?:,(?=\{"device":")|\Z)')


def _second_ms(second: str) -> int | None:
    """Epoch ms of a "YYYY-MM-DDTHH:MM:SS" second, or None if it is no real date or out of range (uncached)."""
    try:
        base = parse_ts(second + ".000Z")
    except WireError:
        return None
    return base if 0 <= base < _MAX_TS else None


class FastParser:
    def __init__(self) -> None:
        self._texts: set[str] = set()
        self._units: set[str] = set()
        self._btexts: dict[bytes, str | None] = {}  # identifier bytes -> text (None: not a valid identifier)
        self._bunits: dict[bytes, str | None] = {}
        self._bkeys: dict[bytes, tuple[str, str, str]] = {}  # b'D","point":"P","quality":"Q' -> (D, P, Q)
        self._bseconds: dict[bytes, int] = {}  # b"YYYY-MM-DDTHH:MM:SS" -> epoch ms of that second
        self._btails: dict[bytes, tuple[int, str]] = {}  # b'123Z","unit":"U' -> (123, U)
        self._seconds: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> epoch ms of that second
        self._stamps: dict[str, int] = {}  # whole timestamps seen lately -> epoch ms

    def _ok_text(self, s: Any) -> bool:
        if s in self._texts:
            return True
        if type(s) is not str or not TEXT_RE.fullmatch(s):
            return False
        if len(self._texts) > _CACHE_MAX:
            self._texts.clear()
        self._texts.add(s)
        return True

    def _ok_unit(self, s: Any) -> bool:
        if s in self._units:
            return True
        if type(s) is not str or not UNIT_RE.fullmatch(s):
            return False
        if len(self._units) > _CACHE_MAX:
            self._units.clear()
        self._units.add(s)
        return True

    def _ts(self, s: Any) -> int | None:
        if type(s) is not str or len(s) != 24 or s[19] != "." or s[23] != "Z":
            return None
        milli = s[20:23]
        if not (milli.isascii() and milli.isdigit()):
            return None
        base = self._seconds.get(s[:19])
        if base is None:
            base = _second_ms(s[:19])
            if base is None:
                return None
            if len(self._seconds) > _CACHE_MAX:
                self._seconds.clear()
            self._seconds[s[:19]] = base
        return base + int(milli)

    def parse(self, raw: bytes) -> FastBatch | None:
        """The batch, or None when the fast path cannot vouch for it (call parse_batch then)."""
        fast = self._parse_canonical(raw)
        return fast if fast is not None else self._parse_json(raw)

    def _text_of(self, b: bytes, cache: dict[bytes, str | None], unit: bool = False) -> str | None:
        s = cache.get(b)
        if s is None and b not in cache:
            try:
                s = b.decode()
            except UnicodeDecodeError:
                s = None
            if s is not None and not (UNIT_RE if unit else TEXT_RE).fullmatch(s):
                s = None
            if len(cache) > _CACHE_MAX:
                cache.clear()
            cache[b] = s
        return s

    def _key_of(self, kb: bytes) -> tuple[str, str, str] | None:
        """Device, point and quality of a reading's key group, checked by the wire's rules (then cached)."""
        db, rest = kb.split(_POINT_SEP, 1)  # neither text holds a quote: the first separator is the one
        pb, qb = rest.split(_QUALITY_SEP, 1)
        d, p = self._text_of(db, self._btexts), self._text_of(pb, self._btexts)
        if d is None or p is None:
            return None
        if len(self._bkeys) > _CACHE_MAX:
            self._bkeys.clear()
        key = self._bkeys[kb] = (d, p, _QUALITY[qb])
        return key

    def _second_of(self, sb: bytes) -> int | None:
        """Epoch ms of a timestamp's second (a real date in range), then cached."""
        base = _second_ms(sb.decode())  # the grammar let only ASCII digits and separators through
        if base is None:
            return None
        if len(self._bseconds) > _CACHE_MAX:
            self._bseconds.clear()
        self._bseconds[sb] = base
        return base

    def _tail_of(self, tb: bytes) -> tuple[int, str] | None:
        """Milliseconds and unit of a reading's tail group, the unit checked by the wire's rule (then cached)."""
        u = self._text_of(tb[3 + len(_UNIT_SEP):], self._bunits, unit=True)
        if u is None:
            return None
        if len(self._btails) > _CACHE_MAX:
            self._btails.clear()
        tail = self._btails[tb] = (int(tb[:3]), u)
        return tail

    def _canonical(self, raw: bytes) -> tuple[FastBatch, list[tuple[bytes, bytes, bytes, bytes]]] | None:
        """The batch's envelope (no readings yet) and its readings' key, second, tail and value groups."""
        head = _CANON_HEAD.match(raw)
        tail = _CANON_TAIL.search(raw, len(raw) - 170) if head else None
        if head is None or tail is None or tail.end() != len(raw):
            return None
        body_start, body_end = head.end(), tail.start()
        seq = int(tail.group(1))
        if seq > MAX_SEQ:
            return None
        gateway = self._text_of(head.group(3), self._btexts)
        created = self._ts(head.group(2).decode())
        if gateway is None or created is None:
            return None
        # All readings in one C call (no match object each). They cover the list exactly, nothing skipped
        # between them: every match starts at a reading start ('{"device":"', which no text can hold, for
        # it has quotes) and ends at the end of the list or with a comma right before another start. If the
        # list opens with a start and there are as many matches as starts, every start opens a match, so
        # each match ends where the next begins and the last one at the end of the list.
        found = _CANON_READINGS.findall(raw, body_start, body_end)
        if not found or len(found) > MAX_READINGS_PER_BATCH or not raw.startswith(_READING_START, body_start) \
                or raw.count(_READING_START, body_start, body_end) != len(found):
            return None
        return FastBatch(gateway, seq, created, _ALGS[head.group(1).decode()], tail.group(2).decode(), []), found

    def _parse_canonical(self, raw: bytes) -> FastBatch | None:
        canonical = self._canonical(raw)
        if canonical is None:
            return None
        batch, found = canonical
        rows = batch.rows
        append = rows.append
        keys, seconds, tails, max_abs = self._bkeys, self._bseconds, self._btails, MAX_ABS_VALUE
        for kb, sb, tb, vb in found:
            key = keys.get(kb) or self._key_of(kb)
            base = seconds.get(sb)
            if base is None:
                base = self._second_of(sb)
            tl = tails.get(tb) or self._tail_of(tb)
            if key is None or base is None or tl is None:
                return None
            # Canonical numbers have at most 15 significant digits, so float() of the text is the value
            # the wire rounds to; a longer one goes the general way.
            if (len(vb) > 16 and len(vb.lstrip(b"-0.").replace(b".", b"")) > 15) or vb == b"-0":
                return None  # "-0" is not canonical (the wire writes 0)
            v = float(vb)
            if not -max_abs < v < max_abs:
                return None
            d, p, q = key
            ms, u = tl
            append((d, p, base + ms, v, u, q))
        return batch

    def parse_groups(self, raw: bytes) -> FastBatch | None:
        """As ``parse``, the readings grouped by (device, point, quality, unit) in ``groups`` (rows left empty)."""
        canonical = self._canonical(raw)
        if canonical is not None:
            batch, found = canonical
            groups = self._columns(found)
            if groups is False:
                groups = self._grouped(found)
            if groups is not None:
                batch.groups = groups
                return batch
        fast = self._parse_json(raw)  # as parse: not canonical bytes, perhaps still a valid batch
        if fast is not None:
            fast.groups, fast.rows = group_rows(fast.rows), []
        return fast

    def _grouped(self, found: list[tuple[bytes, bytes, bytes, bytes]]) -> list[Group] | None:
        """The groups of any batch, reading by reading; None when a reading breaks a rule."""
        # The same checks as _parse_canonical, but a reading's key bytes find its group (created, and the
        # key checked, on its first reading): per reading two appends, no row tuple, no key lookup later.
        # A group is (unit, append to times, append to values); a reading in another unit than its key's
        # first one goes to a group of its own (rare: a unit change, which the commit may refuse).
        groups: dict[bytes, tuple[str, Any, Any]] = {}
        other: dict[tuple[bytes, str], tuple[str, Any, Any]] = {}
        made: list[Group] = []
        seconds, tails, max_abs = self._bseconds, self._btails, MAX_ABS_VALUE
        for kb, sb, tb, vb in found:
            base = seconds.get(sb)
            if base is None:
                base = self._second_of(sb)
            tl = tails.get(tb) or self._tail_of(tb)
            if base is None or tl is None:
                return None
            if (len(vb) > 16 and len(vb.lstrip(b"-0.").replace(b".", b"")) > 15) or vb == b"-0":
                return None  # see _parse_canonical
            v = float(vb)
            if not -max_abs < v < max_abs:
                return None
            ms, u = tl
            g = groups.get(kb)
            if g is None or g[0] is not u:
                g = self._group(groups, other, made, kb, u)
                if g is None:
                    return None
            g[1](base + ms)
            g[2](v)
        return made

    def _columns(self, found: list[tuple[bytes, bytes, bytes, bytes]]) -> list[Group] | Literal[False] | None:
        """The groups of the common shape, each check done in C over a column; False for another shape.

        A gateway's batch repeats its points in one order (every poll reads them in turn; the drain's
        backlog cycles p0..p9): with k distinct keys, reading i belongs to the key of reading i mod k.
        Then the columns are taken apart in C: times, values, units by slices, with no loop per reading.
        None when a reading breaks a rule (the same answer the loop gives); False (not judged) when the
        readings are not periodic, a key has more than one unit, a number is long enough to need its
        significant digits counted, or a cache was cleared meanwhile: the loop then does it reading by
        reading.
        """
        # Columns by itemgetter, not zip(*found): zip makes an iterator per reading, and so many new
        # objects wake the garbage collector every few hundred.
        kbs = list(map(_COLUMNS[0], found))
        distinct = list(dict.fromkeys(kbs))
        k = len(distinct)
        if kbs[k:] != kbs[:-k]:  # not one cycle of its keys (a quality flag changed, a point missing): the loop
            return False  # decides, before any other column is taken apart for nothing
        sbs, tbs, vbs = (list(map(col, found)) for col in _COLUMNS[1:])
        if max(map(len, vbs)) > 16:
            return False
        if b"-0" in vbs:
            return None  # see _parse_canonical
        try:  # the grammar let only plain decimals through: msgspec reads them as float() does, 3x faster
            values = _FLOATS.decode(b"[" + b",".join(vbs) + b"]")
        except msgspec.DecodeError:
            return False
        if not (-MAX_ABS_VALUE < min(values) and max(values) < MAX_ABS_VALUE):
            return None
        seconds, tails, keys = self._bseconds, self._btails, self._bkeys
        for sb in set(sbs):
            if sb not in seconds and self._second_of(sb) is None:
                return None
        for tb in set(tbs):
            if tb not in tails and self._tail_of(tb) is None:
                return None
        for kb in distinct:
            if kb not in keys and self._key_of(kb) is None:
                return None
        bases = list(map(seconds.get, sbs))
        stamps = list(map(tails.get, tbs))
        if None in bases or None in stamps:
            return False  # a cache was cleared while it was filled
        ms, units = list(map(_FIRST, stamps)), list(map(_SECOND, stamps))  # type: ignore[arg-type]  # no None
        ts = list(map(add, bases, ms))
        made: list[Group] = []
        for j, kb in enumerate(distinct):
            key = keys.get(kb)
            mine = kbs[j::k]
            if key is None or kb is not kbs[j] or mine.count(kb) != len(mine):
                return False
            u = units[j]
            if units[j::k].count(u) != len(mine):
                return False
            d, p, q = key
            made.append(Group(d, p, q, u, ts[j::k], values[j::k]))
        return made

    def _group(self, groups: dict[bytes, tuple[str, Any, Any]], other: dict[tuple[bytes, str], tuple[str, Any, Any]],
               made: list[Group], kb: bytes, u: str) -> tuple[str, Any, Any] | None:
        """The group of key bytes ``kb`` and unit ``u``, made on first sight (None if the key breaks a rule).

        ``groups`` holds each key's first unit (what the reading loop tries), ``other`` any further unit.
        """
        g = groups.get(kb)
        if g is not None and g[0] == u:  # the same unit, another str object (a cache was cleared meanwhile)
            return g
        g = other.get((kb, u))
        if g is not None:
            return g
        key = self._bkeys.get(kb) or self._key_of(kb)
        if key is None:
            return None
        d, p, q = key
        made.append(grp := Group(d, p, q, u, [], []))
        g = u, grp.ts.append, grp.values.append
        if kb in groups:
            other[(kb, u)] = g
        else:
            groups[kb] = g
        return g

    def _parse_json(self, raw: bytes) -> FastBatch | None:
        try:
            b = _DECODER.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):  # incl. invalid UTF-8 in a string
            return None
        seq, alg, sig, readings = b.seq, b.alg, b.sig, b.readings
        if b.v != WIRE_VERSION or not 1 <= seq <= MAX_SEQ or alg not in _ALGS:
            return None
        if len(sig) not in (64, 128) or not HEX_RE.fullmatch(sig):
            return None
        if not 0 < len(readings) <= MAX_READINGS_PER_BATCH or not self._ok_text(b.gateway):
            return None
        created = self._ts(b.created)
        if created is None:
            return None
        rows: list[Row] = []
        append = rows.append
        texts, units, stamps = self._texts, self._units, self._stamps
        quality_codes = QUALITY_CODES
        for r in readings:
            d, p, u, q, v = r.device, r.point, r.unit, r.quality, r.value
            if (d not in texts and not self._ok_text(d)) or (p not in texts and not self._ok_text(p)) \
                    or (u not in units and not self._ok_unit(u)) or q not in quality_codes:
                return None
            ts = stamps.get(r.ts)
            if ts is None:
                ts = self._ts(r.ts)
                if ts is None:
                    return None
                if len(stamps) > _STAMPS_MAX:
                    stamps.clear()
                stamps[r.ts] = ts
            if not -MAX_ABS_VALUE < v < MAX_ABS_VALUE:  # also false for NaN and infinities
                return None
            text = format(v, ".15g")
            if "e" in text:
                return None  # the Decimal rendering path: leave it to parse_batch
            append((d, p, ts, float(text) + 0.0, u, q))  # + 0.0 turns -0.0 into 0.0, as the wire does
        return FastBatch(b.gateway, seq, created, _ALGS[alg], sig, rows)


class _Reading(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    device: str
    point: str
    quality: str
    ts: str
    unit: str
    value: float  # JSON integers are accepted and become floats, as Reading.make does


class _Batch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    alg: str
    created: str
    gateway: str
    readings: list[_Reading]
    seq: int
    sig: str
    v: int


_DECODER = msgspec.json.Decoder(_Batch)
_FLOATS = msgspec.json.Decoder(list[float])
