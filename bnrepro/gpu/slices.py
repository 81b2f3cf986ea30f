"""Short, time-boxed slices of each experiment's paper profile, extrapolated to the whole sweep.

One slice per experiment (:func:`run_slice`):

* an experiment that trains (through :func:`bnrepro.training.loop.train`) runs one
  config of its sweep inside a :class:`~bnrepro.gpu.timebox.StepBox` (at most
  ``step_cap`` steps or ``soft_s`` seconds) and a :func:`~bnrepro.gpu.timebox.hard_limit`
  of ``hard_s`` seconds. Its steps/s times the planned steps of every config
  of the sweep gives the sweep's extrapolated time; its first losses are
  compared with the stored cpu-profile result of an overlapping config;
* a measurement on the device (no training steps) runs the sweep's configs
  whole, one after another, until the budget is spent;
* a measurement that computes on the CPU whatever the device is "not
  applicable": a GPU says nothing about its time.
"""

from __future__ import annotations

import gc
import time

import torch

from ..core.config import ExperimentConfig
from ..core.store import load
from ..training.loop import observe
from .timebox import HARD_LIMIT, BoxClosed, StepBox, hard_limit

#: Experiments that compute on the CPU whatever the device, and why.
CPU_ONLY = {
    "bn_equivalence": "float64 DDP check over gloo processes on the CPU",
    "sync_bn_cost": "times gloo processes on the CPU",
    "decoupling": "float64 gradient descent on the CPU",
    "skipinit_paths": "float64 Monte Carlo on the CPU",
}

#: Training-set sizes of the datasets (planned steps of configs that train on all of it).
TRAIN_SIZES = {"fashion-mnist": 60_000, "mnist": 60_000, "cifar10": 50_000}

#: Fields that only set how long a run is or how often it is observed: two configs
#: equal in every other field take the same first training steps.
LENGTH_FIELDS = frozenset({"epochs", "steps", "train_examples", "n_test", "eval_every",
                           "eval_every_steps", "probe_every", "checkpoints"})

#: Relative difference of a first-step loss below which GPU and CPU "agree": float32 on
#: another device, cuDNN's algorithms and TF32 convolutions move losses by ~1e-3.
LOSS_RTOL = 1e-2
#: Losses are compared over this many first steps: later, rounding differences grow chaotically.
FIRST_STEPS = 50

STATUSES = ("measured", "timeout", "error", "not applicable")


def planned_steps(cfg: ExperimentConfig) -> int | None:
    """Optimizer steps a config's run plans (as :func:`bnrepro.training.loop.train` counts them), or None."""
    max_steps = getattr(cfg, "max_steps", None)
    if isinstance(max_steps, int) and not isinstance(max_steps, bool):
        return max_steps
    f = cfg.to_dict()
    if "steps" in f and "epochs" not in f:
        return int(f["steps"])
    if "epochs" not in f or "batch_size" not in f:
        return None
    n = f.get("n_train") or TRAIN_SIZES.get(f.get("dataset"))
    if not n:
        return None
    b = f["batch_size"]
    per_epoch = n // b if n % b == 1 else -(-n // b)  # train() drops a last batch of one sample
    return f["epochs"] * per_epoch


def overlaps(a: ExperimentConfig, b: ExperimentConfig) -> bool:
    """Same experiment and equal in every field outside :data:`LENGTH_FIELDS`."""
    if a.experiment != b.experiment:
        return False
    da, db = a.to_dict(), b.to_dict()
    return all(da[k] == db[k] for k in da if k not in LENGTH_FIELDS)


def pick_config(configs: list, reference: list) -> tuple[ExperimentConfig, ExperimentConfig | None]:
    """The config to slice: the first that overlaps a reference-profile config (so its first
    losses can be compared), else the first; and that reference config (or None)."""
    for cfg in configs:
        for ref in reference:
            if overlaps(cfg, ref):
                return cfg, ref
    return configs[0], None


def compare_losses(losses: list[float], ref: ExperimentConfig | None) -> dict:
    """The slice's first losses against the stored result of ``ref``, at the steps that result logged
    among the first :data:`FIRST_STEPS`."""
    if ref is None:
        return {"status": "no overlapping config"}
    stored = load(ref)
    if stored is None:
        return {"status": "no stored result", "config_hash": ref.hash()}
    logged = stored.data.get("history", {}).get("steps", []) if isinstance(stored.data, dict) else []
    pairs = [(int(s), float(v), losses[int(s)]) for s, v in logged if int(s) < min(len(losses), FIRST_STEPS)]
    if not pairs:
        return {"status": "no common steps", "config_hash": ref.hash()}
    rel = max(abs(g - c) / max(abs(c), 1e-12) for _, c, g in pairs)
    return {"status": "compared", "config_hash": ref.hash(), "device": stored.provenance.get("device"),
            "steps": [s for s, _, _ in pairs], "reference_losses": [c for _, c, _ in pairs],
            "losses": [g for _, _, g in pairs], "max_rel_diff": rel, "agree": rel <= LOSS_RTOL}


