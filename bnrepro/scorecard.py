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

import contextlib
import io
import math
from pathlib import Path

from .chapters import Chapter, chapters
from .core.claims import CHECK, EMPIRICAL, KINDS, PAPER_KINDS, VERDICTS

__all__ = ["COLUMNS", "Chapter", "chapters", "collect", "counts", "counts_by_kind", "forest", "forest_of",
           "old_scheme", "row_scale"]

COLUMNS = ["chapter", "doc", "claim", "kind", "source", "where", "statement", "paper", "ours", "n", "low",
           "high", "rule", "reason", "verdict", "scale", "unverified", "post_hoc", "values", "mean",
           "low_value", "high_value", "target", "upper", "rule_kind", "null"]

#: Verdict colours shared by the forest plot and the tables (the book's CSS uses the same).
VERDICT_COLORS = {"reproduced": "#1b7837", "partly": "#b8860b", "inconclusive": "#7f7f7f",
                  "not reproduced": "#b2182b"}

#: The scorecard of the old scheme (point estimates, no kinds), computed once: see its README.
OLD_SCHEME = Path(__file__).resolve().parents[1] / "results" / "scorecard" / "old_scheme_cc842eb.csv"


def collect(profile: str, device=None, only: str | None = None, *, quiet: bool = False,
            errors: str = "raise"):
    """One row per claim of every chapter (a pandas DataFrame; ``only``: one chapter's module).

    ``quiet``: what the chapters print while loading (one line per stored result, in
    chapters that still print them) is dropped. ``errors="report"``: a chapter whose
    ``claims`` raises is left out and named, with the error, in ``table.attrs["failed"]``
    (its own notebook still fails the build); ``"raise"`` (the default) lets it raise.
    """
    import pandas as pd

    if errors not in ("raise", "report"):
        raise ValueError(f"collect(errors={errors!r}): use 'raise' or 'report'")
    rows, failed = [], {}
    for chapter in chapters():
        if only is not None and chapter.module != only:
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
                scored = chapter.claims(profile, device=device)
        except Exception as exc:  # noqa: BLE001 -- reported by name, never hidden
            if errors == "raise":
                raise
            failed[chapter.title] = f"{type(exc).__name__}: {exc}"
            continue
        for claim in scored:
            rows.append({"chapter": chapter.title, "doc": chapter.doc, **claim.row()})
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["failed"] = failed
    return table


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
    out.index.name = "kind"
    return out


def old_scheme(path: Path = OLD_SCHEME):
    """The old scorecard (one row per claim, a point estimate against a threshold; no kinds),
    as stored once in ``results/scorecard`` (a pandas DataFrame)."""
    import pandas as pd

    return pd.read_csv(path)


def checks(table):
    """The rows that check our own code (kind ``check``)."""
    return table[table["kind"] == CHECK]


# --- the forest plot -----------------------------------------------------------

def row_scale(row) -> tuple[float, float, str]:
    """How one claim's numbers are put on the plot's shared axis: x = (value - zero) / unit.

    * ``at_least``/``at_most``: 0 is no effect (the rule's ``null``, else zero) and 1 the
      paper's threshold;
    * ``between`` (a band): the band's centre (the paper's value) is 1 and its edges 0.5
      and 1.5, so that where our interval lies in the band stays visible however narrow it is.
    Where the threshold is the no-effect value itself (e.g. "ours > 0"), the unit is the
    largest magnitude among our values. Returns (zero, unit, kind): x = (value - zero) / unit."""
    lo_t, hi_t = float(row["target"]), float(row["upper"])
    if math.isfinite(hi_t):  # between: x = 1 + (v - centre) / (2 * half)
        centre, half = (lo_t + hi_t) / 2, (hi_t - lo_t) / 2
        unit = 2 * half if half > 0 else (abs(centre) or 1.0)
        return centre - unit, unit, "band"
    zero = row.get("null")
    zero = 0.0 if zero is None or not math.isfinite(zero) else float(zero)
    unit = lo_t - zero
    if unit == 0:
        finite = [abs(v - zero) for v in list(row["values"]) + [row["low_value"], row["high_value"]]
                  if isinstance(v, (int, float)) and math.isfinite(v)]
        unit = max(finite, default=1.0) or 1.0
    return zero, unit, "threshold"


#: The x range of the plot; a value beyond it is drawn at the edge as an arrow head.
XLIM = (-1.5, 3.0)


def _clip(x: float) -> tuple[float, bool]:
    lo, hi = XLIM
    return (min(max(x, lo + 0.05), hi - 0.05), not lo < x < hi)


