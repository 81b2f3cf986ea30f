"""The results store: finished runs as small JSON files keyed by config hash.

A result lives at ``<results_dir>/<experiment>/<config hash>.json``. It is
written atomically (temporary file in the same folder, then ``os.replace``),
and carries ``"complete": true`` and its own config hash; a file that does
not parse, lacks either, was made from another config, or does not have the
shape of a result (:func:`check_schema`) is reported and recomputed, never
loaded. This module only stores and reads: the runner
(:func:`bnrepro.runner.run.load_or_run`) runs what is missing, and does not
run again a config whose complete file exists (open_lth's completion-marker
habit).

Before anything is run, the folder it will be stored in is checked to be
writable (:func:`prepare_folder`), so a read-only or misplaced results folder
is one clear error naming the fix, not a finished run thrown away; the same
check removes temporaries that a killed save left behind. Should a save still
fail, the result is written to a rescue folder and the error says where.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

from .claims import rules_hash
from .config import ExperimentConfig, config_hash
from .data_parallel import DataParallel
from .provenance import REPO_ROOT
from .results import FORMAT_VERSION, Result, missing_measurements

RESULTS_ENV = "BNREPRO_RESULTS"
#: A temporary file of a save older than this (seconds) is left over from a killed save: a save
#: writes a few kB and renames it at once, so no live save is anywhere near this old.
STALE_TMP_S = 600.0


def results_dir() -> Path:
    """``$BNREPRO_RESULTS``; else ``results/`` of the source checkout; else a user cache."""
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env).expanduser()
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / "results"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "bnrepro" / "results"


class CorruptResult(Exception):
    pass


class ResultsFolderError(RuntimeError):
    """The results folder cannot take a result; the message names the folder and the fix."""


def _fix() -> str:
    return f"set {RESULTS_ENV} to a writable folder (results folder now: {results_dir()})"


def prepare_folder(folder: Path) -> None:
    """Make ``folder`` and prove a file can be written in it, before anything is run into it;
    remove temporaries older than :data:`STALE_TMP_S` that killed saves left there.

    Raises :class:`ResultsFolderError` naming the folder and the fix (``BNREPRO_RESULTS``).
    """
    folder = Path(folder)
    for part in (folder, *folder.parents):  # the nearest existing part of the path
        if part.exists():
            if not part.is_dir():
                raise ResultsFolderError(f"results path {part} is a file, not a folder: move it away, or {_fix()}")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ResultsFolderError(f"cannot write results into {folder} ({exc.strerror or exc}): {_fix()}") from None
    now = time.time()
    for tmp in folder.glob("*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_S:
                tmp.unlink()
        except OSError:  # gone already (another process cleaned it), or not ours to remove
            pass


def rescue_dir() -> Path:
    """Where a result goes when its results folder refuses it: load it with ``BNREPRO_RESULTS`` set here."""
    return Path(tempfile.gettempdir()) / "bnrepro-rescued-results"


#: The top level of a stored result: key -> the JSON type it must have.
_SCHEMA = {"format": int, "experiment": str, "config_hash": str, "config": dict, "data": dict,
           "provenance": dict}


def check_schema(blob: dict, cfg: ExperimentConfig | None = None) -> None:
    """Raise :class:`CorruptResult` unless ``blob`` has the shape of a stored result (of ``cfg``).

    Checks the format version, the type of each top-level entry, that ``data``
    is not empty, and, given ``cfg``, the experiment name and the measurements
    its results always hold (``cfg.result_keys``). A file that passes can be
    read by the chapters without a ``KeyError`` later.
    """
    if blob.get("format") != FORMAT_VERSION:
        raise CorruptResult(f"format {blob.get('format')!r}; this version of bnrepro reads format {FORMAT_VERSION}")
    for key, kind in _SCHEMA.items():
        if not isinstance(blob[key], kind) or isinstance(blob[key], bool):
            raise CorruptResult(f"{key!r} is {type(blob[key]).__name__}, not {kind.__name__}")
    if not isinstance(blob.get("parallel"), (dict, type(None))):
        raise CorruptResult(f"'parallel' is {type(blob['parallel']).__name__}, not dict")
    if not blob["data"]:
        raise CorruptResult("'data' holds no measurements")
    if cfg is not None:
        if blob["experiment"] != cfg.experiment:
            raise CorruptResult(f"made by experiment {blob['experiment']!r}, not {cfg.experiment!r}")
        missing = missing_measurements(cfg, blob["data"])
        if missing:
            raise CorruptResult(f"'data' lacks {', '.join(map(repr, missing))}")


def _spec(parallel: DataParallel | None) -> DataParallel:
    return (parallel or DataParallel()).canonical()


def result_key(cfg: ExperimentConfig, parallel=None) -> str:
    """``<experiment>/<config hash><tag>``: the tag names a data-parallel run (e.g. ``-np2-sync``,
    see :class:`bnrepro.core.data_parallel.DataParallel`), empty for one process."""
    return f"{cfg.experiment}/{config_hash(cfg)}{_spec(parallel).tag()}"


def path_for(cfg: ExperimentConfig, root: Path | None = None, parallel=None) -> Path:
    """``<root>/<result key>.json`` (see :func:`result_key`)."""
    return (root or results_dir()) / f"{result_key(cfg, parallel)}.json"


def _jsonable(value):
    """Plain JSON types; non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def save(result: Result, cfg: ExperimentConfig, root: Path | None = None, parallel=None) -> Path:
    """Write ``result`` atomically; returns its path."""
    path = path_for(cfg, root, parallel)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.config_hash = config_hash(cfg)
    text = json.dumps(_jsonable(result.to_json()), indent=1, sort_keys=True, allow_nan=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are ordinary shareable files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_or_rescue(result: Result, cfg: ExperimentConfig, root: Path | None = None, parallel=None) -> Path:
    """:func:`save`; should that fail (the folder changed during the run), save to
    :func:`rescue_dir` and raise :class:`ResultsFolderError` saying where: a finished run is never lost."""
    try:
        return save(result, cfg, root, parallel)
    except OSError as exc:
        why = f"could not store the result in {path_for(cfg, root, parallel)} ({exc.strerror or exc})"
    try:
        kept = save(result, cfg, rescue_dir(), parallel)
    except OSError as again:
        raise ResultsFolderError(f"{why}, nor in {rescue_dir()} ({again.strerror or again}): {_fix()}") from None
    raise ResultsFolderError(f"{why}; it is kept in {kept}: {_fix()} and move it there, "
                             f"or set {RESULTS_ENV}={rescue_dir()} to load it from where it is")


def stale_rules(blob: dict) -> str | None:
    """Why a stored result no longer tests the claims now in the code, or None if it does.

    Each result records the hash of the claims' rules it was run to test
    (:func:`bnrepro.core.claims.rules_hash`); a rule changed since makes the
    result stale: it is re-run, never edited.
    """
    now = rules_hash(blob["experiment"])
    then = blob["provenance"].get("rules_hash")
    if then == now:
        return None
    return (f"run under other claim rules (rules hash {then or 'not recorded'}, now {now}): "
            f"the claims of {blob['experiment']} changed since it was run")


def read(path: Path, cfg: ExperimentConfig | None = None, parallel=None) -> Result:
    """Parse and check a stored result; raises CorruptResult with the reason."""
    try:
        blob = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptResult(f"cannot parse ({exc})") from None
    if not isinstance(blob, dict) or blob.get("complete") is not True:
        raise CorruptResult("no completion marker")
    for key in ("experiment", "config", "data", "provenance", "config_hash"):
        if key not in blob:
            raise CorruptResult(f"missing key {key!r}")
    check_schema(blob, cfg)
    if cfg is not None:
        if blob["config_hash"] != config_hash(cfg) or blob["config"] != _jsonable(cfg.to_dict()):
            raise CorruptResult("made from another config")
        spec = _spec(parallel)
        stored = blob.get("parallel")
        if (stored if stored is not None else _spec(None).to_dict()) != spec.to_dict():
            raise CorruptResult(f"made with another data-parallel setting ({stored})")
        stale = stale_rules(blob)
        if stale:
            raise CorruptResult(stale)
    return Result(blob["experiment"], blob["config"], blob["data"], blob["provenance"],
                  blob["config_hash"], loaded=True, parallel=blob.get("parallel"), source=str(path))


def load(cfg: ExperimentConfig, root: Path | None = None, verbose: bool = False,
         parallel=None) -> Result | None:
    """The stored result of ``cfg`` (run under ``parallel``), or None when absent or unusable."""
    path = path_for(cfg, root, parallel)
    if not path.exists():
        return None
    try:
        return read(path, cfg, parallel)
    except CorruptResult as exc:
        msg = f"stored result {path} is unusable ({exc}); it will be recomputed"
        if verbose:
            print(msg)
        else:
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return None
