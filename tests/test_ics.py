"""Tests of the ICS, landscape and decoupling measures on cases with known answers."""

import math

import pytest
import torch
from torch import nn

from bnrepro.measure.decoupling import (
    best_length,
    compose,
    decoupled_gd,
    gd,
    least_squares,
    linear_rate,
    scale_invariant_gd,
)
from bnrepro.measure.ics import (
    ActivationProbe,
    DeepLinearNet,
    distribution_drift,
    gaussian_classification,
    ics_from_closure,
    ics_measure,
    optimizer_update,
)
from bnrepro.measure.landscape import landscape_from_closure, landscape_measure, quadratic_beta
from bnrepro.models import MODELS, DistributionNoise, NoisyVGG, hold_noise, layer_groups
from bnrepro.nn import GhostBatchNorm


# --------------------------------------------------------------------------- landscape
def _quadratic(H):
    theta = nn.Parameter(torch.zeros(H.shape[0], dtype=torch.float64))
    return theta, (lambda: 0.5 * theta @ H @ theta)


def test_beta_of_a_quadratic_along_its_top_eigenvector_is_the_top_eigenvalue():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    lam = torch.tensor([7.0, 3.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    H = (q * lam) @ q.T
    theta, loss = _quadratic(H)
    with torch.no_grad():
        theta.copy_(2.0 * q[:, 0])  # the gradient H theta is along the top eigenvector
    out = landscape_from_closure(loss, [theta], step_sizes=(0.01, 0.05, 0.1))
    assert out["beta"] == pytest.approx(7.0, rel=1e-10)
    # the loss along -g is known in closed form: (1 - eta*7)^2 * 0.5 * 7 * 4
    expected = [0.5 * 7 * 4 * (1 - eta * 7) ** 2 for eta in (0.0, 0.01, 0.05, 0.1)]
    assert out["loss"] == pytest.approx(expected, rel=1e-10)
    assert torch.equal(theta.detach(), 2.0 * q[:, 0])  # parameters restored


def test_beta_of_a_quadratic_in_a_generic_direction_matches_closed_form_and_bound():
    torch.manual_seed(1)
    A = torch.randn(5, 5, dtype=torch.float64)
    H = A @ A.T + torch.eye(5, dtype=torch.float64)
    theta, loss = _quadratic(H)
    with torch.no_grad():
        theta.copy_(torch.randn(5, dtype=torch.float64))
    g = H @ theta.detach()
    out = landscape_from_closure(loss, [theta], step_sizes=(0.001, 0.01))
    assert out["beta"] == pytest.approx(quadratic_beta(H, g), rel=1e-9)
    assert out["beta"] <= float(torch.linalg.eigvalsh(H)[-1]) + 1e-9
    assert out["grad_change"][1] == pytest.approx(0.01 * float((H @ g).norm()), rel=1e-9)


def test_landscape_measure_leaves_a_bn_model_unchanged():
    torch.manual_seed(0)
    model = NoisyVGG("tiny", norm="bn", hidden=16)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = landscape_measure(model, x, y, step_sizes=(0.05, 0.1))
    assert out["loss_max"] >= out["loss_min"] and math.isfinite(out["beta"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# --------------------------------------------------------------------------- ICS
def test_a_network_with_one_layer_has_zero_ics():
    torch.manual_seed(0)
    model = DeepLinearNet(in_features=8, width=8, depth=1, num_classes=3)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    out = ics_measure(model, x, y, lr=0.5)
    assert out["l2"] == [0.0] and out["cos"] == [1.0] and len(out["grad_norm"]) == 1


def test_ics_of_a_two_layer_linear_net_matches_the_hand_computed_gradient():
    # L = 0.5 * (w2 * w1 * x - t)^2 with scalars: G'_2 is dL/dw2 after w1 <- w1 - lr * dL/dw1
    w1 = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
    w2 = nn.Parameter(torch.tensor(-1.3, dtype=torch.float64))
    x, t, lr = 2.0, 0.5, 0.1
    closure = lambda: 0.5 * (w2 * w1 * x - t) ** 2  # noqa: E731
    r = 0.7 * -1.3 * x - t
    g1, g2 = r * -1.3 * x, r * 0.7 * x
    w1_new = 0.7 - lr * g1
    g2_new = (-1.3 * w1_new * x - t) * w1_new * x
    out = ics_from_closure(closure, [[w1], [w2]], lr)
    assert out["l2"][1] == pytest.approx(abs(g2 - g2_new), rel=1e-12)
    assert out["cos"][1] == pytest.approx(math.copysign(1.0, g2 * g2_new))
    assert w1.item() == 0.7 and w2.item() == -1.3  # restored


def test_ics_measure_restores_bn_state_and_counts_layers():
    torch.manual_seed(0)
    model = DeepLinearNet(in_features=8, width=8, depth=4, num_classes=3, norm="bn")
    assert [len(g) for g in layer_groups(model)] == [3, 3, 3, 1]  # weight + BN gamma, beta
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = ics_measure(model, x, y, lr=0.1)
    assert len(out["l2"]) == 4 and out["l2"][0] == 0.0 and all(v > 0 for v in out["l2"][1:])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_gaussian_classification_labels_come_from_a_linear_teacher():
    data = gaussian_classification(n_train=200, n_test=50, dim=5, num_classes=3, seed=0)
    assert data.x_train.shape == (200, 5) and data.num_classes == 3
    again = gaussian_classification(n_train=200, n_test=50, dim=5, num_classes=3, seed=0)
    assert torch.equal(data.y_train, again.y_train)


def test_optimizer_update_is_the_step_sgd_takes_with_momentum():
    """G' is measured after the step the optimizer would actually take: with momentum, the buffer counts."""
    torch.manual_seed(0)
    model = DeepLinearNet(in_features=6, width=6, depth=3, num_classes=3)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):  # fill the momentum buffers
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    update = optimizer_update(opt)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    predicted = [update(p, p.grad) for p in params]
    opt.step()
    for p, b, d in zip(params, before, predicted):
        assert torch.allclose(b - p.detach(), d, atol=1e-7)
        assert d.norm() > 1.5 * 0.1 * p.grad.norm()  # the momentum step is larger than lr * G


def test_ics_with_plain_sgd_is_the_lr_gradient_step_and_momentum_makes_it_larger():
    torch.manual_seed(0)
    model = DeepLinearNet(in_features=6, width=6, depth=4, num_classes=3)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    plain = torch.optim.SGD(model.parameters(), lr=0.05)
    a, b = ics_measure(model, x, y, lr=0.05), ics_measure(model, x, y, lr=0.05, update=optimizer_update(plain))
    assert a["l2"] == pytest.approx(b["l2"], rel=1e-6)
    assert a["step_norm"] == pytest.approx([0.05 * g for g in a["grad_norm"]], rel=1e-6)
    heavy = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(20):
        heavy.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        heavy.step()
    c = ics_measure(model, x, y, lr=0.05, update=optimizer_update(heavy))
    assert all(s > 3 * 0.05 * g for s, g in zip(c["step_norm"], c["grad_norm"]))


def test_landscape_by_distance_moves_the_same_distance_whatever_the_gradient():
    H = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    out = {}
    for scale in (1.0, 3.0):  # the same direction, a gradient three times larger
        theta = nn.Parameter(torch.tensor([scale, 0.0], dtype=torch.float64))
        out[scale] = landscape_from_closure(lambda: 0.5 * theta @ H @ theta, [theta], (0.1, 0.2), by_distance=True)
    # along the top eigenvector the gradient changes by 4 * d at distance d, however large the gradient
    for scale in (1.0, 3.0):
        assert out[scale]["grad_change"] == pytest.approx([0.4, 0.8], rel=1e-12)
        assert out[scale]["beta"] == pytest.approx(4.0, rel=1e-12) and out[scale]["by_distance"]


# --------------------------------------------------------------------------- noise layer, ghost BN, models
def test_noise_layer_statistics_and_redraw():
    torch.manual_seed(0)
    layer = DistributionNoise(mean_max=1.0, std_min=0.5, std_max=1.5)
    x = torch.zeros(400, 50)
    mus, sigmas = [], []
    for _ in range(30):
        noise = layer(x)
        assert noise.mean().item() == pytest.approx(layer.last_mu, abs=0.02)
        assert noise.std().item() == pytest.approx(layer.last_sigma, rel=0.03)
        mus.append(layer.last_mu)
        sigmas.append(layer.last_sigma)
    assert all(-1 <= m <= 1 for m in mus) and all(0.5 <= s <= 1.5 for s in sigmas)
    assert len(set(mus)) == 30  # a new distribution at every step
    layer.eval()
    assert torch.equal(layer(x), x)  # off at test time unless in_eval


def test_affine_noise_shifts_each_channel_for_the_whole_batch_and_keeps_sample_order():
    torch.manual_seed(0)
    layer = DistributionNoise(mean_max=1.0, std_min=0.5, std_max=1.5, kind="affine")
    x = torch.randn(64, 8, 5, 5)
    out, again = layer(x), layer(x)
    assert not torch.allclose(out, again)  # redrawn at every step
    for c in range(8):  # one increasing affine map per channel: a x + b with a in [0.5, 1.5], b in [-1, 1]
        xs, ys = x[:, c].flatten(), out[:, c].flatten()
        a = (ys[1] - ys[0]) / (xs[1] - xs[0])
        b = ys[0] - a * xs[0]
        assert torch.allclose(ys, a * xs + b, atol=1e-5)
        assert 0.5 <= a.item() <= 1.5 and -1 <= b.item() <= 1
        assert (ys[xs.argsort()].diff() >= 0).all()  # the order of the samples is kept
    flat = DistributionNoise(kind="affine")(torch.randn(16, 4))
    assert flat.shape == (16, 4)
    with pytest.raises(ValueError, match="kind"):
        DistributionNoise(kind="gaussian")


def test_hold_noise_reuses_the_last_draw():
    torch.manual_seed(0)
    model = NoisyVGG("tiny", norm="bn", noise=True, hidden=16)
    x = torch.randn(8, 1, 28, 28)
    with hold_noise(model):
        a, b = model(x), model(x)
    assert torch.allclose(a, b)
    assert not torch.allclose(model(x), a)


def test_ghost_bn_normalises_each_ghost_batch():
    bn = GhostBatchNorm(3, ghost_batch_size=4)
    x = torch.randn(12, 3, 5, 5) * 3 + 2
    out = bn(x)
    for chunk in out.split(4):
        assert chunk.mean(dim=(0, 2, 3)).abs().max() < 1e-5
        assert (chunk.var(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3


@pytest.mark.parametrize("norm,noise,kind", [("bn", False, "iid"), ("none", True, "iid"), ("ghost", False, "iid"),
                                             ("bnrepro", True, "iid"), ("bn", True, "affine")])
def test_vgg_builds_and_runs(norm, noise, kind):
    model = MODELS["noisy_vgg"]("tiny", norm=norm, noise=noise, hidden=16, noise_kind=kind)
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert len(model.taps()) == 5 and len(model.weight_layers()) == 6
    cifar = NoisyVGG("vgg11", norm=norm, in_channels=3, image_size=32, hidden=32)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_activation_probe_quantiles_and_drift():
    torch.manual_seed(0)
    model = NoisyVGG("tiny", norm="bn", hidden=16)
    probe = ActivationProbe(torch.randn(32, 1, 28, 28), model.taps(), every=1,
                             weights=[m.weight for m in model.weight_layers()], max_values=500)
    r1, r2 = probe.measure(model, 0), probe.measure(model, 1)
    q = r1["layers"][0]["quantiles"]
    assert len(q) == 19 and q == sorted(q)
    assert abs(r1["layers"][0]["mean"]) < 0.2  # BN output: mean about 0 (gamma=1, beta=0)
    assert distribution_drift([r1, r2]) == pytest.approx([0.0] * 5, abs=1e-12)  # same weights: no drift


# --------------------------------------------------------------------------- decoupling
def test_decoupled_parametrization_is_scale_invariant_and_its_gradient_orthogonal():
    prob = least_squares(dim=6, condition=100.0, seed=0)
    torch.manual_seed(0)
    v = torch.randn(6, dtype=torch.float64, requires_grad=True)
    g = torch.tensor(0.8, dtype=torch.float64)
    w1 = compose(g, v, prob.S)
    assert (w1 @ prob.S @ w1).item() == pytest.approx(0.64)  # ||w||_S = |g|
    assert torch.allclose(compose(g, 3.0 * v, prob.S), w1)
    (grad,) = torch.autograd.grad(prob.f(w1), v)
    assert abs((grad @ v).item()) < 1e-12
    v3 = (3.0 * v).detach().requires_grad_(True)
    (grad3,) = torch.autograd.grad(prob.f(compose(g, v3, prob.S)), v3)
    assert torch.allclose(grad3, grad / 3.0)  # gradient scales as 1/||v||


def test_exact_length_on_the_optimal_direction_solves_least_squares_in_one_step():
    prob = least_squares(dim=8, condition=1e3, seed=0)
    g = best_length(prob, 5.0 * prob.w_star)
    assert float(prob.f(compose(g, prob.w_star, prob.S))) < 1e-20
    # closed form for least squares: g* = u'v / ||v||_S with u = S w*
    v = torch.randn(8, dtype=torch.float64)
    expected = (prob.S @ prob.w_star) @ v / torch.sqrt(v @ prob.S @ v)
    assert float(best_length(prob, v)) == pytest.approx(float(expected), rel=1e-10)


def test_gd_matches_the_known_rate_on_a_diagonal_quadratic():
    prob = least_squares(dim=4, condition=10.0, seed=0)
    lam = torch.linalg.eigvalsh(prob.S)
    lr = 2.0 / float(lam[0] + lam[-1])  # the optimal constant step: rate ((k-1)/(k+1))^2 per step
    sub = gd(prob, torch.zeros(4, dtype=torch.float64), lr, 200)
    assert linear_rate(sub) <= ((10 - 1) / (10 + 1)) ** 2 + 1e-6
    assert gd(prob, torch.zeros(4, dtype=torch.float64), 2.5 / float(lam[-1]), 300)[-1] > 1e6  # beyond 2/L


def test_decoupled_gd_converges_for_step_sizes_where_gd_diverges():
    prob = least_squares(dim=10, condition=100.0, seed=0)
    w0 = 0.1 * torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert float(torch.linalg.eigvalsh(prob.S)[-1]) == pytest.approx(1.0)  # GD is stable for lr < 2
    for lr in (0.5, 10.0, 100.0):
        sub = decoupled_gd(prob, w0, lr, 150)["subopt"]
        assert sub[-1] < 0.1 * sub[0]
        if lr > 2:
            assert gd(prob, w0, lr, 150)[-1] > 1e6


def test_scale_invariant_gd_grows_the_norm_exactly_and_lowers_the_effective_lr():
    prob = least_squares(dim=6, condition=100.0, seed=0)
    v0 = 0.1 * torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = scale_invariant_gd(prob, v0, lr=0.5, steps=50)
    assert out["identity_gap"] < 1e-12
    norms = out["v_norm_sq"]
    assert all(b >= a - 1e-12 for a, b in zip(norms, norms[1:]))
    assert norms[-1] > norms[0]
    assert out["effective_lr"][-1] < out["effective_lr"][0]


# --------------------------------------------------------------------------- the chapter's scoring
def test_the_chapter_scores_every_registered_claim_and_the_cpu_sweeps_give_enough_seeds():
    from bnrepro.chapters import ics as chapter
    from bnrepro.core.claims import EMPIRICAL, registered_claims

    registered = [s.id for name in chapter.SWEEPS for s in registered_claims(name)]
    assert [s.id for s in chapter.SPECS] == registered or sorted(s.id for s in chapter.SPECS) == sorted(registered)
    seeds = {name: {c.seed for c in sweep("cpu") if getattr(c, "problem", "least_squares") == "least_squares"}
             for name, sweep in chapter.SWEEPS.items()}
    for name in chapter.SWEEPS:
        for spec in registered_claims(name):
            if spec.kind == EMPIRICAL:
                assert len(seeds[name]) >= spec.n, (spec.id, seeds[name])


def test_pairing_by_seed_and_convergence():
    import pandas as pd

    from bnrepro.chapters.ics import _paired, converged

    frame = pd.DataFrame({"arm": ["a", "a", "b", "b", "b"], "seed": [0, 1, 0, 1, 2], "x": [3.0, 5.0, 1.0, 4.0, 9.0]})
    assert _paired(frame, "x", "a", "b") == [2.0, 1.0]  # seed 2 has no partner
    assert _paired(frame, "x", "a", "b", "ratio") == [3.0, 1.25]
    assert converged([1.0, 0.5, 0.05], steps=2)
    assert not converged([1.0, 0.5, 0.2], steps=2)  # not 10x lower
    assert not converged([1.0, 1e9], steps=5)  # stopped early: diverged
