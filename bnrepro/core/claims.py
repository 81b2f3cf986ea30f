"""Paper claim vs our result: a verdict computed from an interval by a rule fixed in advance.

A claim is written down before the runs that score it, as a :class:`ClaimSpec`:
what the paper says (``statement``, ``paper``), where it says it (``source``, a
key of ``book/references.bib``, and ``where``, a section, figure or table), its
``kind`` and the :class:`Rule` that will judge our numbers, with the one-line
``reason`` for the threshold. An experiment module registers the specs of the
claims its runs are scored by (:func:`register_claims`); every result it
stores records :func:`rules_hash` of them, so a rule changed after its results
were stored is caught (the fix is to re-run, never to edit the result).

A scored :class:`Claim` is a spec plus our per-seed ``values``. Its verdict is
computed, never typed in:

* ``kind="empirical"`` (training runs, random draws: seed noise). ``ours`` is
  the mean over the n values with a 95% Student-t interval; the rule is applied
  to the interval. Fewer than two values give no interval: inconclusive.
* ``kind="exact"`` (computed from a paper's theory) and ``kind="check"`` (an
  identity or an engineering property of our code): the "interval" is the
  range of the values (one value: a point); every value must satisfy the rule.

Verdicts, from the interval [low, high]:

* **reproduced**: the whole interval satisfies the paper's claim;
* **not reproduced**: the whole interval contradicts it;
* **partly**: (``at_least``/``at_most`` with a ``null``) the whole interval has
  the paper's sign (lies beyond ``null``) but falls short of the paper's magnitude;
* **inconclusive**: the interval straddles the threshold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Sequence

REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "partly", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, PARTLY, INCONCLUSIVE, NOT_REPRODUCED)
EMPIRICAL, EXACT, CHECK = "empirical", "exact", "check"
KINDS = (EMPIRICAL, EXACT, CHECK)
#: Kinds that are claims of the papers (counted in the headline); checks are about our code.
PAPER_KINDS = (EMPIRICAL, EXACT)
#: Every empirical claim rests on at least this many independent runs (seeds).
MIN_SEEDS = 3
CONFIDENCE = 0.95
INTERVAL_METHOD = "mean over seeds with a 95% Student-t interval (mean ± t(0.975, n−1)·s/√n)"


# --- the interval ------------------------------------------------------------

def _t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (Simpson's rule on the density)."""
    if t == 0:
        return 0.5
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    a, steps = abs(t), 2000
    h = a / steps
    f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(steps + 1)]
    area = h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    return 0.5 + area if t > 0 else 0.5 - area


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df`` degrees of freedom (bisection)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile(p={p}, df={df}): need 0.5 < p < 1 and df >= 1")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its Student-t interval (NaNs if n < 2)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(xs) / n
    if n < 2 or not all(math.isfinite(x) for x in xs):
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


# --- rules -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Rule:
    """How an interval [low, high] of our values is judged against the paper.

    ``kind``:
      * ``"at_least"``: the claim is "ours >= target". With ``null`` set (the
        no-effect value, usually 0), an interval wholly between ``null`` and
        ``target`` is *partly* (right sign, short of the paper's size);
      * ``"at_most"``: "ours <= target" (``null`` as above, mirrored);
      * ``"between"``: "target <= ours <= upper" (``within`` is a symmetric band).
    """

    kind: str
    target: float
    upper: float = math.nan
    null: float | None = None

    def __post_init__(self):
        if self.kind not in ("at_least", "at_most", "between"):
            raise ValueError(f"Rule kind={self.kind!r} is not one of at_least, at_most, between")
        if self.kind == "between" and not self.upper >= self.target:
            raise ValueError(f"between(lower={self.target}, upper={self.upper}): upper must be >= lower")
        if self.null is not None and self.kind == "at_least" and not self.null < self.target:
            raise ValueError(f"at_least(target={self.target}, null={self.null}): null must be below the target")
        if self.null is not None and self.kind == "at_most" and not self.null > self.target:
            raise ValueError(f"at_most(target={self.target}, null={self.null}): null must be above the target")

    def verdict(self, low: float, high: float) -> str:
        if low is None or high is None or math.isnan(low) or math.isnan(high):
            return INCONCLUSIVE
        if self.kind == "between":
            if self.target <= low and high <= self.upper:
                return REPRODUCED
            return NOT_REPRODUCED if high < self.target or low > self.upper else INCONCLUSIVE
        if self.kind == "at_most":  # mirror onto at_least
            return Rule("at_least", -self.target, null=None if self.null is None else -self.null).verdict(-high, -low)
        if low >= self.target:
            return REPRODUCED
        if high >= self.target:
            return INCONCLUSIVE
        return PARTLY if self.null is not None and low > self.null else NOT_REPRODUCED

    def describe(self, fmt=lambda v: f"{v:g}") -> str:
        """The rule in plain words."""
        if self.kind == "between":
            return f"reproduced if our interval lies within [{fmt(self.target)}, {fmt(self.upper)}]"
        side = "above" if self.kind == "at_least" else "below"
        text = f"reproduced if our interval lies {side} {fmt(self.target)}"
        if self.null is not None:
            text += f"; partly if it lies {side} {fmt(self.null)} but not {side} {fmt(self.target)}"
        return text


def at_least(target: float, *, null: float | None = None) -> Rule:
    return Rule("at_least", float(target), null=None if null is None else float(null))


def at_most(target: float, *, null: float | None = None) -> Rule:
    return Rule("at_most", float(target), null=None if null is None else float(null))


def between(lower: float, upper: float) -> Rule:
    return Rule("between", float(lower), upper=float(upper))


def within(target: float, tol: float) -> Rule:
    """|ours - target| <= tol, as the band [target - tol, target + tol]."""
    return between(target - tol, target + tol)


