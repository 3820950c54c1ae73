"""Expressions to Python closures, with units checked and conversions decided at compile time.

Every closure takes one ``Ctx`` and returns a float, a string, a bool or None (SQL NULL). NULL
propagates: arithmetic with NULL is NULL, a comparison with NULL is NULL, and a WHERE, HAVING or
RAISE condition that is NULL counts as not met. Division by zero and results that are not finite
numbers are NULL and leave a note the engine reports as a ``rule.skipped`` event.

Units: a number written with a unit (``200 mg/m3``) has that unit; a bare number adopts the unit of
whatever it meets; a reading's value or another point has the unit the compiler *pins* it to, and
each reading's own unit is converted to the pinned one when it is read (``0.25 g/m3`` meets
``200 mg/m3`` as 250). Two sides with different dimensions are a compile error at the operator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from carbonlink.kernel.wire import Reading

from . import units as U
from .parser import RuleSyntaxError
from .tree import Between, Binary, Call, Const, Expr, InList, IsNull, Name, Num, Pos, Str, Unary

Fn = Callable[["Ctx"], Any]

READING_FIELDS = frozenset({"value", "quality", "unit", "device", "point", "ts"})
ROW_FIELDS = frozenset({"window_start", "window_end"})
AGGREGATES = frozenset({"avg", "min", "max", "sum", "count", "stddev", "percentile", "first", "last", "delta",
                        "rate"})
SCALARS = {"abs": 1, "sqrt": 1, "ln": 1, "log10": 1, "exp": 1, "round": (1, 2), "floor": 1, "ceil": 1,
           "coalesce": None, "least": None, "greatest": None, "convert": 2}
STALE_MS = 300_000  # another point's latest value counts for 5 minutes of event time
MS = U.Unit("ms", (0, 0, 1, 0, 0, 0), 1e-3)


class UnitSkip(Exception):
    """A reading whose unit cannot be converted to the unit the rule needs."""

    def __init__(self, unit: str, target: str) -> None:
        super().__init__(f"unit {unit!r} cannot be converted to {target!r}")
        self.unit = unit
        self.target = target


class Ctx:
    """What an expression sees: the reading, the device's latest values, the row, window aggregates."""

    __slots__ = ("aggs", "key", "latest", "notes", "r", "row")

    def __init__(self) -> None:
        self.r: Reading | None = None
        self.latest: dict[str, Reading] = {}
        self.row: dict[str, Any] = {}
        self.aggs: list[Any] = []
        self.key: tuple[str, ...] = ()
        self.notes: list[str] = []


class Converter:
    """A reading's value in the pinned unit; one dictionary lookup per reading once a unit was seen."""

    __slots__ = ("cache", "target")

    def __init__(self, target: U.Unit) -> None:
        self.target = target
        self.cache: dict[str, tuple[float, float] | None] = {}

    def __call__(self, r: Reading) -> float:
        ab = self.cache.get(r.unit, False)
        if ab is False:
            ab = self._learn(r.unit)
        if ab is None:
            raise UnitSkip(r.unit, self.target.symbol)
        return r.value * ab[0] + ab[1]  # type: ignore[index]

    def _learn(self, unit: str) -> tuple[float, float] | None:
        try:
            ab: tuple[float, float] | None = U.converter(U.lookup(unit), self.target)
        except U.UnitError:
            ab = None
        if len(self.cache) < 256:
            self.cache[unit] = ab
        return ab


@dataclass(frozen=True, slots=True)
class Typ:
    kind: str  # num | str | bool | null
    unit: U.Unit | None = None  # num: known unit, or None
    adopt: bool = False  # num: a bare constant that takes the unit of what it meets


NUM_FREE = Typ("num")
NUM_ADOPT = Typ("num", None, True)
STR = Typ("str")
BOOL = Typ("bool")
NULL = Typ("null")


@dataclass(frozen=True, slots=True)
class AggSpec:
    kind: str
    arg: Fn | None  # None for count(*)
    param: float = 0.0  # the percentile
    pos: Pos = (1, 1)


