"""Path-depth theory of De & Smith (2020): BN biases residual blocks towards the identity.

Chapter "Why BN works: SkipInit" (book/skipinit.ipynb). A linear residual
network ``x_{i+1} = x_i + f_i(x_i)`` unrolls into ``2^d`` paths, one per
subset of the ``d`` residual branches it passes through. At initialisation
(independent zero-mean weights) paths are uncorrelated, so the output variance
is the sum of the path variances, and the share carried by paths through
exactly ``k`` branches is the coefficient of ``z^k`` in

    prod_i (1 - p_i + p_i z) ,   p_i = Var(f_i(x_i)) / Var(x_{i+1}),

i.e. the law of a sum of independent Bernoulli(p_i) variables: the number
of branches a "random unit of variance" passed through.

* Unnormalized ResNet (branch variance = input variance, each block doubles
  the variance): ``p_i = 1/2``, a Binomial(d, 1/2): typical paths go through
  d/2 branches.
* Normalized ResNet (BN at the start of each branch, branch output variance
  1): ``Var(x_i) = s + (i - 1)`` where ``s`` is the variance entering block 1
  from the stem, so the branch of block i is scaled by ``1/sqrt(s + i - 1)``
  relative to its skip path and ``p_i = 1/(s + i)``. The mean depth is
  ``sum_i p_i = H_{d+s} - H_s`` (harmonic numbers): about ``ln d``.

The convention (``stem_variance``) matters for the paper's headline number,
see :func:`headline`: with ``s = 1`` (block 1 receives a unit-variance stem
output; the stem is not a residual branch) 98.5% of the variance of a
10,000-block network comes from paths through <= 15 branches; with ``s = 0``
(block 1's skip path carries nothing, i.e. the stem/first branch counts as one
of the branches every path traverses) it is 97.0%, the paper's figure. The
two differ by a shift of one in k.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["branch_probabilities", "path_depth_distribution", "expected_path_depth", "harmonic",
           "share_within", "headline", "CONVENTIONS", "brute_force_distribution",
           "path_variance_mc", "block_variances"]

#: Counting conventions for the headline number: name -> (stem_variance, description).
CONVENTIONS = {
    "stem not a branch (s=1)": (1.0, "block 1 receives a unit-variance stem output; branch i is "
                                     "scaled by 1/sqrt(i) relative to its skip path"),
    "first branch always taken (s=0)": (0.0, "block 1's skip path carries no variance (the stem "
                                             "counts as a branch every path goes through)"),
}


def branch_probabilities(num_blocks: int, normalized: bool = True, stem_variance: float = 1.0) -> np.ndarray:
    """``p_i`` for blocks ``i = 1..num_blocks``: the share of ``Var(x_{i+1})`` coming from branch i.

    Normalized: ``1/(stem_variance + i)``; unnormalized: ``1/2``.
    """
    if num_blocks < 0 or int(num_blocks) != num_blocks:
        raise ValueError(f"num_blocks={num_blocks!r}: must be an integer >= 0")
    if stem_variance < 0:
        raise ValueError(f"stem_variance={stem_variance!r}: a variance is >= 0")
    if not normalized:
        return np.full(int(num_blocks), 0.5)
    i = np.arange(1, int(num_blocks) + 1, dtype=np.float64)
    return 1.0 / (stem_variance + i)


def path_depth_distribution(num_blocks: int, normalized: bool = True,
                            stem_variance: float = 1.0) -> np.ndarray:
    """Exact share of the output variance at initialisation carried by paths through k branches.

    Returns a float64 array ``P`` of length ``num_blocks + 1`` (k = 0..d) that
    sums to 1.

    Convention: ``num_blocks`` counts residual blocks only. The stem (first
    layer) is not a residual branch; it delivers ``stem_variance`` (relative
    to one branch's output variance) to the skip path of block 1. With the
    default ``stem_variance=1``, ``P[0]`` is the share of the path that skips
    every block, and block i's branch is scaled by ``1/sqrt(i)`` relative to its
    skip path (``p_i = 1/(i+1)``). ``stem_variance=0`` makes block 1's branch
    the only route (``p_1 = 1``), which is the same as counting the stem as a
    branch every path traverses: it shifts the distribution by one. For the
    unnormalized network every block doubles the variance (``p_i = 1/2``) and
    ``stem_variance`` plays no role.

    Algorithm: the coefficients of ``prod_i (1 - p_i + p_i z)`` by the
    recursion ``P_new[k] = (1 - p_i) P[k] + p_i P[k-1]``: each step is a convex
    combination of non-negative numbers, so there is no cancellation and the
    relative error of every entry stays O(d * eps). It is O(d^2) flops in d
    vectorised steps (about 0.1-0.2 s for d = 10,000). The exact values of
    the extreme tail (e.g. ``P[d] = 1/(d+1)!`` normalized, ``2^-d``
    unnormalized) lie below the float64 range for large d and come out as 0
    (underflow); everything above ~1e-300 is accurate.
    """
    p = branch_probabilities(num_blocks, normalized, stem_variance)
    d = len(p)
    out = np.zeros(d + 1, dtype=np.float64)
    out[0] = 1.0
    for i, pi in enumerate(p, start=1):  # after block i only k <= i can be non-zero
        head = out[:i + 1]
        head[1:] = head[1:] * (1.0 - pi) + head[:-1] * pi  # right side is evaluated before assigning
        head[0] *= 1.0 - pi
    return out


def harmonic(n: int) -> float:
    """The harmonic number ``H_n = 1 + 1/2 + ... + 1/n`` (``H_0 = 0``), summed exactly in float64."""
    if n < 0:
        raise ValueError(f"n={n!r}: H_n needs n >= 0")
    return float(math.fsum(1.0 / np.arange(1, n + 1))) if n else 0.0


def expected_path_depth(num_blocks: int, normalized: bool = True, stem_variance: float = 1.0) -> float:
    """Mean number of branches on a path, weighted by variance: the closed form.

    Normalized with integer ``stem_variance`` s: ``H_{d+s} - H_s`` (``H_{d+1} - 1``
    by default); unnormalized: ``d/2``.
    """
    if not normalized:
        return num_blocks / 2
    if float(stem_variance).is_integer():
        s = int(stem_variance)
        return harmonic(num_blocks + s) - harmonic(s)
    return float(math.fsum(branch_probabilities(num_blocks, True, stem_variance)))


def share_within(num_blocks: int, max_branches: int = 15, normalized: bool = True,
                 stem_variance: float = 1.0) -> float:
    """Share of the output variance from paths through ``<= max_branches`` residual branches."""
    return float(path_depth_distribution(num_blocks, normalized, stem_variance)[:max_branches + 1].sum())


def headline(num_blocks: int = 10_000, max_branches: int = 15) -> list[dict]:
    """The paper's headline number under each counting convention (and "fewer than" vs "or fewer").

    De & Smith: for 10,000 blocks "97% of the variance comes from paths through
    15 or fewer residual branches". One row per (convention, inequality) with
    the exact share, the mean path depth and the harmonic-number formula.
    """
    rows = []
    for name, (s, description) in CONVENTIONS.items():
        dist = path_depth_distribution(num_blocks, True, s)
        cdf = np.cumsum(dist)
        for label, k in ((f"<= {max_branches}", max_branches), (f"< {max_branches}", max_branches - 1)):
            rows.append({"convention": name, "paths through": label, "share": float(cdf[k]),
                         "mean depth": float(np.dot(np.arange(len(dist)), dist)),
                         "H formula": expected_path_depth(num_blocks, True, s),
                         "description": description})
    return rows


def brute_force_distribution(num_blocks: int, normalized: bool = True,
                             stem_variance: float = 1.0) -> np.ndarray:
    """The same distribution by enumerating all ``2^d`` paths (for checks; d <= ~16).

    Tracks the variance of every path literally: a path starts with the
    variance the stem delivers and, through the branch of block i, is
    multiplied by the branch's gain ``Var(branch_i) / Var(x_i)``; along a skip
    path it is unchanged. ``Var(x_i)`` is built up block by block by adding
    the branch variances (``1`` with BN, the input's own variance without).
    No ``p_i`` or generating function is used. ``stem_variance=0`` is taken
    as the limit s -> 0: only paths through branch 1 survive, with the gain
    ``s / s = 1`` there.
    """
    if num_blocks > 20:
        raise ValueError(f"num_blocks={num_blocks}: 2^{num_blocks} paths is too many to enumerate")
    start = stem_variance if normalized else 1.0
    var_in, gains = start, []
    for _ in range(num_blocks):
        branch_var = 1.0 if normalized else var_in  # BN makes the branch output unit-variance
        gains.append(branch_var / var_in if var_in > 0 else None)  # None: the s -> 0 limit
        var_in += branch_var  # independent paths: variances add
    out = np.zeros(num_blocks + 1)
    for path in itertools.product((False, True), repeat=num_blocks):
        v = start
        for took, gain in zip(path, gains):
            if took:
                v = 1.0 if gain is None else v * gain
        out[sum(path)] += v
    return out / out.sum()


# The simulations (explicit random networks, Figure 4 measurements) live in their own module.
from .resnet_variance import block_variances, path_variance_mc  # noqa: E402
