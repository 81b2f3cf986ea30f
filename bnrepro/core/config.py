"""Experiment configurations: frozen dataclasses with three profiles.

Every hyperparameter is a field with a default (open_lth habit), so a config
is fully described by its field values; its hash keys the results store.

Profiles:

* ``smoke`` -- seconds on a CPU: what the tests and nbval run;
* ``cpu``   -- the book's default: minutes on a 2-core laptop CPU;
* ``paper`` -- the paper's own settings, meant for a GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, ClassVar

PROFILES = ("smoke", "cpu", "paper")
PROFILE_ENV = "BNREPRO_PROFILE"


class ConfigError(ValueError):
    """A config field has a value that cannot work; the message names the field."""


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ConfigError(f"profile={profile!r} is not one of {', '.join(PROFILES)}")
    return profile


def current_profile(default: str = "cpu") -> str:
    """The profile chapters run at: ``$BNREPRO_PROFILE`` or ``default``."""
    value = os.environ.get(PROFILE_ENV, default) or default
    if value not in PROFILES:
        raise ConfigError(f"{PROFILE_ENV}={value!r} is not one of {', '.join(PROFILES)}; "
                          f"unset it or pick one of those")
    return value


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Base class of every experiment's config.

    Subclasses set ``experiment`` (the registry name), ``profiles`` (a map
    from profile name to the field overrides that profile applies on top of
    the defaults) and ``result_keys`` (what their run's ``data`` always
    holds). Validation happens in ``__post_init__`` via ``validate``,
    so a bad value fails when the config is made, naming the field.
    """

    experiment: ClassVar[str] = ""
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Keys every result of this experiment holds in its ``data``: the store refuses (and
    #: recomputes) a stored result without one. A class attribute, so no part of the hash.
    result_keys: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # keep configs hashable and JSON-stable
                object.__setattr__(self, f.name, tuple(value))
            elif f.type in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
                # lr=1 and lr=1.0 are the same experiment: give them one hash
                object.__setattr__(self, f.name, float(value))
            value = getattr(self, f.name)
            # inf/nan pass "lr > 0"-style checks (nan fails them with a puzzling message) and only
            # fail mid-run; no field of any experiment means anything non-finite, so refuse it here.
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ConfigError(f"{f.name}={value!r}: must be a finite number")
        self.validate()

    def validate(self) -> None:  # overridden by subclasses
        """Raise :class:`ConfigError` naming the field for impossible values."""

    @classmethod
    def for_profile(cls, profile: str, **overrides):
        """The config of ``profile`` with optional field overrides."""
        check_profile(profile)
        values = dict(cls.profiles.get(profile, {}))
        values.update(overrides)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {', '.join(unknown)}; "
                              f"fields are: {', '.join(sorted(names))}")
        return cls(**values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        return config_hash(self)


def config_hash(cfg: ExperimentConfig) -> str:
    """A stable 16-hex-digit hash of the experiment name and all field values.

    Canonical JSON (sorted keys, no whitespace) of ``{"experiment", "config"}``
    hashed with SHA-256. Adding a field with a default changes every hash of
    that experiment, which is intended: old results no longer describe the
    new code. ``tests/test_config.py`` pins a few hashes.
    """
    payload = {"experiment": cfg.experiment,
               "config": cfg.to_dict()}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def require(condition: bool, field: str, value: Any, why: str) -> None:
    """Raise ConfigError('<field>=<value>: <why>') unless ``condition``."""
    if not condition:
        raise ConfigError(f"{field}={value!r}: {why}")
