"""The ``bnrepro`` command: run experiments into the results store, check data, benchmark.

    bnrepro list                               experiments and their profiles
    bnrepro run lenet --profile cpu            the chapter's whole sweep (resumable)
    bnrepro run lenet --set norm=none --set seed=3   one config
    bnrepro run lenet --grid seed=0,1,2 --jobs 2     the sweep x 3 seeds, 2 runs at a time
    bnrepro run lenet --nproc 2 --bn-mode sync      data-parallel over 2 processes, synchronized BN
    torchrun --nnodes 2 --nproc-per-node 4 ... -m bnrepro run lenet --bn-mode sync   over machines
    bnrepro run skipinit_depth --profile paper --executor submitit   the sweep as SLURM jobs
    bnrepro reproduce --chapter lenet          one chapter's stored runs and claims (all chapters without --chapter)
    bnrepro data fashion-mnist [--fetch]       where the data is (or download it)
    bnrepro bench                              tensor-resident loop vs DataLoader
    bnrepro gpu-check                          the 10-minute GPU check: tests, bench, paper slices -> results/gpu/
    bnrepro gpu-check --device cpu --dry-run   the same check, tiny, on the CPU (into a temporary folder)
    bnrepro info                               versions, device, folders
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import signal
import sys

import torch

from .core.config import PROFILES, ConfigError, current_profile
from .core.data_parallel import BN_MODES, DataParallel
from .core.device import describe_device, get_device
from .core.provenance import git_revision
from .core.store import ResultsFolderError, results_dir
from .core.version import __version__
from .data.datasets import DataNotFoundError, cache_dir, data_dir, load_dataset
from .distributed.launch import WorkerError, torchrun_world
from .distributed.parallel import plan
from .experiments import get_experiment, list_experiments
from .gpu.check import ok, run_check
from .measure.speed import CONV_NETS, bn_speed, conv_speed, loop_benchmark
from .reproduce import reproduce
from .runner.parallel import require_data_parallel, run_torchrun
from .runner.sweep import EXECUTORS, Terminated, run_sweep


def _parse_value(field: dataclasses.Field, text: str):
    """Turn ``--set name=text`` into the field's type (int, float, bool, None, tuple, str)."""
    kind = str(field.type)
    if text.lower() in ("none", "null") and "None" in kind:
        return None
    try:
        if kind.startswith("bool"):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
        if kind.startswith("tuple"):
            inner = kind[kind.index("[") + 1:].split(",")[0].strip() if "[" in kind else "str"
            conv = {"int": int, "float": float}.get(inner, str)
            return tuple(conv(v) for v in text.split(",") if v)
    except ValueError:
        raise ConfigError(f"{field.name}={text!r}: expected a value of type {kind}") from None
    return text


def _overrides(config_cls, pairs: list[str]) -> dict:
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: write it as NAME=VALUE, e.g. --set lr=0.1")
        name, text = pair.split("=", 1)
        if name not in fields:
            raise ConfigError(f"--set {name}: {config_cls.__name__} has no field {name!r}; "
                              f"fields are: {', '.join(fields)}")
        out[name] = _parse_value(fields[name], text)
    return out


def cmd_list(args) -> int:
    for exp in list_experiments():
        sizes = ", ".join(f"{p}: {len(exp.sweep(p))} run(s)" for p in PROFILES)
        parallel = "; runs data-parallel (--nproc)" if exp.data_parallel else ""
        print(f"{exp.name:<16} {exp.doc}\n{'':<16} {sizes}{parallel}")
    return 0


