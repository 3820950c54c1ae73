"""Loading typed YAML configuration with errors that name the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

_FIXES = {
    "extra_forbidden": "remove it or check its spelling against the documented keys",
    "missing": "add it",
    "int_parsing": "use a whole number",
    "int_type": "use a whole number",
    "float_parsing": "use a number",
    "float_type": "use a number",
    "bool_parsing": "use true or false",
    "string_type": "use a quoted string",
    "literal_error": "use one of the allowed values",
    "enum": "use one of the allowed values",
    "greater_than": "use a larger value",
    "greater_than_equal": "use a larger value",
    "less_than": "use a smaller value",
    "less_than_equal": "use a smaller value",
    "list_type": "use a YAML list",
    "dict_type": "use a YAML mapping",
    "model_type": "use a YAML mapping",
    "union_tag_invalid": "set 'driver' to one of the allowed values listed",
    "union_tag_not_found": "add a 'driver' key naming the protocol (modbus_tcp, sunspec, ...)",
    "string_pattern_mismatch": "use only the characters the pattern allows",
    "string_too_long": "use a shorter value",
    "string_too_short": "use a longer value",
}


class ConfigError(Exception):
    """A configuration file that cannot be used; ``str()`` tells the user what to change."""


def format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s) in the configuration"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        fix = _FIXES.get(err["type"], "correct the value")
        got = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(
            err.get("input"), dict | list) else ""
        lines.append(f"  - key '{key}': {err['msg']}{got}; fix: {fix}")
    return "\n".join(lines)


def load_yaml_config(path: str | Path, model: type[M]) -> M:
    """Read ``path`` and validate it as ``model``; raise ConfigError with a readable message."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the file ({exc.strerror}); fix: check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}; fix: correct the syntax at the line shown") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(p), exc)) from None
