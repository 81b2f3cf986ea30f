"""The claims the ICS chapter's experiments are scored by (``noisy_bn``, ``ics_dln``, ``ghost_bn``,
``decoupling``), registered with each experiment before its runs; kept apart from
:mod:`bnrepro.experiments.ics`, which imports them, so that each module holds one concern.
"""

from __future__ import annotations

from ..core.claims import CHECK, EMPIRICAL, ClaimSpec, at_least, at_most, register_claims, within

_S18, _K18, _IS15 = "santurkar2018how", "kohler2019exponential", "ioffe2015batch"
_NOISY = "Sec. 2.1, Fig. 2"
_LAND = "Sec. 3.1, Fig. 4"

CLAIMS_NOISY = register_claims("noisy_bn", [
    ClaimSpec("noisy-bn-trains-like-bn", EMPIRICAL,
              "noisy BN (i.i.d. noise per activation, s = 1) trains about as well as BN: final train-acc "
              "difference, noisy BN - BN (same seed)", "about 0 (curves overlap)", within(0.0, 0.02),
              "the paper's noisy-BN and BN training curves overlap; 0.02 is a visible gap on our curves",
              source=_S18, where=_NOISY, n=5, unverified=True),
    ClaimSpec("noisy-bn-beats-standard", EMPIRICAL,
              "noisy BN (i.i.d., s = 1) trains better than the standard VGG: final train-acc difference",
              "> 0", at_least(0.0), "the paper's noisy-BN curve lies above the standard one; any gain counts",
              source=_S18, where=_NOISY, n=5, unverified=True),
    ClaimSpec("noisy-bn-less-stable", EMPIRICAL,
              "noisy BN's (i.i.d., s = 1) layer inputs are less stable than the standard VGG's: "
              "step-to-step drift, noisy BN / standard", "> 1 (less stable)", at_least(1.2, null=1.0),
              "20% more drift is a clear difference; above 1 but not 1.2 is partly",
              source=_S18, where=_NOISY, n=5, unverified=True),
    ClaimSpec("noise-stops-standard", EMPIRICAL,
              "the same i.i.d. noise (s = 1) stops the standard VGG from training: its final train accuracy",
              "fails to train", at_most(0.2), "chance is 0.1 for 10 classes; 0.2 is still near chance",
              source=_S18, where=_NOISY, n=5, unverified=True),
    ClaimSpec("affine-bn-trains-like-bn", EMPIRICAL,
              "noisy BN with a per-channel affine shift a·x + b shared by the batch (s = 1: shifted "
              "distributions, sample identity kept) trains about as well as BN: train-acc difference",
              "about 0 (curves overlap)", within(0.0, 0.02),
              "the paper's claim with a perturbation that moves the distribution without burying sample "
              "information; same band as for the i.i.d. noise",
              source=_S18, where=_NOISY, n=5),
    ClaimSpec("affine-bn-less-stable", EMPIRICAL,
              "with the affine shift (s = 1) noisy BN's layer inputs are less stable than the standard "
              "VGG's: drift, noisy BN / standard", "> 1 (less stable)", at_least(1.2, null=1.0),
              "the affine shift must make the inputs less stable for the test to mean anything; as above",
              source=_S18, where=_NOISY, n=5),
    ClaimSpec("bn-beats-standard", EMPIRICAL, "BN beats the standard VGG: final test-acc difference",
              "~83% vs ~80% (CIFAR-10)", at_least(0.0), "any gain with the interval above 0; the paper's "
              "3 points are for a fully trained VGG on CIFAR-10", source=_S18, where="Sec. 1, Fig. 1", n=5,
              unverified=True),
    ClaimSpec("ics-vgg", EMPIRICAL,
              "BN does not reduce ICS (VGG), G' after the optimizer's momentum step: median ||G - G'||, "
              "BN / standard", "similar or more", at_least(0.8),
              "'similar' read as at most 20% less than the standard network",
              source=_S18, where="Sec. 2.2, Fig. 3", n=5),
    ClaimSpec("smoother-loss", EMPIRICAL,
              "BN narrows the range of the loss along the gradient, at equal distances moved: BN / standard",
              "smaller", at_most(0.5, null=1.0),
              "the paper's bands differ several-fold; half is a clear reduction, below 1 but not 0.5 is partly",
              source=_S18, where=_LAND, n=5, unverified=True),
    ClaimSpec("predictive-gradient", EMPIRICAL,
              "BN makes the gradient more predictive (smaller largest change along it), at equal distances "
              "moved: BN / standard", "smaller", at_most(0.5, null=1.0), "as for the loss range",
              source=_S18, where=_LAND, n=5, unverified=True),
    ClaimSpec("beta-smoothness", EMPIRICAL,
              "BN lowers the effective β-smoothness (largest gradient change per distance moved): "
              "BN / standard", "smaller", at_most(0.5, null=1.0), "as for the loss range",
              source=_S18, where=_LAND, n=5, unverified=True),
    ClaimSpec("effective-lr-falls", EMPIRICAL,
              "BN stabilizes parameter growth: the effective lr η/||W||² of BN-preceded weights falls as "
              "they grow (end / start, median layer)", "larger weights, smaller gradients",
              at_most(0.9, null=1.0), "a fall of at least 10% over the run; below 1 but not 0.9 is partly",
              source=_IS15, where="Sec. 3.3", n=5),
])

