"""One error for bad carbon inputs: it names the input, what is wrong with it and how to fix it."""

from __future__ import annotations


class CarbonInputError(ValueError):
    """An input that would give a wrong number: no figure is computed from it."""

    def __init__(self, input: str, problem: str, fix: str) -> None:
        self.input, self.problem, self.fix = input, problem, fix
        super().__init__(f"{input}: {problem}. Fix: {fix}")

    def as_dict(self) -> dict[str, str]:
        return {"input": self.input, "problem": self.problem, "fix": self.fix}
