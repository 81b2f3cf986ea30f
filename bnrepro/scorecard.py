"""The reproduction scorecard: every chapter's claims in one table, and its forest plot.

Each chapter module (:mod:`bnrepro.chapters`) has ``claims(profile,
device=None) -> list[Claim]``, which loads (or runs) the experiments it reads
through the results store and scores them; the chapter's notebook and the
scorecard page score the same runs with the same code, so the two can never
disagree and nothing is typed in. The chapters and their order come from
:data:`bnrepro.chapters.CHAPTERS`.

The headline counts cover the papers' claims (kinds ``empirical`` and
``exact``); ``check`` rows are about our code and are counted apart.
"""

from __future__ import annotations

import math

from .chapters import Chapter, chapters
from .core.claims import CHECK, EMPIRICAL, KINDS, PAPER_KINDS, VERDICTS

__all__ = ["COLUMNS", "Chapter", "chapters", "collect", "counts", "counts_by_kind", "forest", "forest_of"]

COLUMNS = ["chapter", "doc", "claim", "kind", "source", "where", "statement", "paper", "ours", "n", "low",
           "high", "rule", "reason", "verdict", "scale", "unverified", "post_hoc", "values", "mean",
           "low_value", "high_value", "target", "upper"]

#: Verdict colours shared by the forest plot and the tables.
VERDICT_COLORS = {"reproduced": "#1b7837", "partly": "#d9a400", "inconclusive": "#7f7f7f",
                  "not reproduced": "#b2182b"}


def collect(profile: str, device=None, only: str | None = None):
    """One row per claim of every chapter (a pandas DataFrame; ``only``: one chapter's module)."""
    import pandas as pd

    rows = []
    for chapter in chapters():
        if only is not None and chapter.module != only:
            continue
        for claim in chapter.claims(profile, device=device):
            rows.append({"chapter": chapter.title, "doc": chapter.doc, **claim.row()})
    return pd.DataFrame(rows, columns=COLUMNS)


def counts(table, kinds=PAPER_KINDS) -> dict[str, int]:
    """How many claims of ``kinds`` (default: the papers' claims, not checks) got each verdict."""
    sub = table[table["kind"].isin(kinds)]
    return {v: int((sub["verdict"] == v).sum()) for v in VERDICTS}


def counts_by_kind(table):
    """A kind x verdict table of counts (a pandas DataFrame), with totals."""
    import pandas as pd

    out = pd.DataFrame(0, index=list(KINDS), columns=list(VERDICTS))
    for (kind, verdict), n in table.groupby(["kind", "verdict"]).size().items():
        out.loc[kind, verdict] = int(n)
    out["total"] = out.sum(axis=1)
    return out


def forest(table, ax=None, title: str | None = None):
    """Every empirical claim of ``table`` as one row: per-seed dots, the 95% interval and mean
    (coloured by verdict) against the rule's threshold or band (black). Each row is
    scaled by its own threshold's magnitude so that claims of different units share an axis:
    the x axis is ours / |threshold| (a band is drawn as its two edges).
    Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    emp = table[table["kind"] == EMPIRICAL].reset_index(drop=True)
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 0.32 * max(len(emp), 1) + 1.2), dpi=150)
    else:
        fig = ax.figure
    for i, row in emp.iterrows():
        y = len(emp) - 1 - i
        lo_t, hi_t = row["target"], row["upper"]
        scale = max(abs(lo_t), abs(hi_t) if math.isfinite(hi_t) else 0.0) or 1.0
        color = VERDICT_COLORS[row["verdict"]]
        vals = [v / scale for v in row["values"] if math.isfinite(v)]
        ax.scatter(vals, [y] * len(vals), s=10, color=color, alpha=0.5, zorder=2)
        if math.isfinite(row["low_value"]) and math.isfinite(row["high_value"]):
            ax.plot([row["low_value"] / scale, row["high_value"] / scale], [y, y], color=color, lw=2.5, zorder=3)
        if math.isfinite(row["mean"]):
            ax.plot(row["mean"] / scale, y, "o", color=color, ms=5, zorder=4)
        for edge in (lo_t, hi_t):
            if math.isfinite(edge):
                ax.plot([edge / scale] * 2, [y - 0.4, y + 0.4], color="black", lw=1, zorder=1)
    ax.set_yticks(range(len(emp)))
    ax.set_yticklabels([f"{c}" for c in emp["claim"][::-1]], fontsize=7)
    ax.set_xlabel("ours / |threshold|  (black: the rule's threshold or band edges)")
    handles = [plt.Line2D([], [], color=c, lw=2.5, label=v) for v, c in VERDICT_COLORS.items()]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def forest_of(claims, title: str | None = None):
    """:func:`forest` of a chapter's list of :class:`~bnrepro.core.claims.Claim` (its empirical ones)."""
    import pandas as pd

    return forest(pd.DataFrame([c.row() for c in claims]), title=title)


def checks(table):
    """The rows that check our own code (kind ``check``)."""
    return table[table["kind"] == CHECK]
