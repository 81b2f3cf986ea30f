"""The page "Questions readers ask": its MLP arms, the identities it relies on, and its scoring rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnrepro.chapters import reader_questions as rq
from bnrepro.core.claims import INCONCLUSIVE
from bnrepro.core.config import ConfigError
from bnrepro.core.results import Result
from bnrepro.experiments.reader_questions import LRS, Affine, ReaderQuestionsConfig, hidden_linears, question_mlp, sweep


def test_the_affine_arm_has_bn_s_parameters_in_bn_s_place_without_the_normalization():
    torch.manual_seed(0)
    bn, affine = question_mlp(2, 8, "bn", in_features=5), question_mlp(2, 8, "affine", in_features=5)
    assert sum(p.numel() for p in bn.parameters()) == sum(p.numel() for p in affine.parameters())
    assert [type(m) for m in affine][2] is Affine and [type(m) for m in bn][2] is nn.BatchNorm1d
    x = torch.randn(16, 5) * 4 + 3
    h = affine[1](affine[0](x))
    assert torch.equal(affine[2](h), h)  # gamma = 1, beta = 0 at init: the identity, no normalization


def test_bad_norm_names_the_choices():
    with pytest.raises(ConfigError, match="norm"):
        ReaderQuestionsConfig.for_profile("smoke", norm="batch")


def test_bn_makes_the_gradient_orthogonal_to_the_weights_before_it():
    torch.manual_seed(1)
    model = question_mlp(3, 16, "bn", in_features=10)
    x, y = torch.randn(32, 10), torch.randint(0, 10, (32,))
    nn.functional.cross_entropy(model(x), y).backward()
    for lin in hidden_linears(model):
        w = lin.weight.detach()
        cos = float((lin.weight.grad * w).sum() / (lin.weight.grad.norm() * w.norm()))
        assert abs(cos) < 1e-5
    plain = question_mlp(3, 16, "none", in_features=10)
    nn.functional.cross_entropy(plain(x), y).backward()
    first = hidden_linears(plain)[0]
    assert abs(float((first.weight.grad * first.weight.detach()).sum())) > 1e-6  # no such identity without BN


def test_folding_bn_into_the_linear_before_it_keeps_the_outputs():
    assert rq.fold_deviation(seed=0, steps=5) < 1e-4
    model = question_mlp(2, 8, "bn", in_features=4).eval()
    folded = rq.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded)


def test_a_wrong_fold_is_caught():
    torch.manual_seed(0)
    model = question_mlp(1, 8, "bn", in_features=4)
    with torch.no_grad():
        model[2].running_mean.fill_(0.5)
        model[2].running_var.fill_(4.0)
    model.eval()
    x = torch.randn(32, 4)
    plain = nn.Sequential(*[m for m in model if not isinstance(m, nn.BatchNorm1d)]).eval()
    assert float((model(x) - plain(x)).abs().max()) > 1e-2
    assert float((model(x) - rq.fold_batchnorm(model)(x)).abs().max()) < 1e-5


def _fake(cfg, acc, std=(1.0, 1.0), wnorm=(1.0, 1.1)):
    data = {"history": {"epochs": [], "evals": [], "diverged": False}, "test_acc": acc,
            "std_init": [1.0, std[0]], "std_end": [1.0, std[1]], "wnorm_init": [1.0, wnorm[0]],
            "wnorm_end": [1.0, wnorm[1]], "parameters": 1, "data_source": "x"}
    return Result(cfg.experiment, cfg.to_dict(), data, {"wall_time_s": 1.0, "device": "cpu"})


def _fake_results(best_lr: float):
    out = []
    for c in sweep("cpu"):
        acc = 0.80 + (0.02 if c.lr == best_lr else 0.0) + 0.001 * c.seed
        acc += {(1, "bn"): -0.01, (6, "bn"): 0.03, (6, "affine"): 0.0}.get((c.depth, c.norm), 0.0)
        out.append(_fake(c, acc, std=(1.0, 4.0)))
    return out


def test_scoring_follows_the_rules():
    claims = {c.spec.id: c for c in rq.score(_fake_results(0.1), "cpu")}
    assert set(claims) == {s.id for s in rq.SPECS}
    assert claims["q-bn-hurts-shallow-mlp"].verdict == "reproduced"
    assert claims["q-bn-hurts-shallow-mlp"].bounds[0] == pytest.approx(-0.01)
    assert claims["q-bn-helps-deep-mlp"].verdict == "reproduced"
    assert claims["q-bn-is-not-its-affine"].bounds[0] == pytest.approx(0.03)
    assert claims["q-init-scale-drifts"].bounds[0] == pytest.approx(2.0)
    assert claims["q-bn-weights-grow"].verdict == "reproduced"


def test_a_best_lr_at_the_grids_edge_leaves_the_comparisons_inconclusive():
    claims = {c.spec.id: c for c in rq.score(_fake_results(max(LRS["cpu"])), "cpu")}
    for cid in ("q-bn-hurts-shallow-mlp", "q-bn-helps-deep-mlp", "q-bn-is-not-its-affine"):
        assert claims[cid].verdict == INCONCLUSIVE and claims[cid].n == 0


def test_weights_that_shrink_fail_the_exact_claim():
    results = [_fake(c, 0.8, wnorm=(1.0, 0.9) if c.norm == "bn" else (1.0, 1.1)) for c in sweep("cpu")]
    claims = {c.spec.id: c for c in rq.score(results, "cpu")}
    assert claims["q-bn-weights-grow"].verdict == "not reproduced"


def test_every_question_s_evidence_names_scored_claims():
    import importlib

    from bnrepro.chapters import chapters

    ids = {s.id for ch in chapters() for s in importlib.import_module(f"bnrepro.chapters.{ch.module}").SPECS}
    for _question, cited in rq.QUESTIONS.values():
        assert cited and set(cited) <= ids, set(cited) - ids


def test_the_page_scores_only_the_chapters_its_answers_cite():
    spec_ids = {"reader_questions": {"q-bn-weights-grow"}, "lenet": {"bn-lenet-train-acc"},
                "norm_family": {"gn-beats-layernorm", "x"}, "ics": {"smoother-loss"}}
    assert rq.cited_chapters(spec_ids) == ["norm_family", "ics"]
