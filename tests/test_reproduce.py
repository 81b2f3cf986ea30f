"""A committed result, recomputed from scratch, must come out the same.

results/lenet holds the smoke-profile runs (a 2,048-image subset); this test
re-runs one with today's code and compares it with what is stored.
"""

import math
from pathlib import Path

from bnrepro.core.store import path_for, read
from bnrepro.experiments.lenet import LeNetConfig, run
from conftest import needs_fashion_mnist

REPO = Path(__file__).resolve().parents[1]


@needs_fashion_mnist
def test_stored_smoke_result_reproduces():
    cfg = LeNetConfig.for_profile("smoke", norm="bn", seed=0)
    path = path_for(cfg, REPO / "results")
    assert path.exists(), f"{path.relative_to(REPO)} should be committed (bnrepro run lenet --profile smoke)"
    stored = read(path, cfg)
    fresh = run(cfg, device="cpu")
    old, new = stored["history"], fresh["history"]
    assert new["total_steps"] == old["total_steps"]
    # Same code, same seeds, CPU: the per-step losses agree to float tolerance
    # (summation order may differ with the thread count, hence not bit-exact).
    for (s_old, l_old), (s_new, l_new) in zip(old["steps"], new["steps"]):
        assert s_old == s_new and math.isclose(l_old, l_new, rel_tol=1e-3, abs_tol=1e-4)
    for key in ("train_loss", "test_loss"):
        assert math.isclose(old["epochs"][-1][key], new["epochs"][-1][key], rel_tol=1e-3)
    for key in ("train_acc", "test_acc"):
        assert abs(old["epochs"][-1][key] - new["epochs"][-1][key]) <= 2 / 512