CLAIMS_DLN = register_claims("ics_dln", [
    ClaimSpec("ics-dln", EMPIRICAL,
              "BN does not reduce ICS (25-layer deep linear network, plain SGD): median ||G - G'||, BN / standard",
              "similar or more", at_least(0.8), "'similar' read as at most 20% less than the standard network",
              source=_S18, where="Sec. 2.2, Fig. 3", n=5),
    ClaimSpec("ics-dln-cos", EMPIRICAL,
              "with BN, G and G' are nearly uncorrelated (deep linear network): median cos(G, G')",
              "about 0", at_most(0.2), "'nearly uncorrelated' read as a cosine of at most 0.2",
              source=_S18, where="Sec. 2.2, Fig. 3", n=5),
])

CLAIMS_GHOST = register_claims("ghost_bn", [
    ClaimSpec("ghost-bn-regularizes", EMPIRICAL,
              "noisier BN statistics regularize: test accuracy with ghost batches of 4, minus with BN over "
              "the whole batch of 128 (same seed)", "a regularizer", at_least(0.0),
              "a regularizer must improve test accuracy; any gain with the interval above 0",
              source=_IS15, where="Sec. 3.4", n=5),
    ClaimSpec("ghost-bn-lowers-test-loss", EMPIRICAL,
              "noisier BN statistics regularize: test loss with BN over 128, minus with ghost batches of 4",
              "a regularizer", at_least(0.0), "a regularizer must lower the test loss; any fall counts",
              source=_IS15, where="Sec. 3.4", n=5),
])

CLAIMS_DECOUPLING = register_claims("decoupling", [
    ClaimSpec("decoupled-lr-robust", EMPIRICAL,
              "GD on (g, v) converges over a far wider range of step sizes than GD on w (least squares, "
              "κ = 10³): log10 of the ratio of the largest converging step sizes of the grid",
              "robust to the step size", at_least(1.0),
              "GD on w diverges above 2/λmax; one order of magnitude more (the grid reaches 100)",
              source=_K18, where="Sec. 4 (least squares)", n=5, unverified=True, post_hoc=True, fmt="{:.2f}"),
    ClaimSpec("decoupled-linear-rate", EMPIRICAL,
              "GD on (g, v) converges linearly on least squares (κ = 10³) at a step size where GD on w "
              "diverges (10): fitted contraction of f - f* per step", "linear convergence",
              at_most(0.996, null=1.0),
              "0.996 = ((κ-1)/(κ+1))², the rate of f under GD on w at its best fixed step; below 1 is partly",
              source=_K18, where="Sec. 4 (least squares)", n=5, unverified=True, post_hoc=True, fmt="{:.4f}"),
    ClaimSpec("scale-invariance-identity", CHECK,
              "scale invariance: GD on the direction grows its norm exactly, ||v'||² = ||v||² + η²||∇||² "
              "(largest deviation)", "exact identity", at_most(1e-10),
              "float64 rounding over 500 steps", n=1, fmt="{:.1e}"),
])
