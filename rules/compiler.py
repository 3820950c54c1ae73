"""Rule documents to compiled rules: parsed once, checked, turned into closures and plain data.

Compile-time refusals, each with the rule id and, for the text, a line and column:
syntax errors; unknown functions, fields and (with a point catalogue) points; incompatible units;
aggregates without a window; a window whose state would exceed the memory budget (the message
names the budget); derive actions without a usable column or unit.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import units as U
from .document import DeriveAction, RuleDoc, RuleSetDoc
from .exprs import AggSpec, ExprCompiler, Fn, Scope, Typ, err
from .parser import RuleSyntaxError, parse
from .tree import Between, Binary, Call, Expr, InList, IsNull, Name, Rule, Source, Unary, Window

DERIVED_PREFIX = "rule:"


def derived_point(rule_id: str, name: str) -> str:
    """The point a derive action writes: ``rule:{rule id}:{name}``; the rule's version travels in a
    ``rule.derivation`` event (see docs/rules.md, "Derived readings")."""
    return f"{DERIVED_PREFIX}{rule_id}:{name}"


@dataclass(frozen=True)
class Catalogue:
    """The points that exist: device -> point -> unit. With one, a rule naming a missing point is refused."""

    devices: Mapping[str, Mapping[str, str]]

    def points(self) -> frozenset[str]:
        return frozenset(p for pts in self.devices.values() for p in pts)


@dataclass(frozen=True)
class Budget:
    """Memory a rule may hold per group. Windows that keep readings (hopping, sliding, count, and
    any window with percentile) are sized at ``assumed_rate_hz`` readings per second per group."""

    max_window_entries: int = 65_536
    assumed_rate_hz: float = 1.0
    max_groups: int = 100_000
    bytes_per_entry: int = 64

    @property
    def bytes(self) -> int:
        return self.max_window_entries * self.bytes_per_entry


class RuleError(ValueError):
    """Why one rule was refused: rule id, message, and the position in its text when there is one."""

    def __init__(self, rule_id: str, message: str, line: int | None = None, column: int | None = None,
                 where: str = "text", expected: tuple[str, ...] = ()) -> None:
        self.rule_id = rule_id
        self.message = message
        self.line = line
        self.column = column
        self.where = where
        self.expected = expected
        at = f" at line {line}, column {column}" if line is not None else f" in {where}"
        super().__init__(f"rule {rule_id!r}{at}: {message}")

    def to_dict(self) -> dict[str, object]:
        return {"rule": self.rule_id, "where": self.where, "line": self.line, "column": self.column,
                "message": self.message, "expected": list(self.expected)}


class RuleSetError(ValueError):
    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


# --- selection ------------------------------------------------------------------------------


def _topic_matcher(pattern: str, pos: tuple[int, int]) -> Callable[[str, str], bool]:
    levels = pattern.split("/")
    for i, lv in enumerate(levels):
        if ("#" in lv and (lv != "#" or i != len(levels) - 1)) or ("+" in lv and lv != "+"):
            raise err(f"topic filter {pattern!r}: '+' and '#' must fill a whole level and '#' must be last", pos)
    if not pattern:
        raise err("empty topic filter", pos)

    def match(device: str, point: str) -> bool:
        parts = f"{device}/{point}".split("/")
        for i, lv in enumerate(levels):
            if lv == "#":
                return True
            if i >= len(parts) or (lv != "+" and lv != parts[i]):
                return False
        return len(parts) == len(levels)
    return match


def _glob(pattern: str) -> Callable[[str], bool]:
    rx = re.compile(fnmatch.translate(pattern))
    return lambda s: rx.match(s) is not None


@dataclass(frozen=True)
class Matcher:
    """Which readings a rule sees: any of its sources matches (device, point, the device's tags)."""

    tests: tuple[Callable[[str, str, Mapping[str, str]], bool], ...]
    literal_points: frozenset[str] | None  # every source names exact points: these

    def __call__(self, device: str, point: str, tags: Mapping[str, str]) -> bool:
        return any(t(device, point, tags) for t in self.tests)


def _matcher(sources: tuple[Source, ...]) -> Matcher:
    tests: list[Callable[[str, str, Mapping[str, str]], bool]] = []
    literal: set[str] | None = set()
    for s in sources:
        if s.kind == "topic":
            tm = _topic_matcher(s.pattern, s.pos)
            tests.append(lambda d, p, t, tm=tm: tm(d, p))  # type: ignore[misc]
            last = s.pattern.rsplit("/", 1)[-1]
            if literal is not None and last not in ("+", "#") and s.pattern.count("/") == 1:
                literal.add(last)
            else:
                literal = None
        elif s.kind == "device":
            g = _glob(s.pattern)
            tests.append(lambda d, p, t, g=g: g(d))  # type: ignore[misc]
            literal = None
        elif s.kind == "point":
            g = _glob(s.pattern)
            tests.append(lambda d, p, t, g=g: g(p))  # type: ignore[misc]
            if literal is not None and not any(ch in s.pattern for ch in "*?["):
                literal.add(s.pattern)
            else:
                literal = None
        else:
            key, want = s.pattern, s.value
            tests.append(lambda d, p, t, key=key, want=want: t.get(key) == want)  # type: ignore[misc]
            literal = None
    return Matcher(tuple(tests), frozenset(literal) if literal is not None else None)


# --- the compiled rule ----------------------------------------------------------------------


@dataclass(frozen=True)
class DeriveSpec:
    point: str  # full derived point name
    column: str
    unit: str
    scale: float
    offset: float


@dataclass
class CompiledRule:
    doc: RuleDoc
    hash: str
    matcher: Matcher
    where: Fn | None
    columns: list[tuple[str, Fn]]  # empty with SELECT *
    star: bool
    window: Window | None
    group_keys: tuple[str, ...]  # the subject of alerts and the key of windows, within one device
    aggs: list[AggSpec]
    keeps_entries: bool  # the window keeps readings (hopping, sliding, count, percentile)
    max_entries: int
    max_groups: int
    having: Fn | None
    raise_when: Fn | None
    clear_when: Fn | None
    raise_for_ms: int
    clear_for_ms: int
    refs: frozenset[str]
    derives: list[DeriveSpec] = field(default_factory=list)
    column_units: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.doc.id

    @property
    def version(self) -> int:
        return self.doc.version

    @property
    def is_alert(self) -> bool:
        return self.raise_when is not None


def _expand(e: Expr, aliases: Mapping[str, Expr]) -> Expr:
    """Replace column aliases by their expressions (HAVING and RAISE may use SELECT's names)."""
    if isinstance(e, Name):
        return aliases.get(e.name, e) if not e.quoted else e
    if isinstance(e, Unary):
        return Unary(e.op, _expand(e.operand, aliases), e.pos)
    if isinstance(e, Binary):
        return Binary(e.op, _expand(e.left, aliases), _expand(e.right, aliases), e.pos)
    if isinstance(e, InList):
        return InList(_expand(e.expr, aliases), tuple(_expand(i, aliases) for i in e.items), e.negate, e.pos)
    if isinstance(e, Between):
        return Between(_expand(e.expr, aliases), _expand(e.low, aliases), _expand(e.high, aliases), e.negate, e.pos)
    if isinstance(e, IsNull):
        return IsNull(_expand(e.expr, aliases), e.negate, e.pos)
    if isinstance(e, Call):
        return Call(e.name, tuple(_expand(a, aliases) for a in e.args), e.star, e.pos)
    return e


def _default_name(e: Expr, i: int) -> str:
    if isinstance(e, Name):
        return e.name
    if isinstance(e, Call):
        return e.name
    return f"col{i + 1}"


def _entries(rule: Rule, window: Window, aggs: list[AggSpec], budget: Budget) -> tuple[bool, int]:
    """Whether the window keeps readings, and how many per group it may hold; refuses over budget."""
    keeps = window.kind in ("hopping", "sliding", "count") or any(a.kind == "percentile" for a in aggs)
    if not keeps:
        return False, 0
    if window.kind == "count":
        need = window.size
        what = f"COUNT({window.size})"
    else:
        span = window.size
        if window.kind == "session":
            if window.step is None:
                raise err("percentile() in a SESSION window needs a maximum length: SESSION(gap, max)", window.pos)
            span = window.step
        need = math.ceil(span / 1000 * budget.assumed_rate_hz) + 1
        what = f"{window.kind.upper()} over {span // 1000} s at {budget.assumed_rate_hz:g} reading/s"
    if need > budget.max_window_entries:
        mb = need * budget.bytes_per_entry / 1e6
        raise err(f"window {what} keeps up to {need:,} readings per group (about {mb:.1f} MB),"
                  f" over the rule memory budget of {budget.max_window_entries:,} readings"
                  f" ({budget.bytes / 1e6:.1f} MB, rules.budget.max_window_entries); use a TUMBLING window,"
                  " a shorter window or fewer readings", window.pos)
    return True, min(budget.max_window_entries, max(need * 4, need + 16))


def compile_rule(doc: RuleDoc, catalogue: Catalogue | None = None, budget: Budget | None = None) -> CompiledRule:
    """Compile one rule document; RuleError with the position of the first problem."""
    budget = budget or Budget()
    try:
        return _compile(doc, catalogue, budget)
    except RuleSyntaxError as exc:
        raise RuleError(doc.id, exc.message, exc.line, exc.column, "text", exc.expected) from None


def _compile(doc: RuleDoc, catalogue: Catalogue | None, budget: Budget) -> CompiledRule:
    rule = parse(doc.text)
    matcher = _matcher(rule.sources)
    known_points = catalogue.points() if catalogue is not None else None
    units_by_point: dict[str, U.Unit | None] | None = None
    if catalogue is not None:
        units_by_point = {}
        value_units: set[str] = set()
        for device, pts in catalogue.devices.items():
            for p, unit in pts.items():
                prior = units_by_point.get(p, False)
                try:
                    u: U.Unit | None = U.lookup(unit)
                except U.UnitError:
                    u = None
                units_by_point[p] = u if prior is False or prior == u else None
                if matcher(device, p, {}):
                    value_units.add(unit)
        if matcher.literal_points is not None:
            missing = sorted(p for p in matcher.literal_points if p not in known_points)  # type: ignore[operator]
            if missing:
                src = rule.sources[0]
                raise err(f"no device in the point catalogue has point(s) {', '.join(missing)}", src.pos)
        units_by_point[""] = U.lookup(value_units.pop()) if len(value_units) == 1 and U.known(
            next(iter(value_units or {""}))) else None
    window = rule.window
    group_keys = rule.group_keys or ("device", "point")
    if "device" not in group_keys:
        group_keys = ("device", *group_keys)
    group_keys = tuple(k for k in ("device", "point") if k in group_keys)
    scope = Scope(window=window is not None, group_keys=group_keys, aggs=[] if window else None,
                  catalogue_units=units_by_point, known_points=known_points)
    comp = ExprCompiler(scope)

    # WHERE: always per reading
    where_comp = ExprCompiler(Scope(False, catalogue_units=units_by_point, known_points=known_points,
                                    refs=scope.refs))
    where_comp.pins = comp.pins
    where = None
    if rule.where is not None:
        t = where_comp.typ(rule.where)
        if t.kind not in ("bool", "null"):
            raise err("WHERE needs a condition (true or false)", rule.where.pos)
    if rule.select is None and window is not None:
        raise err("a windowed rule must name its aggregates: SELECT avg(value) AS mean ...", (1, 8))

    aliases: dict[str, Expr] = {}
    items: list[tuple[str, Expr]] = []
    for i, item in enumerate(rule.select or ()):
        expr = _expand(item.expr, aliases)
        name = item.alias or _default_name(item.expr, i)
        while name in (n for n, _ in items):
            name += "_"
        items.append((name, expr))
        if item.alias:
            aliases[item.alias] = expr
    typs: dict[str, Typ] = {}
    for name, expr in items:
        typs[name] = comp.typ(expr)
    having = _expand(rule.having, aliases) if rule.having is not None else None
    trig = rule.trigger
    raise_e = _expand(trig.raise_when, aliases) if trig else None
    clear_e = _expand(trig.clear_when, aliases) if trig and trig.clear_when is not None else None
    for cond, what in ((having, "HAVING"), (raise_e, "RAISE WHEN"), (clear_e, "CLEAR WHEN")):
        if cond is not None:
            t = comp.typ(cond)
            if t.kind not in ("bool", "null"):
                raise err(f"{what} needs a condition (true or false)", cond.pos)
    # second pass: pins made by later clauses reach the earlier ones
    for name, expr in items:
        typs[name] = comp.typ(expr)
    if rule.where is not None:
        where_comp.typ(rule.where)
        where = where_comp.build(rule.where)
    columns = [(name, comp.build(expr)) for name, expr in items]
    having_fn = comp.build(having) if having is not None else None
    raise_fn = comp.build(raise_e) if raise_e is not None else None
    clear_fn = comp.build(clear_e) if clear_e is not None else None
    aggs = scope.aggs or []
    keeps, max_entries = _entries(rule, window, aggs, budget) if window else (False, 0)
    column_units = {n: (U.named(t.unit) or t.unit).symbol for n, t in typs.items()
                    if t.kind == "num" and t.unit is not None}
    derives = [_derive(doc, a, items, typs) for a in doc.actions if isinstance(a, DeriveAction)]
    return CompiledRule(
        doc=doc, hash=doc.content_hash(), matcher=matcher, where=where, columns=columns, star=rule.select is None,
        window=window, group_keys=group_keys, aggs=aggs, keeps_entries=keeps, max_entries=max_entries,
        max_groups=budget.max_groups, having=having_fn, raise_when=raise_fn, clear_when=clear_fn,
        raise_for_ms=trig.raise_for_ms if trig else 0, clear_for_ms=trig.clear_for_ms if trig else 0,
        refs=frozenset(scope.refs), derives=derives, column_units=column_units)


def _derive(doc: RuleDoc, action: DeriveAction, items: list[tuple[str, Expr]], typs: dict[str, Typ]) -> DeriveSpec:
    where = "actions (derive)"
    if not items:
        raise RuleError(doc.id, "a derive action needs SELECT columns, not SELECT *", where=where)
    numeric = [n for n, _ in items if typs[n].kind == "num"]
    column = action.column or (numeric[0] if numeric else None)
    if column is None or column not in typs:
        raise RuleError(doc.id, f"derive: column {action.column!r} is not one of {[n for n, _ in items]}", where=where)
    t = typs[column]
    if t.kind != "num":
        raise RuleError(doc.id, f"derive: column {column!r} is not a number", where=where)
    scale, offset = 1.0, 0.0
    if action.unit is not None:
        try:
            target = U.lookup(action.unit) if action.unit else U.ONE
        except U.UnitError as exc:
            raise RuleError(doc.id, f"derive: {exc}", where=where) from None
        if t.unit is not None:
            if not t.unit.compatible(target):
                raise RuleError(doc.id, f"derive: column {column!r} is in {t.unit.symbol}, which cannot be"
                                f" converted to {target.symbol}", where=where)
            scale, offset = U.converter(t.unit, target)
        unit = target.symbol
    elif t.unit is not None and U.named(t.unit) is not None:
        unit = U.named(t.unit).symbol  # type: ignore[union-attr]
    else:
        raise RuleError(doc.id, f"derive: the unit of column {column!r} is not known; give the action a unit",
                        where=where)
    return DeriveSpec(derived_point(doc.id, action.point), column, unit, scale, offset)


@dataclass
class CompiledSet:
    doc: RuleSetDoc
    hash: str
    rules: list[CompiledRule]


def compile_ruleset(doc: RuleSetDoc, catalogue: Catalogue | None = None,
                    budget: Budget | None = None) -> CompiledSet:
    """Compile every enabled rule; RuleSetError listing each refused rule (nothing is half applied)."""
    errors: list[RuleError] = []
    rules: list[CompiledRule] = []
    for r in doc.rules:
        if not r.enabled:
            continue
        try:
            rules.append(compile_rule(r, catalogue, budget))
        except RuleError as exc:
            errors.append(exc)
    if errors:
        raise RuleSetError(errors)
    return CompiledSet(doc, doc.content_hash(), rules)
