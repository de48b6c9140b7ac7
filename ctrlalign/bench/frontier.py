r"""Best-of-N's analytic KL and the reward–KL frontier it traces.

* :func:`bon_kl`, :func:`bon_n_for_kl`: Best-of-N's KL :math:`\log N - (N-1)/N` and its inverse.
* :func:`expected_best_of_n`, :func:`bon_reference_curve`: the unbiased best-of-N reward from a
  pool of base samples, and the reference frontier :math:`(\mathrm{KL}_j, \bar R_j)` over P pools.
* :func:`frontier_gap`, :func:`above_frontier`: a (KL, reward) point's signed distance above a
  reference curve, and whether it lies above it.

The frontier *of a benchmark result* (its pools, its controllers' points, the goal checks) is
:mod:`ctrlalign.bench.verdict`, built on these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "above_frontier",
    "bon_kl",
    "bon_n_for_kl",
    "bon_reference_curve",
    "expected_best_of_n",
    "frontier_gap",
]


def bon_kl(N: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
    r"""Analytic KL of the Best-of-N policy from the base policy: :math:`\log N - (N-1)/N`.

    Best-of-N draws N i.i.d. responses from p and keeps the highest-reward one. When rewards
    have no ties (a continuous reward distribution, or all N responses distinct), the kept
    response's reward quantile :math:`u = F(r(y))` has density :math:`N u^{N-1}` on [0, 1],
    i.e. :math:`\pi_N(y) = N F(r(y))^{N-1} p(y)`, so

    .. math:: \mathrm{KL}(\pi_N\|p) = \int_0^1 N u^{N-1} \log(N u^{N-1})\,du
              = \log N + (N-1)\,\mathbb{E}[\log u] = \log N - \frac{N-1}{N},

    with :math:`\mathbb{E}[\log u] = -1/N` for :math:`u\sim\mathrm{Beta}(N,1)`. This is the
    formula of Stiennon et al. (2020) and Gao et al. (2023); Beirami et al. (2024, "Theoretical
    guarantees on the best-of-n alignment policy") show it is an *upper bound* on the true KL
    when responses can repeat (ties), so it is the most favourable KL Best-of-N can be
    charged. Properties: 0 at N = 1, increasing in N (derivative :math:`(N-1)/N^2 \ge 0`),
    below :math:`\log N`, and :math:`\log N - 1 + 1/N`.

    Args:
        N: number of samples, ≥ 1 (any real ≥ 1 is accepted, for interpolation); a scalar or
            an array of any shape.

    Returns:
        A float for a scalar N, else an array of N's shape (float64), in nats.
    """
    n = np.asarray(N, dtype=np.float64)
    if np.any(~np.isfinite(n)) or np.any(n < 1):
        raise ValueError(f"bon_kl needs N >= 1, got {N!r}")
    out = np.log(n) - (n - 1.0) / n
    return float(out) if out.ndim == 0 else out


def bon_n_for_kl(kl: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
    r"""Inverse of :func:`bon_kl`: the real :math:`N \ge 1` with :math:`\log N - (N-1)/N = \mathrm{KL}`.

    :func:`bon_kl` is strictly increasing on [1, ∞) from 0, so the inverse exists for KL ≥ 0;
    found by Newton's method on :math:`x = \log N` (:math:`f(x) = x - 1 + e^{-x} - \mathrm{KL}`,
    :math:`f'(x) = 1 - e^{-x}`) started above the root (:math:`x_0 = \mathrm{KL} + 1`, where
    f > 0; f is convex so the iterates decrease monotonically to the root), with
    :math:`x \approx \sqrt{2\,\mathrm{KL}}` for tiny KL. Vectorised over any shape.
    """
    k = np.asarray(kl, dtype=np.float64)
    if np.any(~np.isfinite(k)) or np.any(k < 0):
        raise ValueError(f"bon_n_for_kl needs KL >= 0, got {kl!r}")
    x = k + 1.0
    for _ in range(100):
        step = (x - 1.0 + np.exp(-x) - k) / np.maximum(-np.expm1(-x), 1e-300)
        x = np.where(k < 1e-12, np.sqrt(2.0 * k), x - step)
        if np.all(np.abs(step) < 1e-13 * np.maximum(1.0, x)):
            break
    out = np.exp(x)
    return float(out) if out.ndim == 0 else out


def expected_best_of_n(rewards: Sequence[float] | np.ndarray, N: int | Sequence[int]) -> float | np.ndarray:
    r"""Unbiased estimate of :math:`\mathbb{E}[\max(r_1..r_N)]` from a pool of m ≥ N i.i.d. rewards.

    With the pool sorted, :math:`r_{(1)} \le \dots \le r_{(m)}`, the mean of the maximum over
    all :math:`\binom mN` subsets of size N is

    .. math:: \hat R_N = \sum_{i=N}^{m} \frac{\binom{i-1}{N-1}}{\binom{m}{N}}\, r_{(i)}

    (:math:`r_{(i)}` is the maximum of exactly :math:`\binom{i-1}{N-1}` subsets). This is the
    reward side of Best-of-N's reference frontier at every N ≤ m from one pool of m samples
    (e.g. m = 512): :math:`\hat R_1` is the pool mean and :math:`\hat R_m` its maximum.

    Args:
        rewards: m rewards of one prompt (a 1-D array).
        N: one size or several, each in [1, m].

    Returns:
        A float for a scalar N, else an array of N's shape.
    """
    r = np.sort(np.asarray(rewards, dtype=np.float64).ravel())
    m = r.size
    Ns = np.asarray(N)
    if m == 0 or np.any(Ns < 1) or np.any(Ns > m) or np.any(Ns != np.round(Ns)):
        raise ValueError(f"expected_best_of_n needs integer 1 <= N <= m = {m}, got {N!r}")
    i = np.arange(1, m + 1, dtype=np.float64)
    from scipy.special import gammaln

    def one(n: int) -> float:
        w = np.zeros(m)
        ok = i >= n
        # log C(i-1, n-1) - log C(m, n), in logs so that m = 512 does not overflow
        lw = (gammaln(i[ok]) - gammaln(n) - gammaln(i[ok] - n + 1)
              - (gammaln(m + 1) - gammaln(n + 1) - gammaln(m - n + 1)))
        w[ok] = np.exp(lw)
        return float(w @ r)

    out = np.array([one(int(n)) for n in Ns.ravel()]).reshape(Ns.shape)
    return float(out) if out.ndim == 0 else out


def bon_reference_curve(
    pools: Sequence[Sequence[float]] | np.ndarray, Ns: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Best-of-N's reference frontier from pools of base-policy rewards.

    For P clusters (a prompt and a seed) with m i.i.d. base samples each (``pools`` (P, m)),
    the frontier at K sizes :math:`N_j \le m` is :math:`(\mathrm{KL}_j, \bar R_j)` with
    :math:`\mathrm{KL}_j` = :func:`bon_kl` (N_j) and :math:`\bar R_j = \frac1P\sum_p
    \hat R_{N_j}(\text{pool}_p)` (:func:`expected_best_of_n`): one pool of m = 512 samples
    gives the whole curve N = 1..512 without drawing again.

    Returns:
        ``(kl (K,), mean_reward (K,), per_cluster (P, K))``; ``per_cluster[:, j]`` feeds
        :func:`~ctrlalign.bench.stats.paired_diff_ci` against a controller's per-cluster rewards at equal samples.
    """
    R = np.asarray(pools, dtype=np.float64)
    if R.ndim != 2:
        raise ValueError(f"pools must be (P, m), got shape {R.shape}")
    N = np.asarray(Ns)
    per = np.stack([np.atleast_1d(expected_best_of_n(row, N)) for row in R])  # (P, K)
    return np.atleast_1d(bon_kl(N)), per.mean(axis=0), per