def _grid(config_cls, pairs: list[str]) -> list[dict]:
    """``--grid seed=0,1,2 --grid lr=0.1,1`` -> the Cartesian product as override dicts."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    axes = []
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not text:
            raise ConfigError(f"--grid {pair!r}: write it as NAME=V1,V2,..., e.g. --grid seed=0,1,2")
        if name not in fields:
            raise ConfigError(f"--grid {name}: {config_cls.__name__} has no field {name!r}; "
                              f"fields are: {', '.join(fields)}")
        if str(fields[name].type).startswith("tuple"):
            raise ConfigError(f"--grid {name}: tuple fields cannot be gridded; use one --set per run")
        axes.append([(name, _parse_value(fields[name], v)) for v in text.split(",") if v])
    return [dict(combo) for combo in itertools.product(*axes)]


def _configs(exp, args) -> list:
    profile = args.profile or current_profile()
    if args.set:
        configs = [exp.config.for_profile(profile, **_overrides(exp.config, args.set))]
    else:
        configs = exp.sweep(profile)
    if args.grid:
        configs = [cfg.replace(**combo) for cfg in configs for combo in _grid(exp.config, args.grid)]
    unique = {}
    for cfg in configs:
        unique.setdefault(cfg.hash(), cfg)
    return list(unique.values())


def _submitit_params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise ConfigError(f"--submitit-param {pair!r}: write it as NAME=VALUE, "
                              "e.g. --submitit-param slurm_partition=gpu")
        for conv in (int, float):
            try:
                out[name] = conv(text)
                break
            except ValueError:
                continue
        else:
            out[name] = text
    return out


def cmd_run(args) -> int:
    exp = get_experiment(args.experiment)
    configs = _configs(exp, args)
    if torchrun_world() is not None:  # one of torchrun's processes: join them, run the configs in turn
        if args.executor != "local" or args.jobs != 1:
            raise ConfigError("under torchrun, runs go one after another over torchrun's processes; "
                              "leave --executor and --jobs out")
        run_torchrun(configs, DataParallel(args.nproc, args.bn_mode, args.ghost_batch_size),
                     device=args.device, force=args.force)
        return 0
    if args.executor == "local":
        get_device(args.device)  # a bad --device is one clear error, not one failure per run
    spec = DataParallel(args.nproc, args.bn_mode, args.ghost_batch_size)
    require_data_parallel(exp, spec)
    if spec.nproc > 1 and args.executor == "local":
        plan(spec, get_device(args.device))  # e.g. --device mps: one clear error, not one per run
    where = "" if spec.canonical().is_default else f", {spec.nproc} process(es) each, BN mode {spec.bn_mode}"
    print(f"{exp.name}: {len(configs)} config(s) at profile {args.profile or current_profile()!r}{where}; "
          f"results in {results_dir()}")
    report = run_sweep(configs, executor=args.executor, jobs=args.jobs, parallel=spec, device=args.device,
                       force=args.force, cluster=args.submitit_cluster,
                       params=_submitit_params(args.submitit_param))
    if not report.ok:
        print(f"bnrepro: {len(report.failed)} run(s) failed; the others are stored. Fix the cause and run "
              "the same command again: stored runs are not repeated.", file=sys.stderr)
        return 1
    return 0


def cmd_reproduce(args) -> int:
    ok = reproduce(args.profile or current_profile(), args.chapter, jobs=args.jobs, device=args.device,
                   allow_dirty=args.allow_dirty)
    if not ok:
        print("bnrepro: some runs failed; the others are stored. Fix the cause and run the same command "
              "again: stored runs are not repeated.", file=sys.stderr)
    return 0 if ok else 1


def cmd_data(args) -> int:
    data = load_dataset(args.name, device="cpu", download=True if args.fetch else None)
    print(f"{data.name}: {len(data.x_train)} train / {len(data.x_test)} test images "
          f"{tuple(data.x_train.shape[1:])}, {data.num_classes} classes, from {data.source}")
    return 0


def cmd_bench(args) -> int:
    loop_benchmark(batch_size=args.batch_size, steps=args.steps, device=args.device)
    device = str(get_device(args.device))
    for fused, what in ((False, "eager (default)"), (True, "fused (use_fused_kernels)")):
        try:
            speed = bn_speed(device=device, fused=fused)
        except Exception as err:  # torch.compile needs a working C++ compiler on CPU
            print(f"package BN, {what}: not measured ({type(err).__name__}: {str(err).splitlines()[0]})")
            continue
        print(f"package BN, {what}, vs native BN, forward+backward on {speed['shape']} ({speed['device']}, "
              f"{speed['threads']} threads): {speed['ours_ms']:.2f} ms vs {speed['torch_ms']:.2f} ms, "
              f"ratio {speed['ratio']:.2f}x")
    for net in CONV_NETS:
        r = conv_speed(net, device=device)
        parts = [f"{v} {r['ms'][v]:.1f} ms ({r['speedup'][v]:.2f}x; first-step gradient {r['grad_err'][v]:.0e} "
                 f"from float64's, {r['pool_flips'][v]} max-pool argmax flips)" for v in r["ms"]]
        parts += [f"{v}: not measured ({why})" for v, why in r["skipped"].items()]
        print(f"{net}, one SGD step at batch {r['batch_size']} ({r['device']}, {r['threads']} threads): "
              + "; ".join(parts))
    return 0


def cmd_gpu_check(args) -> int:
    report, _ = run_check(args.device, dry_run=args.dry_run, out_dir=args.out)
    return 0 if ok(report) else 1


def cmd_info(args) -> int:
    print(f"bnrepro {__version__} (git {git_revision()}), torch {torch.__version__}")
    print(f"device:  {describe_device(get_device(args.device))}")
    print(f"profile: {current_profile()}")
    print(f"data:    {data_dir()}\ncache:   {cache_dir()}\nresults: {results_dir()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnrepro", description=__doc__.replace("``", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("list", help="list experiments").set_defaults(func=cmd_list)
    p = sub.add_parser("run", help="run an experiment into the results store")
    p.add_argument("experiment")
    p.add_argument("--profile", choices=PROFILES, help="default: $BNREPRO_PROFILE or cpu")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a config field (repeatable); runs that one config only")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="run every config for each of these values (repeatable: Cartesian product)")
    p.add_argument("--force", action="store_true", help="recompute even if a stored result exists")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: $BNREPRO_DEVICE or best available)")
    g = p.add_argument_group("data parallelism (experiments that train)")
    g.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="processes per run (gloo on the CPU, NCCL with a GPU per process); batch_size stays global")
    g.add_argument("--bn-mode", choices=BN_MODES, default="local",
                   help="local: per-process BN statistics (plain DDP); sync: global batch statistics; "
                        "ghost: ghost batches of --ghost-batch-size within each process")
    g.add_argument("--ghost-batch-size", type=int, default=32, metavar="G",
                   help="samples per ghost batch with --bn-mode ghost (default 32)")
    g = p.add_argument_group("sweeps (interrupted sweeps resume: stored runs are not repeated)")
    g.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="runs at a time (default 1); with --nproc N that is J x N processes")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this machine's processes (default); submitit: SLURM, or its local executor")
    g.add_argument("--submitit-cluster", choices=("slurm", "local"),
                   help="submitit's cluster (default: SLURM when available, else local)")
    g.add_argument("--submitit-param", action="append", default=[], metavar="NAME=VALUE",
                   help="passed to submitit's update_parameters, e.g. slurm_partition=gpu, gpus_per_node=1")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("reproduce", help="every stored run of the book's chapters (or one), then their claims")
    p.add_argument("--chapter", help="one chapter's module name, e.g. lenet (default: every chapter)")
    p.add_argument("--profile", choices=PROFILES, help="default: $BNREPRO_PROFILE or cpu")
    p.add_argument("--jobs", type=int, default=1, metavar="J", help="runs at a time (default 1)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: $BNREPRO_DEVICE or best available)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="store results of uncommitted code into the checkout's results/ (they record the diff hash)")
    p.set_defaults(func=cmd_reproduce)
    p = sub.add_parser("data", help="say where a dataset is loaded from")
    p.add_argument("name", nargs="?", default="fashion-mnist")
    p.add_argument("--fetch", action="store_true", help="download with torchvision if missing")
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("bench", help="images/s of the training loop vs a DataLoader loop; package BN vs native BN; "
                       "conv nets eager vs channels_last vs torch.compile")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--device")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("gpu-check", help="time-boxed check of a CUDA device (<= 10 min): gpu tests, bench, "
                                         "a slice of every paper profile; one report in results/gpu/")
    p.add_argument("--device", help="cuda (default), cuda:N; another device only with --dry-run")
    p.add_argument("--dry-run", action="store_true",
                   help="smoke profile, 3 steps per slice: tests the check itself (e.g. on the CPU); "
                        "the report is not a GPU measurement and never goes to results/gpu/")
    p.add_argument("--out", metavar="DIR",
                   help="report folder (default results/gpu/; a dry run: a new temporary folder)")
    p.set_defaults(func=cmd_gpu_check)
    p = sub.add_parser("info", help="versions, device and folders")
    p.add_argument("--device")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    try:
        return args.func(args)
    except (ConfigError, DataNotFoundError, ResultsFolderError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"bnrepro: error: {msg}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"bnrepro: error: a data-parallel process failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during a sweep (Terminated)
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"\nbnrepro: {how}. Finished runs are stored; run the same command again to resume.",
              file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