# --- claims ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ClaimSpec:
    """A claim as written down before its runs: what, where from, and how it will be judged.

    ``source`` is a key of ``book/references.bib`` (``None`` for a check of our
    own code), ``where`` the place in it (section, figure, table).
    ``unverified``: the paper's value could not be checked against the paper's
    text. ``post_hoc``: the rule was written after seeing data. ``n``: the
    fewest independent runs the claim may be scored from.
    """

    id: str
    kind: str
    statement: str
    paper: str
    rule: Rule
    reason: str
    source: str | None = None
    where: str = ""
    n: int = MIN_SEEDS
    unverified: bool = False
    post_hoc: bool = False
    fmt: str = "{:.3f}"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.id!r}: kind={self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind in PAPER_KINDS and not self.source:
            raise ValueError(f"claim {self.id!r}: a paper claim needs its source (a bibliography key)")
        if self.kind == EMPIRICAL and self.n < MIN_SEEDS:
            raise ValueError(f"claim {self.id!r}: an empirical claim needs n >= {MIN_SEEDS} runs, not {self.n}")

    def score(self, values, scale: str = "") -> Claim:
        """This claim scored on our ``values`` (one per seed, or one number for exact/check)."""
        return Claim(self, values, scale)

    def canonical(self) -> dict:
        """What the rules hash covers: everything that decides the verdict."""
        return {"id": self.id, "kind": self.kind, "rule": dataclasses.asdict(self.rule), "n": self.n,
                "statement": self.statement, "paper": self.paper}


@dataclasses.dataclass(frozen=True)
class Claim:
    """A :class:`ClaimSpec` scored on our values; the verdict is a computed property."""

    spec: ClaimSpec
    values: tuple
    scale: str = ""

    def __post_init__(self):
        vals = self.values if isinstance(self.values, (list, tuple)) else [self.values]
        object.__setattr__(self, "values", tuple(math.nan if v is None else float(v) for v in vals))

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def bounds(self) -> tuple[float, float, float]:
        """(ours, low, high): the mean and interval (empirical) or the range (exact, check)."""
        if self.spec.kind == EMPIRICAL:
            return interval(self.values)
        if not self.values or not all(math.isfinite(v) for v in self.values):
            return math.nan, math.nan, math.nan
        return sum(self.values) / self.n, min(self.values), max(self.values)

    @property
    def ours(self) -> float:
        return self.bounds[0]

    @property
    def verdict(self) -> str:
        _, low, high = self.bounds
        if self.spec.kind != EMPIRICAL and (math.isnan(low) or math.isnan(high)):
            return NOT_REPRODUCED  # an exact value or a check that produced no number failed
        return self.spec.rule.verdict(low, high)

    def row(self) -> dict:
        spec = self.spec
        ours, low, high = self.bounds

        def show(v):
            return "n/a" if not math.isfinite(v) else spec.fmt.format(v)

        return {"claim": spec.id, "kind": spec.kind, "source": spec.source or "", "where": spec.where,
                "statement": spec.statement, "paper": spec.paper, "ours": show(ours), "n": self.n,
                "low": show(low), "high": show(high),
                "rule": spec.rule.describe(lambda v: spec.fmt.format(v)), "reason": spec.reason,
                "verdict": self.verdict, "scale": self.scale, "unverified": spec.unverified,
                "post_hoc": spec.post_hoc, "values": list(self.values), "mean": ours,
                "low_value": low, "high_value": high, "target": spec.rule.target,
                "upper": spec.rule.upper, "rule_kind": spec.rule.kind,
                "null": math.nan if spec.rule.null is None else spec.rule.null}


#: The columns a claims table shows, in order (the rest of a row feeds plots and tests).
TABLE_COLUMNS = ("kind", "statement", "paper", "ours", "n", "low", "high", "verdict", "rule", "source", "where",
                 "scale")


def claims_table(claims: Sequence[Claim], all_columns: bool = False):
    """A pandas DataFrame, one row per claim, indexed by claim id."""
    import pandas as pd

    frame = pd.DataFrame([c.row() for c in claims]).set_index("claim")
    return frame if all_columns else frame[list(TABLE_COLUMNS)]


def verdict_counts(claims: Sequence[Claim], kinds: Sequence[str] = KINDS) -> dict[str, int]:
    counts = {v: 0 for v in VERDICTS}
    for c in claims:
        if c.kind in kinds:
            counts[c.verdict] += 1
    return counts


# --- preregistration: which rules a result was run to test ------------------

_SPECS: dict[str, tuple[ClaimSpec, ...]] = {}


def register_claims(experiment: str, specs: Sequence[ClaimSpec]) -> dict[str, ClaimSpec]:
    """Declare the claims that ``experiment``'s results are scored by; returns them by id.

    Called at import by the experiment's module, so the specs sit in the
    committed code before any run. Every result of the experiment records
    :func:`rules_hash` of them.
    """
    ids = [s.id for s in specs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{experiment}: claim ids repeat: {sorted(i for i in ids if ids.count(i) > 1)}")
    _SPECS[experiment] = tuple(specs)
    return {s.id: s for s in specs}


def registered_claims(experiment: str | None = None) -> dict[str, tuple[ClaimSpec, ...]] | tuple[ClaimSpec, ...]:
    """The registered specs of ``experiment`` (or of every experiment, by name)."""
    return dict(_SPECS) if experiment is None else _SPECS.get(experiment, ())


def rules_hash(experiment: str) -> str:
    """A hash of the claims (ids, kinds, rules, n, statements) ``experiment`` is scored by."""
    blob = json.dumps([s.canonical() for s in sorted(_SPECS.get(experiment, ()), key=lambda s: s.id)],
                      sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
