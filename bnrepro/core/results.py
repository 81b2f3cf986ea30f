"""What a run measured, read by attribute, and the one way a run builds its result.

Every experiment's config declares ``result_keys``: the measurements its
``run()`` always returns (the validated schema of its results). A run builds
its :class:`Result` with :func:`make_result`, which checks
those keys are there and stamps the provenance, so no experiment assembles
provenance by hand. The store checks the same keys when it loads a file
(:func:`bnrepro.core.store.check_schema`), so a file with a wrong or missing
field is reported by name and recomputed instead of failing later in a chapter.

:class:`Measurements` is the ``data`` of a result: a plain ``dict`` (it
serialises as JSON as it is) whose entries, nested ones included, read as
attributes -- ``r.data.history.epochs[-1].test_acc`` -- and whose missing
entries raise an error that names the result and what it does hold.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from .claims import rules_hash
from .provenance import provenance

__all__ = ["FORMAT_VERSION", "Measurements", "MissingMeasurement", "Result", "make_result",
           "missing_measurements"]

#: The version of the stored JSON layout (:meth:`Result.to_json`).
FORMAT_VERSION = 1


class MissingMeasurement(AttributeError, KeyError):
    """A measurement a result does not hold (an ``AttributeError`` and a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def _wrap(value: Any, where: str) -> Any:
    if isinstance(value, dict) and not isinstance(value, Measurements):
        return Measurements(value, where)
    if isinstance(value, list):
        return [_wrap(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


class Measurements(dict):
    """A result's measurements: a dict whose entries also read as attributes.

    ``where`` names the result in error messages (the experiment, and the file
    for a stored result).
    """

    __slots__ = ("where",)

    def __init__(self, data: dict | None = None, where: str = "result"):
        super().__init__(data or {})
        self.where = where

    def __getitem__(self, key):
        try:
            value = super().__getitem__(key)
        except KeyError:
            raise MissingMeasurement(f"{self.where} has no measurement {key!r}; it holds: "
                                     f"{', '.join(map(repr, self)) or 'nothing'}") from None
        return _wrap(value, f"{self.where}.{key}")

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self[name]

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __reduce__(self):  # pickles (and so crosses process boundaries) as a plain dict would
        return (Measurements, (dict(self), self.where))


@dataclasses.dataclass
class Result:
    """One finished run: its config, what it measured, and its provenance.

    ``data`` holds the measurements as JSON-able values (numbers, strings,
    lists, dicts), read by key or attribute (:class:`Measurements`);
    ``loaded`` says whether it came from the store.
    """

    experiment: str
    config: dict[str, Any]
    data: dict[str, Any]
    provenance: dict[str, Any]
    config_hash: str = ""
    loaded: bool = False
    parallel: dict[str, Any] | None = None  # the run's DataParallel spec (None: one process)
    source: str = ""  # the file it was loaded from, for messages

    def __post_init__(self):
        where = f"result of {self.experiment}" + (f" ({self.source})" if self.source else "")
        self.data = Measurements(self.data, where)

    def __getitem__(self, key):
        return self.data[key]

    def to_json(self) -> dict:
        return {"format": FORMAT_VERSION, "complete": True, "experiment": self.experiment,
                "config_hash": self.config_hash, "config": self.config,
                "provenance": self.provenance, "data": dict(self.data),
                **({"parallel": self.parallel} if self.parallel is not None else {})}


def missing_measurements(cfg, data: dict) -> list[str]:
    """The keys of ``cfg.result_keys`` (what its run always measures) that ``data`` lacks."""
    return [k for k in cfg.result_keys if k not in data]


def make_result(cfg, data: dict, *, device, started: float, seeds: dict, extra: dict | None = None) -> Result:
    """The :class:`Result` of one run of ``cfg``, provenance stamped: ``device`` it ran on,
    wall time since ``started`` (a ``time.perf_counter()`` reading), the ``seeds`` it used
    (what each seeded), the hash of the claims' rules the run is scored by
    (:func:`bnrepro.core.claims.rules_hash`), and any ``extra`` provenance of this experiment.

    Raises ``ValueError`` naming the experiment when ``data`` lacks a key of
    ``cfg.result_keys``: a run that does not measure what its chapter reads
    fails where it is made, not in the chapter.
    """
    missing = missing_measurements(cfg, data)
    if missing:
        raise ValueError(f"{cfg.experiment}: run() returned no {', '.join(map(repr, missing))} "
                         f"(its config's result_keys promise them)")
    return Result(cfg.experiment, cfg.to_dict(), dict(data),
                  {**provenance(device, time.perf_counter() - started, seeds),
                   "rules_hash": rules_hash(cfg.experiment), **(extra or {})})