def frontier_gap(
    kl: float | Sequence[float] | np.ndarray,
    reward: float | Sequence[float] | np.ndarray,
    ref_reward: Sequence[float] | np.ndarray,
    *,
    ref_n: Sequence[float] | np.ndarray | None = None,
    ref_kl: Sequence[float] | np.ndarray | None = None,
    interp: str = "log_n",
) -> np.ndarray:
    r"""Signed distance above a reference reward–KL curve: :math:`r - R_\text{ref}(\mathrm{KL})`.

    The reference is K points :math:`(\mathrm{KL}_j, R_j)` of a frontier, e.g. Best-of-N at
    :math:`N_j = 1, 2, 4, \dots, 512` with :math:`\mathrm{KL}_j` = :func:`bon_kl` (N_j) and
    :math:`R_j` its mean best-of-:math:`N_j` reward (:func:`expected_best_of_n`). Between the
    points the curve is piecewise linear, either

    * ``interp="log_n"`` (needs ``ref_n``): in :math:`\log N` — a point's KL is mapped to the
      Best-of-N size :math:`N^* =` :func:`bon_n_for_kl` (KL) with that KL and
      :math:`R_\text{ref}` is interpolated linearly in :math:`\log N` at :math:`\log N^*`
      (best-of-N reward grows roughly linearly in log N, so this is the natural chord);
    * ``interp="kl"``: linearly in KL itself (``ref_kl`` given, or computed from ``ref_n``).

    Args:
        kl: KL_i of P points, any shape broadcasting with ``reward``.
        reward: r_i of the P points.
        ref_reward: (K,) the reference curve's rewards.
        ref_n: (K,) its Best-of-N sizes (then ``ref_kl`` defaults to :func:`bon_kl` (ref_n)).
        ref_kl: (K,) its KLs, strictly increasing (needed when ``ref_n`` is not given).
        interp: ``"log_n"`` or ``"kl"``.

    Returns:
        :math:`r_i - R_\text{ref}(\mathrm{KL}_i)` of the broadcast shape; NaN where
        :math:`\mathrm{KL}_i` lies outside :math:`[\mathrm{KL}_1, \mathrm{KL}_K]` (the reference
        says nothing there: no extrapolation).
    """
    R = np.asarray(ref_reward, dtype=np.float64).ravel()
    if ref_n is not None:
        Nref = np.asarray(ref_n, dtype=np.float64).ravel()
        if Nref.shape != R.shape:
            raise ValueError(f"ref_n has {Nref.size} values for {R.size} rewards")
        K_ = bon_kl(Nref) if ref_kl is None else np.asarray(ref_kl, dtype=np.float64).ravel()
    elif ref_kl is not None:
        Nref = None
        K_ = np.asarray(ref_kl, dtype=np.float64).ravel()
    else:
        raise ValueError("frontier_gap needs ref_n or ref_kl")
    K_ = np.atleast_1d(np.asarray(K_, dtype=np.float64))
    if K_.shape != R.shape or R.size < 1:
        raise ValueError(f"reference KL ({K_.size}) and reward ({R.size}) differ in length or are empty")
    if np.any(np.diff(K_) <= 0):
        raise ValueError("the reference KLs (or Ns) must be strictly increasing")
    x, r = np.broadcast_arrays(np.asarray(kl, dtype=np.float64), np.asarray(reward, dtype=np.float64))
    inside = (x >= K_[0] - 1e-12) & (x <= K_[-1] + 1e-12)
    xc = np.clip(x, K_[0], K_[-1])
    if interp == "kl":
        ref = np.interp(xc, K_, R)
    elif interp == "log_n":
        if Nref is None:
            raise ValueError('interp="log_n" needs ref_n')
        ref = np.interp(np.log(bon_n_for_kl(np.maximum(xc, 0.0))), np.log(Nref), R)
    else:
        raise ValueError(f'interp must be "log_n" or "kl", got {interp!r}')
    return np.where(inside, r - ref, np.nan)


def above_frontier(
    kl: float | Sequence[float] | np.ndarray,
    reward: float | Sequence[float] | np.ndarray,
    ref_reward: Sequence[float] | np.ndarray,
    *,
    ref_n: Sequence[float] | np.ndarray | None = None,
    ref_kl: Sequence[float] | np.ndarray | None = None,
    interp: str = "log_n",
    margin: float = 0.0,
) -> np.ndarray:
    r"""Whether each (KL, reward) point lies strictly above the reference curve by more than ``margin``.

    :func:`frontier_gap` > margin, elementwise (same arguments). A point whose KL lies outside
    the reference's KL range gives ``False`` (its gap is NaN: read :func:`frontier_gap` to
    tell "below" from "outside").
    """
    gap = frontier_gap(kl, reward, ref_reward, ref_n=ref_n, ref_kl=ref_kl, interp=interp)
    return np.nan_to_num(gap, nan=-np.inf) > margin
