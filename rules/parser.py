"""The rule language's parser: a tokenizer and a recursive-descent parser with error positions.

    SELECT avg(value) AS so2 FROM '+/so2' WHERE quality = 'N'
    GROUP BY device, TUMBLING(1m)
    RAISE WHEN so2 > 200 mg/m3 FOR 5m CLEAR WHEN so2 < 180 mg/m3

A syntax error is a RuleSyntaxError with the line and column (from 1) of the offending token, what
was found there and what the parser expected. The language is small enough that a hand-written
parser gives better messages than a generated one, and it adds no dependency on the gateway.
docs/rules.md is the reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .tree import (
    Between,
    Binary,
    Call,
    Const,
    Expr,
    InList,
    IsNull,
    Name,
    Num,
    Pos,
    Rule,
    SelectItem,
    Source,
    Str,
    Trigger,
    Unary,
    Window,
)

MAX_RULE_CHARS = 8192
MAX_DEPTH = 64  # nesting of parentheses and operators; deeper is refused, never a RecursionError

KEYWORDS = frozenset({"SELECT", "FROM", "WHERE", "GROUP", "BY", "HAVING", "RAISE", "CLEAR", "WHEN", "FOR", "AS",
                      "AND", "OR", "NOT", "IN", "IS", "NULL", "TRUE", "FALSE", "BETWEEN"})
WINDOWS = ("TUMBLING", "HOPPING", "SLIDING", "SESSION", "COUNT")
DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


class RuleSyntaxError(ValueError):
    """A rule that does not parse or compile; ``line`` and ``column`` count from 1."""

    def __init__(self, message: str, line: int, column: int, expected: tuple[str, ...] = ()) -> None:
        self.message = message
        self.line = line
        self.column = column
        self.expected = expected
        super().__init__(f"line {line}, column {column}: {message}")

    def to_dict(self) -> dict[str, object]:
        return {"line": self.line, "column": self.column, "message": self.message, "expected": list(self.expected)}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # num, str, qident, ident, kw, op, eof
    text: str
    pos: Pos
    unit: str | None = None  # for num: the unit written right after it
    unit_pos: Pos | None = None


_TOKEN_RE = re.compile(r"""
    (?P<ws>[ \t\r\n]+|--[^\n]*)
  | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<str>'(?:[^']|'')*')
  | (?P<qident>"(?:[^"]|"")*")
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|=|<|>|\+|-|\*|/|\(|\)|,)
""", re.VERBOSE)
# A unit right after a number: "200 mg/m3", "5m", "21 %"; a keyword (AND, FOR ...) is never a unit.
_UNIT_RE = re.compile(r"[ \t]*([A-Za-zµμ°%℃][A-Za-z0-9µμ°%³²/._^·]*)")


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_RULE_CHARS:
        raise RuleSyntaxError(f"rule text is {len(text)} characters, over the limit of {MAX_RULE_CHARS}", 1, 1)
    tokens: list[Token] = []
    line, line_start, i = 1, 0, 0
    n = len(text)
    while i < n:
        m = _TOKEN_RE.match(text, i)
        pos = (line, i - line_start + 1)
        if m is None:
            ch = text[i]
            hint = " (strings use single quotes)" if ch in "`‘’“”" else ""
            raise RuleSyntaxError(f"unexpected character {ch!r}{hint}", *pos)
        kind = m.lastgroup or ""
        chunk = m.group()
        if kind == "ws":
            nl = chunk.count("\n")
            if nl:
                line += nl
                line_start = i + chunk.rindex("\n") + 1
            i = m.end()
            continue
        if kind in ("str", "qident") and "\n" in chunk:
            raise RuleSyntaxError("a quoted string or name cannot span lines", *pos)
        i = m.end()
        if kind == "num":
            u = _UNIT_RE.match(text, i)
            if u and u.group(1).upper() not in KEYWORDS:
                unit_pos = (line, u.start(1) - line_start + 1)
                tokens.append(Token("num", chunk, pos, u.group(1), unit_pos))
                i = u.end()
                continue
        elif kind == "ident" and chunk.upper() in KEYWORDS:
            tokens.append(Token("kw", chunk.upper(), pos))
            continue
        elif kind == "str":
            chunk = chunk[1:-1].replace("''", "'")
        elif kind == "qident":
            chunk = chunk[1:-1].replace('""', '"')
            if not chunk:
                raise RuleSyntaxError("an empty quoted name", *pos)
        tokens.append(Token(kind, chunk, pos))
    tokens.append(Token("eof", "", (line, n - line_start + 1)))
    return tokens


def _describe(tok: Token) -> str:
    if tok.kind == "eof":
        return "the end of the rule"
    if tok.kind == "str":
        return f"the string '{tok.text}'"
    if tok.kind == "num":
        return f"the number {tok.text}" + (f" {tok.unit}" if tok.unit else "")
    return f"'{tok.text}'"


class Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    # --- token helpers -------------------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def error(self, *expected: str, message: str | None = None) -> RuleSyntaxError:
        found = _describe(self.tok)
        text = message or f"expected {' or '.join(expected)}, found {found}"
        return RuleSyntaxError(text, *self.tok.pos, expected=expected)

    def next(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def at_kw(self, *words: str) -> bool:
        return self.tok.kind == "kw" and self.tok.text in words

    def at_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def at_word(self, *words: str) -> bool:
        """A contextual word (DEVICE, TUMBLING, ...): an identifier that is not reserved everywhere."""
        return self.tok.kind == "ident" and self.tok.text.upper() in words

    def expect_kw(self, word: str) -> Token:
        if not self.at_kw(word):
            raise self.error(word)
        return self.next()

    def expect_op(self, op: str) -> Token:
        if not self.at_op(op):
            raise self.error(f"'{op}'")
        return self.next()

    def expect_str(self, what: str) -> Token:
        if self.tok.kind != "str":
            raise self.error(f"{what} in single quotes")
        return self.next()

    # --- the rule --------------------------------------------------------------------------

    def rule(self) -> Rule:
        self.expect_kw("SELECT")
        select: tuple[SelectItem, ...] | None
        if self.at_op("*"):
            self.next()
            select = None
        else:
            items = [self.select_item()]
            while self.at_op(","):
                self.next()
                items.append(self.select_item())
            select = tuple(items)
        self.expect_kw("FROM")
        sources = [self.source()]
        while self.at_op(","):
            self.next()
            sources.append(self.source())
        where = having = None
        keys: list[str] = []
        window = None
        trigger = None
        if self.at_kw("WHERE"):
            self.next()
            where = self.expr()
        if self.at_kw("GROUP"):
            self.next()
            self.expect_kw("BY")
            keys, window = self.group_by()
        if self.at_kw("HAVING"):
            self.next()
            having = self.expr()
        if self.at_kw("RAISE"):
            trigger = self.trigger()
        if self.tok.kind != "eof":
            expected = [w for w, seen in (("WHERE", where), ("GROUP BY", keys or window), ("HAVING", having),
                                          ("RAISE WHEN", trigger)) if not seen]
            raise self.error(*(expected or ["the end of the rule"]))
        names = tuple(item.alias for item in select or () if item.alias)
        return Rule(select, tuple(sources), where, tuple(keys), window, having, trigger, names)

    def select_item(self) -> SelectItem:
        pos = self.tok.pos
        expr = self.expr()
        alias = None
        if self.at_kw("AS"):
            self.next()
            if self.tok.kind not in ("ident", "qident"):
                raise self.error("a column name")
            alias = self.next().text
        return SelectItem(expr, alias, pos)

    def source(self) -> Source:
        pos = self.tok.pos
        if self.tok.kind == "str":
            return Source("topic", self.next().text, None, pos)
        if self.at_word("DEVICE", "POINT", "TOPIC"):
            kind = self.next().text.lower()
            return Source(kind, self.expect_str(f"a {kind} pattern").text, None, pos)
        if self.at_word("TAG"):
            self.next()
            key = self.expect_str("a tag name").text
            self.expect_op("=")
            return Source("tag", key, self.expect_str("a tag value").text, pos)
        raise self.error("a topic filter such as '+/so2'", "DEVICE 'pattern'", "POINT 'name'", "TAG 'key' = 'value'")

    def group_by(self) -> tuple[list[str], Window | None]:
        keys: list[str] = []
        window = None
        while True:
            if self.at_word(*WINDOWS):
                if window is not None:
                    raise self.error(message="a rule has at most one window")
                window = self.window()
            elif self.at_word("DEVICE", "POINT"):
                word = self.next().text.lower()
                if word not in keys:
                    keys.append(word)
            else:
                raise self.error("device", "point", "a window (TUMBLING, HOPPING, SLIDING, SESSION, COUNT)")
            if not self.at_op(","):
                return keys, window
            self.next()

    def window(self) -> Window:
        pos = self.tok.pos
        kind = self.next().text.lower()
        self.expect_op("(")
        if kind == "count":
            size = self.integer("a number of readings")
            step = None
            if self.at_op(","):
                self.next()
                step = self.integer("a number of readings to advance by")
        else:
            size = self.duration()
            step = None
            if kind == "hopping":
                self.expect_op(",")
                step = self.duration()
            elif kind == "session" and self.at_op(","):
                self.next()
                step = self.duration()
        self.expect_op(")")
        return Window(kind, size, step, pos)

    def integer(self, what: str) -> int:
        tok = self.tok
        if tok.kind != "num" or tok.unit or not tok.text.isdigit() or int(tok.text) < 1:
            raise self.error(f"{what} (a whole number above 0)")
        self.next()
        return int(tok.text)

    def duration(self) -> int:
        tok = self.tok
        if tok.kind != "num" or tok.unit not in DURATION_UNITS:
            raise self.error("a duration such as 30s, 5m, 1h or 1d")
        self.next()
        ms = float(tok.text) * DURATION_UNITS[tok.unit]
        if ms < 1 or ms != int(ms) or ms > 366 * 86_400_000:
            raise RuleSyntaxError(f"duration {tok.text}{tok.unit} must be whole milliseconds between 1 ms and"
                                  " 366 days", *tok.pos)
        return int(ms)

    def trigger(self) -> Trigger:
        pos = self.tok.pos
        self.expect_kw("RAISE")
        self.expect_kw("WHEN")
        raise_when = self.expr()
        raise_for = clear_for = 0
        clear_when = None
        if self.at_kw("FOR"):
            self.next()
            raise_for = self.duration()
        if self.at_kw("CLEAR"):
            self.next()
            self.expect_kw("WHEN")
            clear_when = self.expr()
            if self.at_kw("FOR"):
                self.next()
                clear_for = self.duration()
        return Trigger(raise_when, raise_for, clear_when, clear_for, pos)

    # --- expressions, lowest precedence first ------------------------------------------------

    def expr(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(message=f"expression nests deeper than {MAX_DEPTH} levels")
        try:
            return self.or_expr()
        finally:
            self.depth -= 1

    def or_expr(self) -> Expr:
        left = self.and_expr()
        while self.at_kw("OR"):
            pos = self.next().pos
            left = Binary("OR", left, self.and_expr(), pos)
        return left

    def and_expr(self) -> Expr:
        left = self.not_expr()
        while self.at_kw("AND"):
            pos = self.next().pos
            left = Binary("AND", left, self.not_expr(), pos)
        return left

    def not_expr(self) -> Expr:
        if self.at_kw("NOT"):
            pos = self.next().pos
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(message=f"expression nests deeper than {MAX_DEPTH} levels")
            try:
                return Unary("NOT", self.not_expr(), pos)
            finally:
                self.depth -= 1
        return self.comparison()

    def comparison(self) -> Expr:
        left = self.additive()
        if self.at_op("=", "!=", "<>", "<", "<=", ">", ">="):
            tok = self.next()
            op = "!=" if tok.text == "<>" else tok.text
            return Binary(op, left, self.additive(), tok.pos)
        negate = False
        pos = self.tok.pos
        if self.at_kw("IS"):
            self.next()
            if self.at_kw("NOT"):
                self.next()
                negate = True
            self.expect_kw("NULL")
            return IsNull(left, negate, pos)
        if self.at_kw("NOT") and self.tokens[self.i + 1].kind == "kw" and self.tokens[self.i + 1].text in (
                "IN", "BETWEEN"):
            self.next()
            negate = True
        if self.at_kw("IN"):
            self.next()
            self.expect_op("(")
            items = [self.additive()]
            while self.at_op(","):
                self.next()
                items.append(self.additive())
            self.expect_op(")")
            return InList(left, tuple(items), negate, pos)
        if self.at_kw("BETWEEN"):
            self.next()
            low = self.additive()
            self.expect_kw("AND")
            return Between(left, low, self.additive(), negate, pos)
        return left

    def additive(self) -> Expr:
        left = self.multiplicative()
        while self.at_op("+", "-"):
            tok = self.next()
            left = Binary(tok.text, left, self.multiplicative(), tok.pos)
        return left

    def multiplicative(self) -> Expr:
        left = self.unary()
        while self.at_op("*", "/"):
            tok = self.next()
            left = Binary(tok.text, left, self.unary(), tok.pos)
        return left

    def unary(self) -> Expr:
        if self.at_op("-", "+"):
            tok = self.next()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(message=f"expression nests deeper than {MAX_DEPTH} levels")
            try:
                operand = self.unary()
            finally:
                self.depth -= 1
            return operand if tok.text == "+" else Unary("-", operand, tok.pos)
        return self.primary()

    def primary(self) -> Expr:
        tok = self.tok
        if tok.kind == "num":
            self.next()
            return Num(float(tok.text), tok.unit, tok.pos, tok.unit_pos)
        if tok.kind == "str":
            self.next()
            return Str(tok.text, tok.pos)
        if tok.kind == "kw" and tok.text in ("TRUE", "FALSE", "NULL"):
            self.next()
            return Const({"TRUE": True, "FALSE": False, "NULL": None}[tok.text], tok.pos)
        if tok.kind == "qident":
            self.next()
            return Name(tok.text, True, tok.pos)
        if tok.kind == "ident":
            self.next()
            if self.at_op("("):
                return self.call(tok)
            return Name(tok.text, False, tok.pos)
        if self.at_op("("):
            self.next()
            inner = self.expr()
            self.expect_op(")")
            return inner
        raise self.error("a number", "a name", "a string", "a function call", "'('")

    def call(self, name: Token) -> Call:
        self.expect_op("(")
        if self.at_op("*"):
            self.next()
            self.expect_op(")")
            return Call(name.text.lower(), (), True, name.pos)
        args: list[Expr] = []
        if not self.at_op(")"):
            args.append(self.expr())
            while self.at_op(","):
                self.next()
                args.append(self.expr())
        self.expect_op(")")
        return Call(name.text.lower(), tuple(args), False, name.pos)


def parse(text: str) -> Rule:
    """Parse one rule; RuleSyntaxError with the line, column and what was expected."""
    if not isinstance(text, str):
        raise RuleSyntaxError("a rule must be text", 1, 1)
    return Parser(text).rule()