def forest(table, ax=None, title: str | None = None):
    """Every empirical claim of ``table`` as one row, grouped by chapter: per-seed dots, the
    95% interval and the mean, coloured by verdict, against the rule's threshold or band
    (black ticks; the side of the paper's claim shaded). Each row is put on a shared axis by
    :func:`row_scale` (0 = no effect, 1 = the paper's threshold; a band 0.5 to 1.5); a value beyond the
    axis is drawn at its edge as an arrow head. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    emp = table[table["kind"] == EMPIRICAL].reset_index(drop=True)
    has_groups = "chapter" in emp.columns and emp["chapter"].nunique() > 1
    groups = list(dict.fromkeys(emp["chapter"])) if has_groups else [None]
    # y positions from the top: a heading row per group (when there are several), then its claims
    layout, y = [], 0
    for g in groups:
        if g is not None:
            layout.append(("group", g, y))
            y += 1
        for i in (emp.index[emp["chapter"] == g] if g is not None else emp.index):
            layout.append(("claim", i, y))
            y += 1
    # 6.5 in wide: at 150 dpi about the article column's width, so 8-pt labels read at ~11 px
    height = 0.24 * max(y, 1) + 1.4
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, height), dpi=150)
    else:
        fig = ax.figure
    lo_x, hi_x = XLIM
    for what, i, yy in layout:
        y_plot = -yy
        if what == "group":
            ax.text(lo_x, y_plot, f" {i}", fontsize=8.5, fontweight="bold", va="center", ha="left")
            ax.axhline(y_plot + 0.5, color="#cccccc", lw=0.6, zorder=0)
            continue
        row = emp.loc[i]
        zero, unit, kind = row_scale(row)
        color = VERDICT_COLORS[row["verdict"]]
        lo_t, hi_t = float(row["target"]), float(row["upper"])
        edges = [(lo_t - zero) / unit] + ([(hi_t - zero) / unit] if math.isfinite(hi_t) else [])
        # the side of the paper's claim, lightly shaded
        if kind == "band":
            ax.fill_betweenx([y_plot - 0.4, y_plot + 0.4], min(edges), max(edges), color="#e8f2e8", zorder=0)
        else:
            right = (row["rule_kind"] == "at_least") == (unit > 0)
            ax.fill_betweenx([y_plot - 0.4, y_plot + 0.4], edges[0], hi_x if right else lo_x,
                             color="#e8f2e8", zorder=0)
        for e in edges:
            e, _ = _clip(e)
            ax.plot([e, e], [y_plot - 0.4, y_plot + 0.4], color="black", lw=1, zorder=1)
        vals = [_clip((v - zero) / unit)[0] for v in row["values"] if math.isfinite(v)]
        ax.scatter(vals, [y_plot + 0.22] * len(vals), s=8, color=color, alpha=0.7, zorder=2, linewidths=0)
        if math.isfinite(row["low_value"]) and math.isfinite(row["high_value"]):
            a, _ = _clip((row["low_value"] - zero) / unit)
            b, _ = _clip((row["high_value"] - zero) / unit)
            ax.plot([a, b], [y_plot, y_plot], color=color, lw=2.5, zorder=3, solid_capstyle="butt")
        if math.isfinite(row["mean"]):
            m, out = _clip((row["mean"] - zero) / unit)
            marker = ("<" if m < 0 else ">") if out else "o"
            ax.plot(m, y_plot, marker, color=color, ms=5, zorder=4)
    claim_rows = [(i, yy) for what, i, yy in layout if what == "claim"]
    ax.set_yticks([-yy for _, yy in claim_rows])
    ax.set_yticklabels([emp.loc[i, "claim"] for i, _ in claim_rows], fontsize=8)
    ax.set_ylim(-max(y, 1) + 0.4, 0.6)
    ax.set_xlim(lo_x, hi_x)
    ax.axvline(0, color="#999999", lw=0.6, ls=":", zorder=0)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("each row rescaled: 0 = no effect, 1 = the paper's threshold\n(a band: centre 1, edges 0.5 "
                  "and 1.5); shaded: the paper's side; dots: seeds; bar: 95% interval", fontsize=8)
    handles = [plt.Line2D([], [], color=c, lw=2.5, label=v) for v, c in VERDICT_COLORS.items()]
    fig.legend(handles=handles, fontsize=8, loc="upper center", ncol=4, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    if title:
        ax.set_title(title, fontsize=9, pad=16)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))
    return fig


def forest_of(claims, title: str | None = None):
    """:func:`forest` of a chapter's list of :class:`~bnrepro.core.claims.Claim` (its empirical ones)."""
    import pandas as pd

    return forest(pd.DataFrame([c.row() for c in claims]), title=title)
