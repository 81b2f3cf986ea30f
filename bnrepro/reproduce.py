"""``bnrepro reproduce``: every stored run of the book's chapters (or of one), from committed code.

A chapter's claims are registered by the experiments whose stored runs score
them (:func:`bnrepro.core.claims.register_claims`); reproducing a chapter runs
those experiments' sweeps (resumable: stored runs are not repeated) and then
scores the chapter, which loads, or runs, anything else it reads.

Stored results must come from committed code: into the checkout's own
``results/`` folder, at a profile other than ``smoke``, a modified checkout is
refused unless ``allow_dirty`` (the results then record the diff's hash, and
the tests refuse them as committed results).
"""

from __future__ import annotations

import importlib

from .chapters import CHAPTERS, chapters
from .core.claims import registered_claims
from .core.provenance import REPO_ROOT, git_revision
from .core.store import results_dir
from .experiments import get_experiment, list_experiments
from .runner.sweep import run_sweep


class DirtyCheckout(ValueError):
    """Stored results would come from uncommitted code."""


def check_clean(profile: str, allow_dirty: bool = False) -> None:
    """Refuse (DirtyCheckout, naming the fix) to store results of modified code in the checkout's results/."""
    if profile == "smoke" or allow_dirty or results_dir().resolve() != (REPO_ROOT / "results").resolve():
        return
    if git_revision().endswith("+dirty"):
        raise DirtyCheckout(
            f"bnrepro/ has uncommitted changes, and results stored in {results_dir()} must come from committed "
            "code (each records its git revision). Commit first, or pass --allow-dirty (the results then record "
            "the diff's hash and the tests will not accept them as committed results).")


def chapter_experiments(module: str) -> list[str]:
    """The experiments whose registered claims chapter ``module`` scores."""
    list_experiments()  # import every experiment: each registers its claims
    ids = {s.id for s in importlib.import_module(f"bnrepro.chapters.{module}").SPECS}
    return sorted(exp for exp, specs in registered_claims().items() if ids & {s.id for s in specs})


def reproduce(profile: str, chapter: str | None = None, *, jobs: int = 1, device=None,
              allow_dirty: bool = False, log=print) -> bool:
    """Run and score every chapter (or ``chapter``, a module name) at ``profile``; True if no run failed."""
    known = [m for _, _, m in CHAPTERS]
    if chapter is not None and chapter not in known:
        raise ValueError(f"unknown chapter {chapter!r}; the chapters are: {', '.join(known)}")
    check_clean(profile, allow_dirty)
    ok = True
    for ch in chapters():
        if chapter is not None and ch.module != chapter:
            continue
        for name in chapter_experiments(ch.module):
            configs = get_experiment(name).sweep(profile)
            log(f"{ch.module}: {name}, {len(configs)} config(s) at profile {profile!r}")
            ok &= run_sweep(configs, jobs=jobs, device=device).ok
        claims = ch.claims(profile, device=device)
        verdicts = {}
        for c in claims:
            verdicts[c.verdict] = verdicts.get(c.verdict, 0) + 1
        log(f"{ch.module}: {len(claims)} claims scored: "
            + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())))
    return ok