def _free(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _training_slice(exp, configs, reference, device, step_cap, soft_s, hard_s, synthetic) -> dict:
    cfg, ref = pick_config(configs, reference)
    out = {"kind": "training", "config_hash": cfg.hash(), "step_cap": step_cap}
    box = StepBox(step_cap, soft_s)
    try:
        with hard_limit(hard_s), observe(box):
            exp.run(cfg, device=device)
        out.update(status="measured", stopped_by="finished")
    except BoxClosed as closed:
        out.update(status="timeout" if closed.why == HARD_LIMIT else "measured", stopped_by=closed.why)
    except Exception as exc:  # noqa: BLE001 -- recorded in the report; the other slices go on
        out.update(status="error", reason=_error(exc))
    rate = box.steps_per_s()
    planned = [planned_steps(c) for c in configs]
    if None in planned and box.total:  # unknown lengths: assume the sliced config's
        planned = [p if p is not None else box.total for p in planned]
    out.update(steps=box.steps, steps_per_s=rate, first_step_s=box.first_step_s(),
               planned_steps=planned_steps(cfg), planned_steps_seen=box.total,
               sweep_steps=None if None in planned else sum(planned), losses=box.losses[:20])
    if rate and out["sweep_steps"] is not None:
        out["sweep_s"] = out["sweep_steps"] / rate
        out["sweep_s_is"] = "extrapolated"
    if out["status"] == "error" and box.steps == 0:
        return out
    dataset = getattr(cfg, "dataset", None)
    out["loss_check"] = ({"status": f"not compared: synthetic stand-in for {dataset}"} if dataset in synthetic
                         else compare_losses(box.losses, ref))
    return out


def _measurement_slice(exp, configs, device, soft_s, hard_s) -> dict:
    """Run the sweep's configs whole, in turn, until ``soft_s`` has passed (each under what is
    left of ``hard_s``)."""
    out = {"kind": "measurement", "config_hash": configs[0].hash()}
    start, times = time.perf_counter(), []
    try:
        for cfg in configs:
            spent = time.perf_counter() - start
            if times and spent >= soft_s:
                break
            t0 = time.perf_counter()
            with hard_limit(hard_s - spent):
                exp.run(cfg, device=device)
            times.append(time.perf_counter() - t0)
        out.update(status="measured", stopped_by="finished" if len(times) == len(configs) else "wall budget")
    except BoxClosed as closed:
        out.update(status="timeout", stopped_by=closed.why)
    except Exception as exc:  # noqa: BLE001
        out.update(status="error", reason=_error(exc))
    out.update(runs_measured=len(times), run_s=times)
    if times:
        whole = len(times) == len(configs)
        out["sweep_s"] = sum(times) if whole else sum(times) / len(times) * len(configs)
        out["sweep_s_is"] = "measured" if whole else "extrapolated"
    return out


def run_slice(exp, profile: str, reference_profile: str, device, *, step_cap: int, soft_s: float,
              hard_s: float, synthetic: frozenset = frozenset()) -> dict:
    """One experiment's slice: a dict with ``experiment``, ``status`` (one of :data:`STATUSES`),
    ``sweep_runs``, and what was measured (see the module docstring).

    ``synthetic``: datasets replaced by random stand-ins (timing only: losses not compared).
    """
    configs = exp.sweep(profile)
    base = {"experiment": exp.name, "profile": profile, "sweep_runs": len(configs), "budget_s": hard_s}
    if exp.name in CPU_ONLY:
        return {**base, "status": "not applicable", "reason": CPU_ONLY[exp.name]}
    if hard_s < 1:
        return {**base, "status": "timeout", "stopped_by": HARD_LIMIT, "reason": "no time left in the box"}
    start = time.perf_counter()
    if exp.data_parallel:  # trains through bnrepro.training.loop.train
        out = _training_slice(exp, configs, exp.sweep(reference_profile), device, step_cap, soft_s, hard_s,
                              synthetic)
    else:
        out = _measurement_slice(exp, configs, device, soft_s, hard_s)
    _free(device)
    return {**base, **out, "wall_s": time.perf_counter() - start}
