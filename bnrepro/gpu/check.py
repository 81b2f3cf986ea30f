"""``bnrepro gpu-check``: one prepared, time-boxed check of a CUDA device (10 minutes by construction).

In order, each part under its own wall-clock budget (:class:`Plan`):

1. the ``gpu``-marked tests (``tests/test_gpu.py``), in a pytest subprocess
   killed with its process group at its budget;
2. the bench (:mod:`bnrepro.measure.speed`: :func:`~bnrepro.measure.speed.bn_speed`) on the
   device, as ratios;
3. a slice of each experiment's paper profile (:mod:`bnrepro.gpu.slices`),
   each at most ``step_cap`` steps and ``slice_s`` seconds;

then one report (:mod:`bnrepro.gpu.report`) with the device's provenance.
Datasets that are not on the machine are replaced, for timing only, by
random stand-ins of the same shape (the report says which); nothing is
downloaded. ``--dry-run`` runs the same code at the smoke profile with a
step cap of 3 (on the CPU, for the tests) and never writes to ``results/gpu``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from ..core.config import ConfigError
from ..core.device import cpu_threads, describe_device, get_device
from ..core.provenance import REPO_ROOT, git_revision, utc_now
from ..core.version import __version__
from ..data.datasets import DATASETS, DataNotFoundError, cache_dir, load_dataset
from ..experiments import list_experiments
from ..measure.speed import bn_speed, loop_benchmark
from . import report as gpu_report
from .slices import CPU_ONLY, TRAIN_SIZES, run_slice
from .timebox import BoxClosed, hard_limit, hard_limit_available

#: The whole check's wall-clock box (seconds): one short loan of a GPU.
TOTAL_S = 600
#: Seconds kept free at the end of the box: interpreter start-up before the check, the report.
RESERVE_S = 30


@dataclasses.dataclass(frozen=True)
class Plan:
    """Budgets (seconds) of the parts; ``slice_s`` is what is left, shared by the slices."""

    tests_s: float = 150      # six gpu tests, two of them launch two processes
    bench_s: float = 60       # 2 x 110 DataLoader steps of 256 PIL images, then BN timing
    overhead_s: float = 60    # interpreter, CUDA context, data stand-ins, report
    step_cap: int = 300       # training steps per slice
    soft_fraction: float = 0.7  # a slice's step box closes at this share of its budget
    slices: int = 1
    total_s: float = TOTAL_S

    @property
    def slice_s(self) -> float:
        return (self.total_s - self.tests_s - self.bench_s - self.overhead_s) / self.slices

    def check(self) -> Plan:
        if self.slice_s < 10:
            raise ConfigError(f"{self.slices} slices leave {self.slice_s:.1f} s each in the {self.total_s:.0f} s "
                              "box; shrink the other budgets or raise total_s")
        return self


#: A dry run checks the code, not the device: every budget of its box is this many
#: times the GPU box's, a bound on a hang only, so that the dry run's outcome does
#: not depend on how fast (or busy) the CPU running it is.
DRY_RUN_SLACK = 10


def plan_for(dry_run: bool, slices: int) -> Plan:
    if not dry_run:
        return Plan(step_cap=300, slices=max(1, slices)).check()
    gpu = Plan()
    return Plan(tests_s=DRY_RUN_SLACK * gpu.tests_s, bench_s=DRY_RUN_SLACK * gpu.bench_s,
                overhead_s=DRY_RUN_SLACK * gpu.overhead_s, step_cap=3, slices=max(1, slices),
                total_s=DRY_RUN_SLACK * gpu.total_s).check()


# --------------------------------------------------------------------------- provenance
def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def device_provenance(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    idx = (device.index or 0) if cuda else None
    props = torch.cuda.get_device_properties(idx) if cuda else None
    return {"device": describe_device(device),
            "device_name": torch.cuda.get_device_name(idx) if cuda else platform.processor() or "cpu",
            "memory_gib": round(props.total_memory / 2 ** 30, 1) if cuda else None,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(idx))) if cuda else None,
            "driver": _driver() if cuda else None, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "torch": torch.__version__,
            "python": platform.python_version(), "bnrepro": __version__, "git_revision": git_revision(),
            "threads": torch.get_num_threads(),
            "hard_limit": "SIGALRM" if hard_limit_available() else "checked after each part only"}


# --------------------------------------------------------------------------- 1. the gpu tests
def run_gpu_tests(budget_s: float) -> dict:
    tests = REPO_ROOT / "tests" / "test_gpu.py"
    if not tests.is_file():
        return {"status": "not available", "reason": f"{tests} not found (not a source checkout)"}
    if budget_s < 1:
        return {"status": "timeout", "reason": "no time left in the box"}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", str(tests), "-m", "gpu", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}"]
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # its own process group: launched workers die too
        try:
            output, _ = proc.communicate(timeout=budget_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            timed_out = True
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        if xml.is_file():
            for suite in ET.parse(xml).getroot().iter("testsuite"):
                n, f, e, s = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
                counts["failed"] += f + e
                counts["skipped"] += s
                counts["passed"] += n - f - e - s
    if timed_out:
        status = "timeout"
    elif proc.returncode not in (0, 5) or counts["failed"]:  # 5: nothing collected
        status = "failed"
    else:
        status = "passed" if counts["passed"] else "skipped"
    tail = [line for line in output.strip().splitlines() if line.strip()][-1:] or [""]
    return {"status": status, **counts, "summary": tail[0][:300], "returncode": proc.returncode,
            "wall_s": time.perf_counter() - start, "budget_s": budget_s}


# --------------------------------------------------------------------------- 2. the bench
def run_bench(device: torch.device, budget_s: float, dry_run: bool) -> dict:
    loop_args = (dict(batch_size=32, steps=3, warmup=1, workers=(0,)) if dry_run
                 else dict(batch_size=256, steps=100, warmup=10, workers=(0, 2)))
    bn_args = dict(shape=(8, 4, 8, 8), repeats=3, warmup=1) if dry_run else {}
    start = time.perf_counter()
    out = {"budget_s": budget_s, "not_measured": "channels_last: not adopted by the package; the opt-in compiled BN "
                                        "(use_fused_kernels): not part of this check, make bench measures it"}
    if budget_s < 1:
        return {**out, "status": "timeout", "reason": "no time left in the box"}
    try:
        with hard_limit(budget_s):
            loop = loop_benchmark(device=device, verbose=False, **loop_args)
            bn = bn_speed(device=str(device), **bn_args)
        out.update(status="measured", tensor_loop_vs_dataloader=loop["ratio"],
                   tensor_loop_images_per_s=loop["tensor_loop_images_per_s"],
                   dataloader_images_per_s=loop["dataloader_images_per_s"], batch_size=loop["batch_size"],
                   package_bn_vs_native=bn["ratio"], bn_ms={"package": bn["ours_ms"], "native": bn["torch_ms"]},
                   bn_shape=list(bn["shape"]))
    except BoxClosed as closed:
        out.update(status="timeout", reason=closed.why)
    except Exception as exc:  # noqa: BLE001 -- recorded; the slices still run
        out.update(status="error", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    out["wall_s"] = time.perf_counter() - start
    return out


# --------------------------------------------------------------------------- data stand-ins
def _stand_in(name: str, n_train: int | None = None, n_test: int = 10_000) -> dict:
    """Random uint8 images of the dataset's shape and size: timing is all they are good for."""
    channels, side = (3, 32) if name == "cifar10" else (1, 28)
    n_train = n_train or TRAIN_SIZES[name]
    g = torch.Generator().manual_seed(0)

    def images(n):
        return torch.randint(0, 256, (n, channels, side, side), generator=g, dtype=torch.uint8)

    def labels(n):
        return torch.randint(0, 10, (n,), generator=g)

    return {"x_train": images(n_train), "y_train": labels(n_train), "x_test": images(n_test),
            "y_test": labels(n_test), "classes": [f"class {i}" for i in range(10)],
            "source": "synthetic stand-in (random pixels, for timing only)"}


