"""A shadow target (the agent's side of the shadow) that records what it is told and runs nothing."""

from __future__ import annotations

from typing import Any


class NullTarget:
    def __init__(self) -> None:
        self.log_levels: list[str] = []

    def device_points(self) -> dict[str, set[str] | None]:
        return {}

    def effective_state(self) -> dict[str, Any]:
        return {}

    def set_log_level(self, level: str) -> None:
        self.log_levels.append(level)

    def set_batch(self, max_readings: int | None, max_age_s: float | None) -> None:
        pass

    def set_device(self, device: str, *, enabled: bool | None, poll_interval_s: float | None,
                   points: list[str] | None) -> None:
        pass

    def set_rules(self, doc: Any) -> str | None:
        return None

    def rules_hash(self) -> str:
        return ""

    def set_model(self, doc: Any) -> str | None:
        return None

    def holds_model(self, sha256: str) -> bool:
        return True
