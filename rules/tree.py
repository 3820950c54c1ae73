"""The syntax tree of one rule, as the parser builds it and the compiler reads it.

Every node keeps the position (line, column, both from 1) of its first character, so a compile
error names the place in the rule text just as a parse error does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Pos = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Num:
    value: float
    unit: str | None  # unit text as written ("mg/m3"), resolved by the compiler
    pos: Pos
    unit_pos: Pos | None = None


@dataclass(frozen=True, slots=True)
class Str:
    value: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Const:
    value: Any  # True, False or None (NULL)
    pos: Pos


@dataclass(frozen=True, slots=True)
class Name:
    name: str
    quoted: bool  # "so2-Rtd" is always a point name, never a field or alias
    pos: Pos


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "-" or "NOT"
    operand: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # + - * / = != < <= > >= AND OR
    left: Expr
    right: Expr
    pos: Pos  # the operator's position


@dataclass(frozen=True, slots=True)
class InList:
    expr: Expr
    items: tuple[Expr, ...]
    negate: bool
    pos: Pos


@dataclass(frozen=True, slots=True)
class Between:
    expr: Expr
    low: Expr
    high: Expr
    negate: bool
    pos: Pos


@dataclass(frozen=True, slots=True)
class IsNull:
    expr: Expr
    negate: bool
    pos: Pos


@dataclass(frozen=True, slots=True)
class Call:
    name: str  # lower case
    args: tuple[Expr, ...]
    star: bool  # count(*)
    pos: Pos


Expr = Num | Str | Const | Name | Unary | Binary | InList | Between | IsNull | Call


@dataclass(frozen=True, slots=True)
class SelectItem:
    expr: Expr
    alias: str | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class Source:
    kind: str  # topic | device | point | tag
    pattern: str
    value: str | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class Window:
    kind: str  # tumbling | hopping | sliding | session | count
    size: int  # ms, or readings for count
    step: int | None  # hop (ms), session maximum (ms), count step (readings)
    pos: Pos


@dataclass(frozen=True, slots=True)
class Trigger:
    raise_when: Expr
    raise_for_ms: int
    clear_when: Expr | None
    clear_for_ms: int
    pos: Pos


@dataclass(frozen=True, slots=True)
class Rule:
    select: tuple[SelectItem, ...] | None  # None: SELECT *
    sources: tuple[Source, ...]
    where: Expr | None = None
    group_keys: tuple[str, ...] = ()  # a subset of ("device", "point")
    window: Window | None = None
    having: Expr | None = None
    trigger: Trigger | None = None
    names: tuple[str, ...] = field(default=())  # select aliases, in order