@contextlib.contextmanager
def data_stand_ins(names, sizes: dict | None = None):
    """Inside the block every dataset in ``names`` loads: the real one when it is on this machine,
    else a random stand-in (a dataset cache in a temporary folder) of the real size, or of
    ``sizes[name] = (n_train, n_test)``. Downloads are switched off. Yields the names replaced."""
    saved = {k: os.environ.get(k) for k in ("BNREPRO_CACHE", "BNREPRO_OFFLINE")}
    os.environ["BNREPRO_OFFLINE"] = "1"
    tmp = Path(tempfile.mkdtemp(prefix="bnrepro-gpu-check-"))
    replaced = []
    try:
        for name in sorted(set(names) & set(DATASETS)):
            try:
                load_dataset(name, device="cpu", n_train=1, n_test=1, download=False)
                real = cache_dir() / f"{name}.pt"
                if real.is_file():
                    (tmp / real.name).symlink_to(real)
            except DataNotFoundError:
                torch.save(_stand_in(name, *(sizes or {}).get(name, ())), tmp / f"{name}.pt")
                replaced.append(name)
        os.environ["BNREPRO_CACHE"] = str(tmp)
        yield frozenset(replaced)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the whole check
def run_check(device=None, *, dry_run: bool = False, out_dir: str | Path | None = None,
              log=print) -> tuple[dict, Path]:
    """Run the check; write the report to ``out_dir`` (default ``results/gpu``; for a dry run a new
    temporary folder, never ``results/gpu``); returns the report and the JSON file's path."""
    dev = get_device(device if device is not None else (None if dry_run else "cuda"))
    if dev.type != "cuda" and not dry_run:
        raise ConfigError(f"gpu-check measures a CUDA device, and this would run on {dev}. To test the "
                          "check itself here, add --dry-run (e.g. bnrepro gpu-check --device cpu --dry-run)")
    if out_dir is not None:
        out = Path(out_dir)
    else:
        out = Path(tempfile.mkdtemp(prefix="bnrepro-gpu-check-dry-")) if dry_run else gpu_report.REPORT_DIR
    report_dir = gpu_report.REPORT_DIR.resolve()
    if dry_run and (out.resolve() == report_dir or report_dir in out.resolve().parents):
        raise ConfigError(f"a dry run is not a GPU measurement: it is not written to {gpu_report.REPORT_DIR}; "
                          "choose another --out")
    profile, reference = ("smoke", "cpu") if dry_run else ("paper", "cpu")
    exps = list_experiments()
    plan = plan_for(dry_run, sum(e.name not in CPU_ONLY for e in exps))
    start, started_at = time.perf_counter(), utc_now()
    deadline = start + plan.total_s - RESERVE_S

    def left(budget: float) -> float:
        """A part's budget, cut to what is left of the box: no part can run past the deadline."""
        return min(budget, deadline - time.perf_counter())

    log(f"gpu-check{' (dry run)' if dry_run else ''} on {describe_device(dev)}: box {plan.total_s:.0f} s = "
        f"tests {plan.tests_s:.0f} + bench {plan.bench_s:.0f} + {plan.slices} slices x {plan.slice_s:.0f} "
        f"+ overhead {plan.overhead_s:.0f}")
    prov = device_provenance(dev)
    log("1/3 gpu-marked tests ...")
    tests = run_gpu_tests(left(plan.tests_s))
    log(f"    {tests['status']}: {tests.get('summary', tests.get('reason', ''))}")
    needed = {getattr(c, "dataset", None) for e in exps for c in e.sweep(profile)} | {"fashion-mnist"}
    slices = []
    # On the CPU (a dry run) one thread: the tiny smoke steps ran several times slower on two busy cores.
    with data_stand_ins(needed) as synthetic, cpu_threads(dev):
        if synthetic:
            log(f"    not on this machine, replaced by random stand-ins for timing: {', '.join(sorted(synthetic))}")
        log("2/3 bench ...")
        bench = run_bench(dev, left(plan.bench_s), dry_run)
        bench["data"] = "synthetic stand-in" if "fashion-mnist" in synthetic else "real"
        log(f"    {bench['status']}" + (f": tensor loop {bench['tensor_loop_vs_dataloader']:.2f}x DataLoader, "
                                        f"package BN {bench['package_bn_vs_native']:.2f}x native"
                                        if bench["status"] == "measured" else f": {bench.get('reason')}"))
        log(f"3/3 {profile}-profile slices (<= {plan.step_cap} steps, {plan.slice_s:.0f} s each) ...")
        for exp in exps:
            budget = left(plan.slice_s)
            s = run_slice(exp, profile, reference, dev, step_cap=plan.step_cap, soft_s=plan.soft_fraction * budget,
                          hard_s=budget, synthetic=synthetic)
            slices.append(s)
            log(f"    {exp.name:<18} {s['status']:<15} "
                + (f"{s.get('steps', s.get('runs_measured', 0))} step(s)/run(s), sweep "
                   f"{gpu_report.duration(s.get('sweep_s'))}" if s["status"] != "not applicable" else s["reason"])
                + (f" -- {s['reason']}" if s["status"] == "error" else ""))
    prov.update(started_at=started_at, finished_at=utc_now(), wall_s=time.perf_counter() - start)
    report = {"format": gpu_report.FORMAT_VERSION, "dry_run": dry_run, "profile": profile,
              "reference_profile": reference, "provenance": prov,
              "plan": {**dataclasses.asdict(plan), "slice_s": plan.slice_s},
              "within_box": prov["wall_s"] <= plan.total_s, "synthetic_data": sorted(synthetic),
              "tests": tests, "bench": bench, "experiments": slices}
    report["totals"] = gpu_report.totals(report)
    js, md = gpu_report.write(report, out)
    log(f"report: {js} and {md.name} ({gpu_report.duration(prov['wall_s'])} wall)")
    return report, js


def ok(report: dict) -> bool:
    """No test failed or timed out, and no slice or bench ended in an error."""
    return (report["tests"]["status"] not in ("failed", "timeout") and report["bench"]["status"] != "error"
            and all(e["status"] != "error" for e in report["experiments"]))
