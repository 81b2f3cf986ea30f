"""The reproduction scorecard: every chapter's claims in one table.

Each chapter registers a function ``claims(profile, device) -> list[Claim]``
that loads (or runs) the experiments it reads through the results store and
scores them; the chapter's notebook and the scorecard page call the same
function, so the two can never disagree and nothing is typed in.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Callable

from .core.claims import VERDICTS, Claim


@dataclasses.dataclass(frozen=True)
class Chapter:
    doc: str          # the chapter's page, e.g. "book/lenet"
    title: str
    order: int        # position in the book
    claims: Callable[..., list[Claim]]


_CHAPTERS: dict[str, Chapter] = {}


def register_chapter(doc: str, title: str, order: int, claims: Callable[..., list[Claim]]) -> None:
    _CHAPTERS[doc] = Chapter(doc, title, order, claims)


def chapters() -> list[Chapter]:
    """Every registered chapter, in book order (importing all experiment modules registers them)."""
    from . import experiments

    for info in pkgutil.iter_modules(experiments.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{experiments.__name__}.{info.name}")
    return sorted(_CHAPTERS.values(), key=lambda c: c.order)


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
