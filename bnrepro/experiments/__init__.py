"""The experiment registry: name -> (config class, run function, sweep).

An experiment is one module with a frozen config dataclass, ``run(cfg,
device=None) -> Result`` (one training run or measurement), and optionally
``sweep(profile) -> list[cfg]``: every config the chapter reads, which
``bnrepro run NAME --profile P`` computes through the results store.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Callable

from ..core.config import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    config: type[ExperimentConfig]
    run: Callable
    sweep: Callable[[str], list]
    doc: str = ""
    data_parallel: bool = False  # trains through bnrepro.training.loop.train: --nproc / --bn-mode apply


_REGISTRY: dict[str, Experiment] = {}


def register(config: type[ExperimentConfig], run: Callable, sweep: Callable | None = None, *,
             data_parallel: bool = False) -> None:
    """Add an experiment. ``data_parallel=True`` says that its run trains through
    :func:`bnrepro.training.loop.train`, so that it can run over several processes
    (:mod:`bnrepro.distributed.parallel`)."""
    name = config.experiment
    _REGISTRY[name] = Experiment(name, config, run,
                                 sweep or (lambda profile: [config.for_profile(profile)]),
                                 (run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else "",
                                 data_parallel)


def _load_all() -> None:
    """Import every module of this package: each registers its experiment(s)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def get_experiment(name: str) -> Experiment:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_experiments() -> list[Experiment]:
    _load_all()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
