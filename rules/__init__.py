"""The rules engine shared by the edge and the cloud (docs/rules.md is the language reference).

    doc = RuleSetDoc(rules=[RuleDoc(id="so2-high", text="SELECT value FROM '+/so2' "
                                    "RAISE WHEN value > 200 mg/m3 FOR 5m CLEAR WHEN value < 180 mg/m3")])
    host = RuleHost(source="gw-1", sink=event_sink, derived=outbox_add)
    host.apply(doc)                 # compiled once; a failing set leaves the last good one in place
    host.feed(readings)             # alerts -> sink, derived readings -> outbox, notifications -> executors

Imports only the kernel: one implementation runs in the gateway and in the cloud.
"""

from .compiler import (
           Budget,
           Catalogue,
           CompiledRule,
           CompiledSet,
           RuleError,
           RuleSetError,
           compile_rule,
           compile_ruleset,
)
from .document import RuleDoc, RuleSetDoc, Silence
from .engine import AlertChange, Derived, Engine, Notify, Row
from .host import ApplyResult, RuleHost
from .parser import RuleSyntaxError, parse

__all__ = ["AlertChange", "ApplyResult", "Budget", "Catalogue", "CompiledRule", "CompiledSet", "Derived", "Engine",
           "Notify", "Row", "RuleDoc", "RuleError", "RuleHost", "RuleSetDoc", "RuleSetError", "RuleSyntaxError",
           "Silence", "compile_rule", "compile_ruleset", "parse"]
