"""The book's chapters with claims, in book order: one module per notebook.

``book/X.ipynb`` has its code in :mod:`bnrepro.chapters.X`: what the chapter
loads from the results store, the tables and summaries it shows, and its
scored claims. Every chapter module offers the same entry point,
``claims(profile, device=None) -> list[Claim]``, which the scorecard calls;
the notebook scores the same runs with the same code, so the two can never
disagree.

:data:`CHAPTERS` is the one place that lists the chapters and their order
(a test checks it against ``_toc.yml``). The book's other pages, the
introduction, the scorecard and the references, summarize the chapters and
have no claims of their own (:data:`SUMMARY_PAGES`).

This package is a registry: it imports its members by name when asked
(:func:`chapters`); the members import only from the tiers below.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

#: (page, title, module) of every chapter with claims, in book order.
CHAPTERS: tuple[tuple[str, str, str], ...] = (
    ("book/lenet", "LeNet with BN (d2l)", "lenet"),
    ("book/bn_first_principles", "BN from first principles", "bn_first_principles"),
    ("book/bn_training", "BN in training (Ioffe & Szegedy)", "bn_training"),
    ("book/bn_recipe", "Accelerating BN networks: the recipe", "bn_recipe"),
    ("book/ics", "Is it internal covariate shift?", "ics"),
    ("book/skipinit", "SkipInit (De & Smith)", "skipinit"),
    ("book/bn_only", "Training only BatchNorm (Frankle et al.)", "bn_only"),
    ("book/norm_family", "The normalization family", "norm_family"),
    ("book/multidevice_bn", "Batch statistics across devices", "multidevice_bn"),
    ("book/reader_questions", "Questions readers ask", "reader_questions"),
)
#: Pages of the book that summarize the chapters and score no claims themselves.
SUMMARY_PAGES = ("book/intro", "book/scorecard", "book/references")


@dataclasses.dataclass(frozen=True)
class Chapter:
    doc: str          # the chapter's page, e.g. "book/lenet"
    title: str
    module: str       # its module in this package, e.g. "lenet"
    claims: Callable  # claims(profile, device=None) -> list[Claim]


def chapters() -> list[Chapter]:
    """Every chapter with claims, in book order (importing each one's module)."""
    return [Chapter(doc, title, module, importlib.import_module(f"{__name__}.{module}").claims)
            for doc, title, module in CHAPTERS]
