"""The claims the ``bn_training`` runs are scored by, registered with the experiment before its runs;
kept apart from :mod:`bnrepro.experiments.bn_training`, which imports them, so that each module holds one concern.
"""

from __future__ import annotations

from ..core.claims import EMPIRICAL, EXACT, ClaimSpec, at_least, at_most, register_claims

#: The claims the runs are scored by, fixed before the runs (their hash is stored with each run).
#: Per-seed values; "steps to X" claims are scored only where every compared run settles above X.
_IS = "ioffe2015batch"
CLAIMS = register_claims("bn_training", [
    ClaimSpec("bn-fewer-steps", EMPIRICAL,
              "Figure 1 network: steps to reach X without BN / with BN", "31.0M / 13.3M = 2.3 (Table 2)",
              at_least(2.0, null=1.0),
              "BN-Baseline needs 2.3 times fewer steps than Inception; we ask for 2, and call a ratio above 1 "
              "(BN faster) but below 2 partly", source=_IS, where="Fig. 1a; Table 2", n=5, post_hoc=True,
              fmt="{:.2f}"),
    ClaimSpec("bn-higher-accuracy", EMPIRICAL,
              "Figure 1 network: final test accuracy with BN minus without",
              "higher; BN-Baseline 72.7% vs Inception 72.2% (+0.5 points)", at_least(0.005, null=0.0),
              "the paper's gain is half a point; a smaller positive gain is partly", source=_IS,
              where="Fig. 1a; Table 2", n=5, fmt="{:+.4f}"),
    ClaimSpec("bn-stable-inputs", EMPIRICAL,
              "Figure 1 network: late drift of the last layer's sigmoid inputs, without BN / with BN",
              "much more stable with BN", at_least(2.0, null=1.0),
              "'much more stable' read as at most half the drift; a ratio above 1 but below 2 is partly",
              source=_IS, where="Fig. 1b, c", n=5, fmt="{:.2f}"),
    ClaimSpec("sigmoid-without-bn-fails", EMPIRICAL,
              "10 hidden sigmoid layers, Xavier init, no BN: final test accuracy (the better of x1 and x5)",
              "Inception with sigmoids: never better than chance", at_most(0.15),
              "chance is 0.10 on ten classes; 0.05 above it allows for test-set noise", source=_IS,
              where="Sec. 4.2.2", fmt="{:.3f}"),
    ClaimSpec("sigmoid-with-bn-trains", EMPIRICAL,
              "10 hidden sigmoid layers, Xavier init, BN at x5: final test accuracy / X",
              "BN-x5-Sigmoid: 69.8% / 72.2% = 0.967", at_least(0.95, null=0.25),
              "BN-x5-Sigmoid reaches 0.967 of the target; a network that learns (above 0.20, a quarter of X) "
              "but ends below 0.95 of X is partly", source=_IS, where="Sec. 4.2.2; Table 2", fmt="{:.3f}"),
    ClaimSpec("bn-less-careful-init", EMPIRICAL,
              "10 hidden sigmoid layers with BN, x1: final test accuracy from N(0, 0.01²) weights minus "
              "from Xavier", "BN lets us be less careful about initialization", at_least(-0.02),
              "weights about ten times smaller than Xavier's (which leave the plain network at chance) may "
              "cost the BN network at most two points", source=_IS, where="Abstract", fmt="{:+.4f}"),
    ClaimSpec("bn-x5-faster", EMPIRICAL,
              "small ReLU VGG with BN: steps to reach X at x1 / at x5", "13.3M / 2.1M = 6.3 (Table 2)",
              at_least(2.0, null=1.0),
              "BN-x5 is 6.3 times faster than BN-Baseline; we ask for 2, and call a ratio above 1 but below "
              "2 partly", source=_IS, where="Table 2", n=5, post_hoc=True, fmt="{:.2f}"),
    ClaimSpec("bn-x30-faster", EMPIRICAL,
              "small ReLU VGG with BN: steps to reach X at x1 / at x30", "13.3M / 2.7M = 4.9 (Table 2)",
              at_least(2.0, null=1.0),
              "BN-x30 is 4.9 times faster than BN-Baseline; we ask for 2, and call a ratio above 1 but below "
              "2 partly", source=_IS, where="Table 2", n=5, post_hoc=True, fmt="{:.2f}"),
    ClaimSpec("bn-x30-slower-than-x5", EMPIRICAL,
              "small ReLU VGG with BN: steps to reach X at x30 / at x5", "2.7M / 2.1M = 1.3 (Table 2)",
              at_least(1.1, null=1.0),
              "BN-x30 needs 1.3 times the steps of BN-x5; we ask for 1.1, and call a ratio above 1 but "
              "below 1.1 partly", source=_IS, where="Table 2", n=5, post_hoc=True, fmt="{:.2f}"),
    ClaimSpec("bn-x30-ends-higher", EMPIRICAL,
              "small ReLU VGG with BN: final test accuracy at x30 minus at x5", "74.8% - 73.0% = +1.8 points",
              at_least(0.01, null=0.0),
              "the paper's gain is 1.8 points; we ask for one point, and call a smaller positive gain partly",
              source=_IS, where="Table 2", n=5, fmt="{:+.4f}"),
    ClaimSpec("no-bn-fails-at-x5", EMPIRICAL,
              "small ReLU VGG without BN at x5 fails (NaN loss or final accuracy below 0.20): 1 per seed "
              "that fails, 0 per seed that trains",
              "Inception at x5: the model parameters reach machine infinity", at_least(1.0),
              "every seed must fail, as the paper's one run did", source=_IS, where="Sec. 4.2.2", n=5,
              fmt="{:.2f}"),
    ClaimSpec("bias-gradient-zero", EXACT,
              "gradient reaching the bias before BN, max |dL/db| in float64", "0: the bias can be ignored",
              at_most(1e-12), "float64 rounding of a sum that is exactly zero", source=_IS, where="Sec. 3.2",
              fmt="{:.1e}"),
    ClaimSpec("bias-redundant", EMPIRICAL,
              "Figure 1 BN network with vs without the bias before BN: |final test accuracy difference|",
              "0: its effect is canceled by the mean subtraction", at_most(0.005),
              "the two runs differ by float32 rounding only; half a point is far above that", source=_IS,
              where="Sec. 3.2", fmt="{:.4f}"),
    ClaimSpec("bn-remove-dropout", EMPIRICAL,
              "Figure 1 BN network: final test accuracy without dropout minus with dropout 0.2",
              "dropout removed from BN-Inception without increasing overfitting", at_least(-0.005),
              "removing dropout may cost at most half a point", source=_IS, where="Sec. 4.2.1",
              fmt="{:+.4f}"),
])
