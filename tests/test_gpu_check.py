"""The GPU check: its time box, its slices and report, run for real as a dry run on the CPU."""

import json
import os
import time

import pytest
import torch

from bnrepro.cli import main
from bnrepro.core.claims import rules_hash
from bnrepro.core.config import ConfigError
from bnrepro.core.store import Result, save
from bnrepro.experiments import Experiment, list_experiments
from bnrepro.experiments.lenet import LeNetConfig
from bnrepro.gpu import report as gpu_report
from bnrepro.gpu.check import TOTAL_S, Plan, data_stand_ins, plan_for, run_check
from bnrepro.gpu.slices import CPU_ONLY, STATUSES, compare_losses, overlaps, pick_config, planned_steps, run_slice
from bnrepro.gpu.timebox import HARD_LIMIT, SOFT_BUDGET, STEP_CAP, BoxClosed, StepBox, hard_limit
from bnrepro.models import LeNet
from bnrepro.training.loop import _OBSERVERS, observe, train
from conftest import REPO
from test_train import toy_data


@pytest.fixture(scope="module")
def dry_report(tmp_path_factory):
    """One dry run of the whole check on the CPU, into a throw-away folder and store."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    old = os.environ.get("BNREPRO_RESULTS")
    os.environ["BNREPRO_RESULTS"] = str(tmp / "results")
    try:
        report, path = run_check("cpu", dry_run=True, out_dir=tmp / "report", log=lambda *_: None)
    finally:
        if old is None:
            os.environ.pop("BNREPRO_RESULTS", None)
        else:
            os.environ["BNREPRO_RESULTS"] = old
    return report, path


# --------------------------------------------------------------------------- the dry run's report
def test_dry_run_writes_one_json_and_one_markdown_report(dry_report):
    report, path = dry_report
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    md = (path.parent / gpu_report.MD_NAME).read_text()
    assert "DRY RUN" in md and "| experiment | status |" in md
    assert report["dry_run"] is True and report["profile"] == "smoke" and report["format"] == gpu_report.FORMAT_VERSION
    for key in ("device", "device_name", "driver", "torch", "cuda", "git_revision", "started_at", "wall_s"):
        assert key in report["provenance"], key


def test_every_experiment_appears_once_with_a_status(dry_report):
    report, path = dry_report
    md = (path.parent / gpu_report.MD_NAME).read_text()
    rows = {e["experiment"]: e for e in report["experiments"]}
    assert [e["experiment"] for e in report["experiments"]] == [e.name for e in list_experiments()]
    for exp in list_experiments():
        row = rows[exp.name]
        assert row["status"] in STATUSES, row
        assert f"| {exp.name} |" in md
        if exp.name in CPU_ONLY:
            assert row["status"] == "not applicable" and row["reason"]
        else:
            assert row["status"] == "measured", row  # the smoke slices fit their box on any CPU


def test_training_slices_are_capped_and_count_steps_as_train_does(dry_report):
    report, _ = dry_report
    cap = report["plan"]["step_cap"]
    training = [e for e in report["experiments"] if e.get("kind") == "training"]
    assert len(training) == sum(e.data_parallel for e in list_experiments())
    for e in training:
        assert 1 <= e["steps"] <= cap and len(e["losses"]) == e["steps"]
        assert e["stopped_by"] in (STEP_CAP, "finished")
        # planned_steps() predicts the total that train() reports for the sliced config
        assert e["planned_steps"] == e["planned_steps_seen"], e["experiment"]
        if e["steps_per_s"] is not None:
            assert e["sweep_s"] > 0 and e["sweep_steps"] >= e["planned_steps"]


def test_tests_and_bench_parts(dry_report):
    report, _ = dry_report
    tests = report["tests"]
    expected = "passed" if torch.cuda.is_available() else "skipped"
    assert tests["status"] == expected and tests["failed"] == 0 and tests["passed"] + tests["skipped"] > 0
    bench = report["bench"]
    assert bench["status"] == "measured", bench
    assert bench["tensor_loop_vs_dataloader"] > 0 and bench["package_bn_vs_native"] > 0


def test_dry_run_report_is_refused_as_a_gpu_measurement(dry_report):
    _, path = dry_report
    with pytest.raises(ValueError, match="dry run"):
        gpu_report.load_latest(path.parent)


def test_book_sentence_from_a_report(dry_report):
    report, _ = dry_report
    assert gpu_report.paper_time_sentence(None) == gpu_report.NONE_YET
    measured = {**report, "dry_run": False}
    text = gpu_report.paper_time_sentence(measured)
    assert text.startswith("Measured by the GPU check") and gpu_report.duration(measured["totals"]["sweep_s"]) in text


# --------------------------------------------------------------------------- the box, by construction
@pytest.mark.parametrize("slices", [1, 10, 14, 30])
def test_plan_fits_the_box_or_is_refused(slices):
    try:
        plan = plan_for(False, slices)
    except ConfigError:
        return
    assert plan.tests_s + plan.bench_s + plan.overhead_s + plan.slices * plan.slice_s <= TOTAL_S
    assert plan.slice_s >= 10 and 0 < plan.soft_fraction < 1


def test_plan_with_too_many_slices_is_refused():
    with pytest.raises(ConfigError, match="slices"):
        Plan(slices=100).check()


def test_step_box_stops_training_at_the_cap():
    torch.manual_seed(0)
    box = StepBox(5, soft_s=1e9)
    with pytest.raises(BoxClosed) as closed, observe(box):
        train(LeNet(num_classes=2), toy_data(), epochs=50, batch_size=16, lr=0.1, device="cpu")
    assert closed.value.why == STEP_CAP and box.steps == 5 and box.total > 5
    assert _OBSERVERS == []  # the observer is gone after the block


def test_step_box_stops_at_its_wall_budget():
    box = StepBox(10_000, soft_s=1e-9)
    with pytest.raises(BoxClosed) as closed, observe(box):
        train(LeNet(num_classes=2), toy_data(), epochs=50, batch_size=16, lr=0.1, device="cpu")
    assert closed.value.why == SOFT_BUDGET and box.steps == 1


def test_hard_limit_interrupts_work_without_steps():
    with pytest.raises(BoxClosed) as closed, hard_limit(0.2):
        time.sleep(30)
    assert closed.value.why == HARD_LIMIT


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_hard_limit_rejects_bad_seconds(bad):
    with pytest.raises(ValueError, match="positive"), hard_limit(bad):
        pass


# --------------------------------------------------------------------------- slices' parts
def _fake(run, trains: bool) -> Experiment:
    return Experiment("lenet", LeNetConfig, run, lambda profile: [LeNetConfig.for_profile("smoke")],
                      data_parallel=trains)


def _train_forever(cfg, device=None):
    torch.manual_seed(0)
    train(LeNet(num_classes=2), toy_data(), epochs=10_000, batch_size=16, lr=0.1, device="cpu")


def test_a_training_slice_stops_cleanly_at_its_wall_budget(tmp_results):
    s = run_slice(_fake(_train_forever, True), "smoke", "cpu", "cpu", step_cap=10**9, soft_s=0.5, hard_s=600)
    assert s["status"] == "measured" and s["stopped_by"] == SOFT_BUDGET and s["steps"] >= 1
    assert _OBSERVERS == []


def test_a_measurement_slice_is_killed_at_its_hard_limit():
    s = run_slice(_fake(lambda cfg, device=None: time.sleep(60), False), "smoke", "cpu", "cpu",
                  step_cap=3, soft_s=0.5, hard_s=1.0)
    assert s["status"] == "timeout" and s["stopped_by"] == HARD_LIMIT and s["runs_measured"] == 0


def test_a_failing_slice_is_an_error_not_a_crash():
    def boom(cfg, device=None):
        raise RuntimeError("out of memory\nand more")

    s = run_slice(_fake(boom, True), "smoke", "cpu", "cpu", step_cap=3, soft_s=5, hard_s=10)
    assert s["status"] == "error" and s["reason"] == "RuntimeError: out of memory"


def test_a_slice_with_no_time_left_does_not_start():
    def never(cfg, device=None):
        pytest.fail("a slice ran with no time left")

    s = run_slice(_fake(never, True), "smoke", "cpu", "cpu", step_cap=3, soft_s=0.1, hard_s=0.5)
    assert s["status"] == "timeout" and s["reason"] == "no time left in the box"
def test_overlap_ignores_only_run_length_fields():
    a = LeNetConfig.for_profile("cpu", seed=0)
    assert overlaps(a, a.replace(epochs=99)) and not overlaps(a, a.replace(lr=0.5))
    cfg, ref = pick_config([a.replace(seed=7), a.replace(epochs=3)], [a])
    assert cfg == a.replace(epochs=3) and ref == a


def test_planned_steps_counts_like_train():
    cfg = LeNetConfig.for_profile("cpu", n_train=1025, batch_size=256, epochs=2)
    assert planned_steps(cfg) == 2 * 4  # 1025 = 4 x 256 + 1: train() drops the batch of one
    assert planned_steps(cfg.replace(n_train=None)) == 2 * 235


def test_compare_losses_against_a_stored_result(tmp_results):
    ref = LeNetConfig.for_profile("smoke")
    assert compare_losses([1.0], None)["status"] == "no overlapping config"
    assert compare_losses([1.0], ref)["status"] == "no stored result"
    data = {key: 0 for key in ref.result_keys}  # every measurement a stored LeNet result holds
    data["history"] = {"steps": [[0, 2.0], [10, 1.0], [60, 0.5]]}
    save(Result(ref.experiment, ref.to_dict(), data, {"device": "cpu (1 thread)",
                                                        "rules_hash": rules_hash(ref.experiment)}), ref)
    same = compare_losses([2.0 * (1 + 1e-4)] + [1.5] * 9 + [1.0] + [0.9] * 70, ref)
    assert same["status"] == "compared" and same["steps"] == [0, 10] and same["agree"]  # step 60 is past the first 50
    assert not compare_losses([2.5] * 20, ref)["agree"]


def test_stand_ins_replace_missing_datasets_and_restore_the_environment():
    from bnrepro.data.datasets import load_dataset

    before = {k: os.environ.get(k) for k in ("BNREPRO_CACHE", "BNREPRO_OFFLINE")}
    with data_stand_ins(["mnist", "cifar10", None], sizes={"mnist": (64, 16), "cifar10": (64, 16)}) as replaced:
        assert os.environ["BNREPRO_OFFLINE"] == "1"
        for name in replaced:
            data = load_dataset(name, device="cpu")
            assert "synthetic" in data.source and len(data.x_train) == 64 and len(data.x_test) == 16
    assert {k: os.environ.get(k) for k in before} == before


# --------------------------------------------------------------------------- command line and docs
def test_cli_refuses_a_non_cuda_device_without_dry_run(capsys):
    assert main(["gpu-check", "--device", "cpu"]) == 2
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.parametrize("inside", ["", "dry"])
def test_cli_dry_run_never_writes_to_results_gpu(capsys, inside):
    out = gpu_report.REPORT_DIR / inside
    before = sorted(out.iterdir()) if out.is_dir() else None
    assert main(["gpu-check", "--device", "cpu", "--dry-run", "--out", str(out)]) == 2
    assert "not a GPU measurement" in capsys.readouterr().err
    assert (sorted(out.iterdir()) if out.is_dir() else None) == before  # refused before writing anything


def test_readme_shows_the_latest_report_or_says_none_yet():
    readme = (REPO / "README.md").read_text()
    assert "make gpu-check" in readme and "gpu_check.json" in readme
    md = gpu_report.REPORT_DIR / gpu_report.MD_NAME
    if md.exists():
        table = [line for line in md.read_text().splitlines() if line.startswith("|")]
        assert all(line in readme for line in table), "paste the latest results/gpu/gpu_check.md table into the README"
    else:
        assert "No GPU check has been measured yet" in readme
    gpu_report.load_latest()  # a committed report must be a real one (raises for a dry run)
