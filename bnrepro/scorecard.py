"""The reproduction scorecard: every chapter's claims in one table.

Each chapter module (:mod:`bnrepro.chapters`) has ``claims(profile,
device=None) -> list[Claim]``, which loads (or runs) the experiments it reads
through the results store and scores them; the chapter's notebook and the
scorecard page score the same runs with the same code, so the two can never
disagree and nothing is typed in. The chapters and their order come from
:data:`bnrepro.chapters.CHAPTERS`.
"""

from __future__ import annotations

from .chapters import Chapter, chapters
from .core.claims import VERDICTS

__all__ = ["Chapter", "chapters", "collect", "counts"]


def collect(profile: str, device=None):
    """One row per claim of every chapter (a pandas DataFrame) with its chapter and scale."""
    import pandas as pd

    rows = []
    for chapter in chapters():
        for claim in chapter.claims(profile, device=device):
            rows.append({"chapter": chapter.title, "doc": chapter.doc, **claim.row()})
    columns = ["chapter", "doc", "claim", "source", "statement", "paper", "ours", "rule", "verdict", "scale"]
    return pd.DataFrame(rows, columns=columns)


def counts(table) -> dict[str, int]:
    """How many claims got each verdict."""
    return {v: int((table["verdict"] == v).sum()) for v in VERDICTS}
