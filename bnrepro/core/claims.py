"""Paper claim vs our result, with a verdict computed by a stated rule.

A :class:`Claim` holds what a paper says (``paper``), what we measured
(``ours``) and a :class:`Rule` that turns the two into one of three verdicts.
Nothing is typed in as a verdict: it is always ``rule(ours)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

REPRODUCED, PARTLY, NOT_REPRODUCED = "reproduced", "partly", "not reproduced"
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED)


@dataclasses.dataclass(frozen=True)
class Rule:
    """How a measured value is judged.

    ``kind``:
      * ``"within"``: |ours - target| <= tol -> reproduced, <= partly_tol -> partly;
      * ``"at_least"``: ours >= target -> reproduced, >= target - partly_tol -> partly;
      * ``"at_most"``: ours <= target -> reproduced, <= target + partly_tol -> partly;
      * ``"between"``: target <= ours <= upper -> reproduced, within partly_tol of
        the interval -> partly.
    """

    kind: str
    target: float
    tol: float = 0.0
    partly_tol: float = 0.0
    upper: float = math.nan

    def verdict(self, ours: float) -> str:
        if ours is None or not math.isfinite(float(ours)):
            return NOT_REPRODUCED
        ours = float(ours)
        if self.kind == "within":
            gap = abs(ours - self.target)
            return REPRODUCED if gap <= self.tol else PARTLY if gap <= self.partly_tol else NOT_REPRODUCED
        if self.kind == "at_least":
            return (REPRODUCED if ours >= self.target else
                    PARTLY if ours >= self.target - self.partly_tol else NOT_REPRODUCED)
        if self.kind == "at_most":
            return (REPRODUCED if ours <= self.target else
                    PARTLY if ours <= self.target + self.partly_tol else NOT_REPRODUCED)
        if self.kind == "between":
            if self.target <= ours <= self.upper:
                return REPRODUCED
            gap = self.target - ours if ours < self.target else ours - self.upper
            return PARTLY if gap <= self.partly_tol else NOT_REPRODUCED
        raise ValueError(f"Rule kind={self.kind!r} is not one of within, at_least, at_most, between")

    def describe(self) -> str:
        shown = self.partly_tol > (self.tol if self.kind == "within" else 0.0)
        p = f"; partly within {self.partly_tol:g}" if shown else ""
        if self.kind == "within":
            return f"|ours - {self.target:g}| <= {self.tol:g}{p}"
        if self.kind == "at_least":
            return f"ours >= {self.target:g}{p}"
        if self.kind == "at_most":
            return f"ours <= {self.target:g}{p}"
        return f"{self.target:g} <= ours <= {self.upper:g}{p}"


def within(target: float, tol: float, partly_tol: float | None = None) -> Rule:
    return Rule("within", target, tol, tol if partly_tol is None else partly_tol)


def at_least(target: float, partly_tol: float = 0.0) -> Rule:
    return Rule("at_least", target, partly_tol=partly_tol)


def at_most(target: float, partly_tol: float = 0.0) -> Rule:
    return Rule("at_most", target, partly_tol=partly_tol)


def between(lower: float, upper: float, partly_tol: float = 0.0) -> Rule:
    if upper < lower:
        raise ValueError(f"between(lower={lower}, upper={upper}): upper must be >= lower")
    return Rule("between", lower, partly_tol=partly_tol, upper=upper)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One quantitative claim and our measurement of it.

    ``paper`` is the paper's value as text (it may be a range or a
    qualitative statement); ``ours`` is our number; ``scale`` says where ours
    was measured (profile, dataset, device).
    """

    id: str
    source: str
    statement: str
    paper: str
    ours: float
    rule: Rule
    scale: str = ""
    fmt: str = "{:.3f}"

    @property
    def verdict(self) -> str:
        return self.rule.verdict(self.ours)

    def row(self) -> dict:
        ours = "n/a" if self.ours is None or not math.isfinite(float(self.ours)) else self.fmt.format(self.ours)
        return {"claim": self.id, "source": self.source, "statement": self.statement,
                "paper": self.paper, "ours": ours, "rule": self.rule.describe(),
                "verdict": self.verdict, "scale": self.scale}


def claims_table(claims: Sequence[Claim]):
    """A pandas DataFrame, one row per claim (renders as an HTML table in the book)."""
    import pandas as pd

    return pd.DataFrame([c.row() for c in claims]).set_index("claim")


def verdict_counts(claims: Sequence[Claim]) -> dict[str, int]:
    counts = {v: 0 for v in VERDICTS}
    for c in claims:
        counts[c.verdict] += 1
    return counts