@dataclass
class Scope:
    """What names mean where an expression stands.

    ``window`` False: a reading's fields and the device's other points (WHERE, stream rules, the
    argument of an aggregate). True: a window's row (aggregates, group keys, window_start/_end).
    Column aliases never reach here: the rule compiler replaces them by their expressions.
    """

    window: bool = False
    group_keys: tuple[str, ...] = ()
    aggs: list[AggSpec] | None = None  # where aggregates of a window rule are collected
    catalogue_units: Mapping[str, U.Unit | None] | None = None  # point -> unit, when a catalogue is known
    known_points: frozenset[str] | None = None  # with a catalogue: the points a rule may name
    refs: set[str] = field(default_factory=set)  # other points read, filled while compiling


def err(message: str, pos: Pos) -> RuleSyntaxError:
    return RuleSyntaxError(message, pos[0], pos[1])


def _finite(x: float, c: Ctx, what: str) -> float | None:
    if math.isfinite(x):
        return x
    c.notes.append(f"{what} gave a result that is not a finite number")
    return None


class ExprCompiler:
    """Type-checks an expression, pins units, then builds its closure."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.pins: dict[str, U.Unit] = {}  # one unit per input of a rule: value, or a point
        self.agg_index: dict[int, int] = {}

    # --- types and unit pinning -----------------------------------------------------------

    def typ(self, e: Expr) -> Typ:
        if isinstance(e, Num):
            if e.unit is None:
                return NUM_ADOPT
            try:
                return Typ("num", U.lookup(e.unit))
            except U.UnitError as exc:
                raise err(str(exc), e.unit_pos or e.pos) from None
        if isinstance(e, Str):
            return STR
        if isinstance(e, Const):
            return NULL if e.value is None else BOOL
        if isinstance(e, Name):
            return self._name_typ(e)
        if isinstance(e, Unary):
            t = self.typ(e.operand)
            if e.op == "NOT":
                self._want_bool(t, e.operand)
                return BOOL
            self._want_num(t, e.operand, "-")
            return t
        if isinstance(e, Binary):
            return self._binary_typ(e)
        if isinstance(e, InList):
            base = self.typ(e.expr)
            for item in e.items:
                self._same(base, self.typ(item), e.expr, item, e.pos)
            return BOOL
        if isinstance(e, Between):
            base = self.typ(e.expr)
            self._same(base, self.typ(e.low), e.expr, e.low, e.pos)
            self._same(self.typ(e.expr), self.typ(e.high), e.expr, e.high, e.pos)
            return BOOL
        if isinstance(e, IsNull):
            self.typ(e.expr)
            return BOOL
        return self._call_typ(e)

    def _name_typ(self, e: Name) -> Typ:
        s = self.scope
        n = e.name
        if s.window:
            if not e.quoted and n in ROW_FIELDS:
                return Typ("num", MS)
            if not e.quoted and n in ("device", "point"):
                if n not in s.group_keys:
                    raise err(f"'{n}' is not a group key of this rule: add it to GROUP BY or use it in WHERE",
                              e.pos)
                return STR
            raise err(f"'{n}' must be inside an aggregate such as avg({n}) in a windowed rule", e.pos)
        if not e.quoted and n in READING_FIELDS:
            if n == "value":
                return self._pinned(e)
            if n == "ts":
                return Typ("num", MS)
            return STR
        if not e.quoted and n in ROW_FIELDS:
            raise err(f"'{n}' exists only in a windowed rule", e.pos)
        # another point of the same device
        if s.known_points is not None and n not in s.known_points:
            raise err(f"unknown point '{n}': no device in the point catalogue has it"
                      + ("" if e.quoted else " (a reading's own fields are value, quality, unit, device, point, ts)"),
                      e.pos)
        s.refs.add(n)
        return self._pinned(e)

    def _pinned(self, e: Name) -> Typ:
        unit = self.pins.get(_pin_key(e))
        if unit is None and self.scope.catalogue_units is not None:
            name = "" if (e.name == "value" and not e.quoted) else e.name
            unit = self.scope.catalogue_units.get(name)
            if unit is not None:
                self.pins[_pin_key(e)] = unit
        return Typ("num", unit)

    def _want_num(self, t: Typ, e: Expr, op: str) -> None:
        if t.kind not in ("num", "null"):
            raise err(f"'{op}' needs a number, this is a {t.kind}", _pos(e))

    def _want_bool(self, t: Typ, e: Expr) -> None:
        if t.kind not in ("bool", "null"):
            raise err(f"expected a condition (true or false), this is a {t.kind}", _pos(e))

    def _same(self, a: Typ, b: Typ, ea: Expr, eb: Expr, pos: Pos) -> Typ:
        """Make two operands comparable: same kind, units of one dimension; pins free sides."""
        if a.kind == "null" or b.kind == "null":
            return a if b.kind == "null" else b
        if a.kind != b.kind:
            raise err(f"cannot compare a {a.kind} with a {b.kind}", pos)
        if a.kind != "num":
            return a
        if a.unit is not None and b.unit is not None:
            if not a.unit.compatible(b.unit):
                raise err(f"incompatible units: {a.unit.symbol or 'no unit'} and {b.unit.symbol or 'no unit'}", pos)
            return a
        if a.unit is not None and not b.adopt:
            self._pin_or_fail(eb, a.unit, pos)
            return a
        if b.unit is not None and not a.adopt:
            self._pin_or_fail(ea, b.unit, pos)
            return b
        return a if a.unit is not None or not a.adopt else b

    def _pin_or_fail(self, e: Expr, unit: U.Unit, pos: Pos) -> None:
        if not self.pin(e, unit):
            raise err(f"the unit of the expression at line {_pos(e)[0]}, column {_pos(e)[1]} is not known, so it"
                      f" cannot be compared with {unit.symbol}: convert its points, e.g. convert(o2, '%')", pos)
        self.typ(e)

    def pin(self, e: Expr, unit: U.Unit) -> bool:
        if isinstance(e, Name):
            if self.scope.window and not e.quoted and e.name in ROW_FIELDS | {"device", "point"}:
                return False
            if e.quoted or e.name not in READING_FIELDS - {"value"}:
                if _pin_key(e) in self.pins:
                    return self.pins[_pin_key(e)].compatible(unit)
                self.pins[_pin_key(e)] = unit
                return True
            return False
        if isinstance(e, Unary) and e.op == "-":
            return self.pin(e.operand, unit)
        if isinstance(e, Binary) and e.op in "+-":
            ok = True
            for side in (e.left, e.right):
                t = self.typ(side)
                if t.unit is None and not t.adopt:
                    ok = self.pin(side, unit) and ok
            return ok
        if isinstance(e, Binary) and e.op in "*/":
            lt, rt = self.typ(e.left), self.typ(e.right)
            if rt.adopt:
                return self.pin(e.left, unit)
            if lt.adopt and e.op == "*":
                return self.pin(e.right, unit)
            return False
        if isinstance(e, Call):
            if e.name in ("avg", "min", "max", "sum", "stddev", "percentile", "first", "last", "delta", "abs",
                          "round", "floor", "ceil") and e.args:
                return self.pin(e.args[0], unit)
            if e.name == "rate" and e.args:
                return self.pin(e.args[0], unit.times(U.SECOND))
            if e.name in ("least", "greatest", "coalesce"):
                return all(self.pin(a, unit) for a in e.args if self.typ(a).unit is None and not self.typ(a).adopt)
        return False

    def _binary_typ(self, e: Binary) -> Typ:
        op = e.op
        lt, rt = self.typ(e.left), self.typ(e.right)
        if op in ("AND", "OR"):
            self._want_bool(lt, e.left)
            self._want_bool(rt, e.right)
            return BOOL
        if op in ("=", "!=", "<", "<=", ">", ">="):
            if op not in ("=", "!=") and (lt.kind == "bool" or rt.kind == "bool"):
                raise err(f"'{op}' cannot order true and false", e.pos)
            self._same(lt, rt, e.left, e.right, e.pos)
            return BOOL
        self._want_num(lt, e.left, op)
        self._want_num(rt, e.right, op)
        if op in "+-":
            t = self._same(lt, rt, e.left, e.right, e.pos)
            lt, rt = self.typ(e.left), self.typ(e.right)
            if lt.adopt and rt.adopt:
                return NUM_ADOPT
            return Typ("num", lt.unit or rt.unit) if t.kind != "null" else t
        if lt.adopt and rt.adopt:
            return NUM_ADOPT
        if lt.unit is not None and rt.unit is not None:
            try:
                return Typ("num", lt.unit.times(rt.unit) if op == "*" else lt.unit.per(rt.unit))
            except U.UnitError as exc:
                raise err(str(exc), e.pos) from None
        if rt.adopt and lt.unit is not None:
            return lt
        if lt.adopt and rt.unit is not None:
            return Typ("num", rt.unit if op == "*" else U.ONE.per(rt.unit))
        return NUM_FREE

    def _call_typ(self, e: Call) -> Typ:
        name = e.name
        if name in AGGREGATES:
            return self._agg_typ(e)
        if name not in SCALARS:
            raise err(f"unknown function {name}(); aggregates: {', '.join(sorted(AGGREGATES))}; functions: "
                      f"{', '.join(sorted(SCALARS))}", e.pos)
        arity = SCALARS[name]
        if e.star:
            raise err(f"{name}(*) is not allowed; only count(*)", e.pos)
        n = len(e.args)
        if (isinstance(arity, int) and n != arity) or (isinstance(arity, tuple) and n not in arity) or \
                (arity is None and n < 1):
            raise err(f"{name}() takes {arity if arity is not None else 'one or more'} argument(s), got {n}", e.pos)
        if name == "convert":
            target, spec = e.args
            if not isinstance(spec, Str):
                raise err("convert(x, 'unit') needs the unit as a string", _pos(spec))
            try:
                unit = U.lookup(spec.value)
            except U.UnitError as exc:
                raise err(str(exc), _pos(spec)) from None
            t = self.typ(target)
            self._want_num(t, target, "convert")
            if t.unit is not None:
                if not t.unit.compatible(unit):
                    raise err(f"convert(): {t.unit.symbol} cannot be converted to {unit.symbol}", e.pos)
                return Typ("num", unit)
            if not self.pin(target, unit):
                raise err("convert() applies to a point or value (or an expression of them with bare numbers)",
                          _pos(target))
            self.typ(target)
            return Typ("num", unit)
        types = [self.typ(a) for a in e.args]
        for a, t in zip(e.args, types, strict=True):
            self._want_num(t, a, name + "()")
        if name in ("coalesce", "least", "greatest"):
            t0 = types[0]
            for a, t in zip(e.args[1:], types[1:], strict=True):
                t0 = self._same(t0, t, e.args[0], a, e.pos)
            return self.typ(e.args[0]) if not t0.adopt else t0
        if name == "round" and n == 2 and not types[1].adopt:
            raise err("round(x, digits) needs a plain number of digits", _pos(e.args[1]))
        if name in ("sqrt", "ln", "log10", "exp"):
            u = types[0].unit
            if u is not None and not u.dimensionless:
                raise err(f"{name}() needs a plain number, not a value in {u.symbol}", e.pos)
            return NUM_ADOPT if types[0].adopt else Typ("num")
        return types[0]

    def _agg_typ(self, e: Call) -> Typ:
        s = self.scope
        if not s.window or s.aggs is None:
            raise err(f"aggregate {e.name}() needs a window: add GROUP BY device, TUMBLING(1m) (or another window)",
                      e.pos)
        if e.star and e.name != "count":
            raise err(f"{e.name}(*) is not allowed; only count(*)", e.pos)
        want = 2 if e.name == "percentile" else (0 if e.star else 1)
        if e.name == "count" and not e.star and len(e.args) == 0:
            want = 0
        if len(e.args) != want:
            raise err(f"{e.name}() takes {want} argument(s), got {len(e.args)}", e.pos)
        if e.name == "count":
            return Typ("num", U.ONE)
        # the argument lives in the reading scope, with its own pins
        arg_t = self._arg_compiler().typ(e.args[0])
        if e.name == "percentile":
            p = e.args[1]
            if not isinstance(p, Num) or p.unit or not 0 <= p.value <= 100:
                raise err("percentile(x, p) needs p as a plain number from 0 to 100", _pos(p))
        self._want_num(arg_t, e.args[0], e.name + "()")
        if e.name == "rate":
            return Typ("num", arg_t.unit.per(U.SECOND)) if arg_t.unit is not None else NUM_FREE
        if e.name == "stddev" and arg_t.unit is not None and arg_t.unit.offset:
            return Typ("num", U.UNITS["K"])
        return Typ("num", arg_t.unit) if not arg_t.adopt else NUM_ADOPT

    def _arg_compiler(self) -> ExprCompiler:
        """Aggregate arguments are evaluated per reading; they share pins with this compiler."""
        s = self.scope
        sub = ExprCompiler(Scope(False, catalogue_units=s.catalogue_units, known_points=s.known_points,
                                 refs=s.refs))
        sub.pins = self.pins
        return sub

    # --- closures ------------------------------------------------------------------------

    def compile(self, e: Expr) -> Fn:
        self.typ(e)
        return self.build(e)

    def build(self, e: Expr) -> Fn:
        if isinstance(e, Num):
            v = e.value
            return lambda c: v
        if isinstance(e, Str):
            sv = e.value
            return lambda c: sv
        if isinstance(e, Const):
            cv = e.value
            return lambda c: cv
        if isinstance(e, Name):
            return self._build_name(e)
        if isinstance(e, Unary):
            f = self.build(e.operand)
            if e.op == "NOT":
                return lambda c: None if (x := f(c)) is None else not x
            return lambda c: None if (x := f(c)) is None else -x
        if isinstance(e, Binary):
            return self._build_binary(e)
        if isinstance(e, InList):
            f = self.build(e.expr)
            items = [self._coerced(e.expr, i) for i in e.items]
            neg = e.negate
            if all(isinstance(i, Num | Str) for i in e.items):
                consts = frozenset(g(Ctx()) for g in items)
                return lambda c: None if (x := f(c)) is None else ((x in consts) != neg)
            return lambda c: None if (x := f(c)) is None else (any(x == g(c) for g in items) != neg)
        if isinstance(e, Between):
            f, lo, hi = self.build(e.expr), self._coerced(e.expr, e.low), self._coerced(e.expr, e.high)
            neg = e.negate

            def between(c: Ctx) -> bool | None:
                x, a, b = f(c), lo(c), hi(c)
                if x is None or a is None or b is None:
                    return None
                return (a <= x <= b) != neg
            return between
        if isinstance(e, IsNull):
            f = self.build(e.expr)
            neg = e.negate
            return lambda c: (f(c) is None) != neg
        return self._build_call(e)

    def _build_name(self, e: Name) -> Fn:
        s = self.scope
        n = e.name
        if s.window and not e.quoted:
            if n in ROW_FIELDS:
                return lambda c: c.row.get(n)
            idx = s.group_keys.index(n)
            return lambda c: c.key[idx]
        if not e.quoted and n in READING_FIELDS:
            if n == "value":
                unit = self.pins.get(_pin_key(e))
                if unit is None:
                    return lambda c: c.r.value  # type: ignore[union-attr]
                conv = Converter(unit)
                return lambda c: conv(c.r)  # type: ignore[arg-type]
            if n == "ts":
                return lambda c: c.r.ts_ms  # type: ignore[union-attr]
            if n == "quality":
                return lambda c: c.r.quality.value  # type: ignore[union-attr]
            return lambda c: getattr(c.r, n)
        unit = self.pins.get(_pin_key(e))
        conv2 = Converter(unit) if unit is not None else None

        def other_point(c: Ctx) -> float | None:
            o = c.latest.get(n)
            if o is None or (c.r is not None and o.ts_ms < c.r.ts_ms - STALE_MS):
                return None
            return conv2(o) if conv2 is not None else o.value
        return other_point

    def _coerced(self, target: Expr, e: Expr) -> Fn:
        """``e`` converted into the unit ``target`` has (a literal is folded at compile time)."""
        f = self.build(e)
        tt, te = self.typ(target), self.typ(e)
        if tt.kind != "num" or tt.unit is None or te.unit is None or te.unit == tt.unit:
            return f
        a, b = U.converter(te.unit, tt.unit)
        if isinstance(e, Num):
            folded = e.value * a + b
            return lambda c: folded
        return lambda c: None if (x := f(c)) is None else x * a + b

    def _build_binary(self, e: Binary) -> Fn:
        op = e.op
        if op == "AND":
            lf, rf = self.build(e.left), self.build(e.right)

            def and_(c: Ctx) -> bool | None:
                a = lf(c)
                if a is False:
                    return False
                b = rf(c)
                if b is False:
                    return False
                return None if a is None or b is None else True
            return and_
        if op == "OR":
            lf, rf = self.build(e.left), self.build(e.right)

            def or_(c: Ctx) -> bool | None:
                a = lf(c)
                if a is True:
                    return True
                b = rf(c)
                if b is True:
                    return True
                return None if a is None or b is None else False
            return or_
        lf = self.build(e.left)
        rf = self._coerced(e.left, e.right) if op in ("+", "-", "=", "!=", "<", "<=", ">", ">=") else \
            self.build(e.right)
        if isinstance(e.right, Num | Str) and op in ("<", "<=", ">", ">=", "=", "!="):
            k = rf(Ctx())
            cmp = {"<": lambda x: x < k, "<=": lambda x: x <= k, ">": lambda x: x > k, ">=": lambda x: x >= k,
                   "=": lambda x: x == k, "!=": lambda x: x != k}[op]
            return lambda c: None if (x := lf(c)) is None else cmp(x)
        if op in ("<", "<=", ">", ">=", "=", "!="):
            fn2 = {"<": lambda x, y: x < y, "<=": lambda x, y: x <= y, ">": lambda x, y: x > y,
                   ">=": lambda x, y: x >= y, "=": lambda x, y: x == y, "!=": lambda x, y: x != y}[op]

            def compare(c: Ctx) -> bool | None:
                x = lf(c)
                if x is None:
                    return None
                y = rf(c)
                return None if y is None else fn2(x, y)
            return compare
        if op == "/":
            def div(c: Ctx) -> float | None:
                x, y = lf(c), rf(c)
                if x is None or y is None:
                    return None
                if y == 0:
                    c.notes.append("division by zero")
                    return None
                return _finite(x / y, c, "a division")
            return div
        arith = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}[op]

        def arithmetic(c: Ctx) -> float | None:
            x, y = lf(c), rf(c)
            if x is None or y is None:
                return None
            return _finite(arith(x, y), c, f"'{op}'")
        return arithmetic

    def _build_call(self, e: Call) -> Fn:
        name = e.name
        if name in AGGREGATES:
            s = self.scope
            assert s.aggs is not None
            idx = self.agg_index.get(id(e), -1)
            if idx < 0:
                arg = None if e.star or not e.args else self._arg_compiler().compile(e.args[0])
                param = e.args[1].value if name == "percentile" and isinstance(e.args[1], Num) else 0.0
                idx = self.agg_index[id(e)] = len(s.aggs)
                s.aggs.append(AggSpec(name, arg, param, e.pos))
            return lambda c: c.aggs[idx]
        if name == "convert":
            return self.build(e.args[0])
        fs = [self.build(a) for a in e.args]
        if name == "coalesce":
            coerced = [fs[0], *(self._coerced(e.args[0], a) for a in e.args[1:])]

            def coalesce(c: Ctx) -> Any:
                for f in coerced:
                    v = f(c)
                    if v is not None:
                        return v
                return None
            return coalesce
        if name in ("least", "greatest"):
            coerced = [fs[0], *(self._coerced(e.args[0], a) for a in e.args[1:])]
            pick = min if name == "least" else max

            def extreme(c: Ctx) -> float | None:
                vals = [f(c) for f in coerced]
                return None if any(v is None for v in vals) else pick(vals)  # type: ignore[type-var]
            return extreme
        if name == "round":
            f0 = fs[0]
            digits = int(e.args[1].value) if len(e.args) == 2 and isinstance(e.args[1], Num) else 0
            return lambda c: None if (x := f0(c)) is None else round(x, digits)
        fns: dict[str, Callable[[float], Any]] = {"abs": abs, "sqrt": math.sqrt, "ln": math.log, "log10": math.log10,
                                                  "exp": math.exp, "floor": math.floor, "ceil": math.ceil}
        math_fn = fns[name]
        f1 = fs[0]

        def apply(c: Ctx) -> float | None:
            x = f1(c)
            if x is None:
                return None
            try:
                return _finite(float(math_fn(x)), c, f"{name}()")
            except (ValueError, OverflowError):
                c.notes.append(f"{name}() is not defined for {x!r}")
                return None
        return apply


def _pin_key(e: Name) -> str:
    return "value" if e.name == "value" and not e.quoted else "point:" + e.name


def _pos(e: Expr) -> Pos:
    return e.pos
