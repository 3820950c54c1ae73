"""Bundled point maps: YAML data files describing where a device keeps its values."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml


def available() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".yaml"))


def load_pointmap(name: str) -> list[dict[str, Any]]:
    if name not in available():
        raise ValueError(f"unknown point map {name!r}; bundled maps: {', '.join(available())}")
    data = yaml.safe_load(resources.files(__package__).joinpath(f"{name}.yaml").read_text("utf-8"))
    return list(data["points"])
