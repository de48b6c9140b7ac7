r"""Metrics for matched-budget benchmarks: confidence intervals, diversity, KL, scales.

Everything here is a plain function of numbers or strings, tested against hand-computed values.

* :func:`mean_ci`, :func:`paired_diff_ci`: 95% intervals of a mean (Student t, or a bootstrap
  that resamples whole *clusters* — prompts — so that several seeds of one prompt are not
  counted as independent evidence).
* :func:`distinct_n`, :func:`diversity`: the distinct-n-gram ratio and a pooled diversity
  :math:`\prod_{n=2}^{4} \text{distinct-}n` (lower-cased words, n-grams pooled over the texts).
* :func:`paper_diversity`: the published protocol's diversity (RE-Control / ARGS evaluation
  script): per response :math:`\prod_{n=2}^{4} u_n/(g_n+1)` over punctuation-split tokens,
  then the mean over responses.
* :func:`bon_kl`, :func:`bon_n_for_kl`, :func:`expected_best_of_n`, :func:`frontier_gap`,
  :func:`above_frontier`: Best-of-N's analytic KL :math:`\log N - (N-1)/N` and the
  reward–KL frontier it traces, with a test of whether a (KL, reward) point lies above it.
* :func:`token_kl`: :math:`\sum_t [\log p_\text{ctrl}(y_t) - \log p_\text{base}(y_t)]` over a
  response's tokens — a single-sample estimate (see its docstring for what it is and is not).
* :func:`control_kl`: :math:`\mathrm{KL}(q_U\|p) = \sum_t \|u_t\|^2 / (2\sigma^2)`.
* :func:`head_row_norm`, :func:`logit_noise_scale`: σ expressed on the logit scale, σ·‖w‖.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "CI",
    "above_frontier",
    "bon_kl",
    "bon_n_for_kl",
    "bon_reference_curve",
    "control_kl",
    "distinct_n",
    "diversity",
    "expected_best_of_n",
    "frontier_gap",
    "head_row_norm",
    "logit_noise_scale",
    "mean_ci",
    "ngrams",
    "paired_diff_ci",
    "paper_diversity",
    "paper_diversity_one",
    "paper_tokens",
    "token_kl",
    "tokenize_words",
]


class CI(NamedTuple):
    """A mean with its confidence interval.

    Attributes:
        mean: the sample mean.
        low, high: interval bounds (equal to the mean when there is one value).
        n: number of values.
        method: "t" or "bootstrap".
    """

    mean: float
    low: float
    high: float
    n: int
    method: str

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "method": self.method}


def _t_interval(x: np.ndarray, level: float) -> tuple[float, float]:
    from scipy import stats

    m = float(x.mean())
    if x.size < 2:
        return m, m
    se = float(x.std(ddof=1)) / math.sqrt(x.size)
    if se == 0.0:
        return m, m
    q = float(stats.t.ppf(0.5 + level / 2, df=x.size - 1))
    return m - q * se, m + q * se


def mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
    method: str = "t",
    clusters: Sequence | None = None,
    num_resamples: int = 10_000,
    seed: int = 0,
) -> CI:
    r"""Mean of ``values`` with a ``level`` confidence interval.

    Args:
        values: the numbers (e.g. one per (prompt, seed)).
        level: confidence level, 0.95 by default.
        method: ``"t"``: Student-t interval :math:`\bar x \pm t_{n-1}\,s/\sqrt n`, with the
            values taken as independent; ``"bootstrap"``: percentile bootstrap of the mean.
        clusters: optional label per value (e.g. the prompt id). With ``method="bootstrap"``
            whole clusters are resampled (a cluster bootstrap: seeds of one prompt move
            together); with ``method="t"`` the values are first averaged within each cluster
            and the t interval is taken over cluster means. The reported mean is always the
            plain mean of all values.
        num_resamples: bootstrap resamples.
        seed: bootstrap seed (the interval is deterministic under it).

    Returns:
        :class:`CI`.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.isfinite(x).all():
        raise ValueError("mean_ci got non-finite values")
    m = float(x.mean())
    if clusters is not None:
        labels = list(clusters)
        if len(labels) != x.size:
            raise ValueError(f"clusters has {len(labels)} labels for {x.size} values")
        keys = list(dict.fromkeys(labels))
        groups = [x[[i for i, c in enumerate(labels) if c == k]] for k in keys]
    else:
        groups = None
    if method == "t":
        if groups is not None:
            lo, hi = _t_interval(np.array([g.mean() for g in groups]), level)
            # centre on the overall mean (equal to the mean of cluster means for balanced clusters)
            shift = m - float(np.mean([g.mean() for g in groups]))
            lo, hi = lo + shift, hi + shift
        else:
            lo, hi = _t_interval(x, level)
        return CI(m, lo, hi, int(x.size), "t")
    if method != "bootstrap":
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    if x.size < 2:
        return CI(m, m, m, 1, "bootstrap")
    rng = np.random.default_rng(seed)
    if groups is None:
        idx = rng.integers(0, x.size, size=(num_resamples, x.size))
        stats_ = x[idx].mean(axis=1)
    else:
        sums = np.array([g.sum() for g in groups])
        counts = np.array([g.size for g in groups], dtype=np.float64)
        idx = rng.integers(0, len(groups), size=(num_resamples, len(groups)))
        stats_ = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(stats_, [a, 1 - a])
    return CI(m, float(lo), float(hi), int(x.size), "bootstrap")


def paired_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    level: float = 0.95,
    method: str = "t",
    clusters: Sequence | None = None,
    num_resamples: int = 10_000,
    seed: int = 0,
) -> CI:
    """CI of the mean paired difference a − b (a[i] and b[i] share a prompt and a seed).

    Same options as :func:`mean_ci`, applied to the differences.
    """
    a_ = np.asarray(a, dtype=np.float64).ravel()
    b_ = np.asarray(b, dtype=np.float64).ravel()
    if a_.shape != b_.shape:
        raise ValueError(f"paired values must have equal length, got {a_.size} and {b_.size}")
    return mean_ci(a_ - b_, level=level, method=method, clusters=clusters, num_resamples=num_resamples, seed=seed)


# --------------------------------------------------------------------------------------------
# text diversity


def tokenize_words(text: str) -> list[str]:
    """Lower-cased whitespace tokens (the unit of the distinct-n-gram ratios)."""
    return str(text).lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of a token list (empty when it is shorter than n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: str | Iterable[str], n: int) -> float:
    """Distinct-n ratio: unique n-grams / total n-grams, pooled over ``texts``.

    A single string is one text. Tokens are :func:`tokenize_words`. Returns 0.0 when there
    are no n-grams at all (every text shorter than n words).
    """
    if isinstance(texts, str):
        texts = [texts]
    grams: list[tuple[str, ...]] = []
    for t in texts:
        grams.extend(ngrams(tokenize_words(t), n))
    if not grams:
        return 0.0
    return len(set(grams)) / len(grams)


def diversity(texts: str | Iterable[str], orders: Sequence[int] = (2, 3, 4)) -> float:
    r"""RE-Control's diversity :math:`\prod_{n\in\text{orders}} \text{distinct-}n` (default n = 2..4).

    Over one text it measures repetition inside the response (1 = no repeated n-gram); over
    several texts (pooled) it also measures how different they are from each other.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    out = 1.0
    for n in orders:
        out *= distinct_n(texts, n)
    return out


_PAPER_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def paper_tokens(text: str) -> list[str]:
    r"""Tokens of :func:`paper_diversity`: words (with inner apostrophes) and single punctuation marks.

    Case is kept. This stands in for NLTK's ``word_tokenize`` of the published script (which
    needs NLTK's punkt data, not available offline); it agrees on ordinary prose except for
    contractions (``"don't"`` is one token here, ``"do"`` + ``"n't"`` there) and runs of
    punctuation (``"..."`` is three tokens here, one there).
    """
    return _PAPER_TOKEN.findall(str(text))


def paper_diversity_one(text: str, orders: Sequence[int] = (2, 3, 4)) -> float:
    r"""Diversity of one response in the published protocol: :math:`\prod_{n} u_n / (g_n + 1)`.

    :math:`g_n` is the number of n-grams of the response's :func:`paper_tokens` (L tokens give
    :math:`g_n = \max(L-n+1, 0)`) and :math:`u_n` the number of distinct ones. The +1 in the
    denominator is the published script's (RE-Control ``metrics.py``, from ARGS): it makes the
    value defined for empty or short responses (0 then) and slightly below 1 even without any
    repetition, e.g. 3 distinct tokens give :math:`\tfrac{2}{3}\cdot\tfrac{1}{2}\cdot 0 = 0`
    and 5 give :math:`\tfrac45\cdot\tfrac34\cdot\tfrac23 = 0.4`.
    """
    toks = paper_tokens(text)
    out = 1.0
    for n in orders:
        grams = ngrams(toks, n)
        out *= len(set(grams)) / (len(grams) + 1)
    return out


def paper_diversity(texts: str | Iterable[str], orders: Sequence[int] = (2, 3, 4)) -> float:
    r"""The published protocol's diversity of a set of responses: the mean of :func:`paper_diversity_one`.

    .. math:: \mathrm{div}(y_{1..m}) = \frac1m \sum_{i=1}^{m} \prod_{n=2}^{4}
              \frac{|\mathrm{unique}\ n\text{-grams}(y_i)|}{|n\text{-grams}(y_i)| + 1}

    It differs from :func:`diversity` (kept for the earlier tables) in three ways: it is a mean
    of per-response values (so it measures repetition *inside* responses, never how different
    responses are from each other), its denominators carry the +1, and its tokens keep case and
    split off punctuation (:func:`paper_tokens`). On m texts: m values, one mean.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("paper_diversity needs at least one text")
    return float(np.mean([paper_diversity_one(t, orders) for t in texts]))


# --------------------------------------------------------------------------------------------
# Best-of-N's KL and the reward–KL frontier


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
        :func:`paired_diff_ci` against a controller's per-cluster rewards at equal samples.
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


# --------------------------------------------------------------------------------------------
# KL and scales


def token_kl(logprobs: Sequence[float] | torch.Tensor, base_logprobs: Sequence[float] | torch.Tensor,
             length: int | None = None) -> float:
    r"""Token-level log-ratio of one response: :math:`\sum_{t\le L}[\log p_\text{ctrl}(y_t) - \log p_\text{base}(y_t)]`.

    ``logprobs[t]`` is the log-probability of the generated token under the controlled head
    (with the sampled control v_t), ``base_logprobs[t]`` under the uncontrolled head; only the
    first ``length`` tokens count (default: all).

    This is a **single-sample** estimate: for a response y drawn from the controlled model it is
    an unbiased one-draw estimate of KL(p_ctrl(·|V) ‖ p_base) along that path, but it is
    noisy (it can be negative), it conditions on the drawn control V, and for a response
    *selected* by reward it is the log-ratio of that response, not the KL of any distribution.
    It is exactly 0 for the plain model (σ = 0).
    """
    lp = torch.as_tensor(logprobs, dtype=torch.float64).flatten()
    blp = torch.as_tensor(base_logprobs, dtype=torch.float64).flatten()
    if lp.shape != blp.shape:
        raise ValueError(f"logprobs and base_logprobs differ in length: {lp.numel()} vs {blp.numel()}")
    L = lp.numel() if length is None else int(length)
    return float((lp[:L] - blp[:L]).sum())


def control_kl(mean: torch.Tensor, sigma: float) -> float:
    r""":math:`\mathrm{KL}(q_U\|p) = \sum_t \|u_t\|^2/(2\sigma^2)` of one control mean U (τ, d)."""
    if sigma <= 0:
        return 0.0
    return float(mean.double().pow(2).sum() / (2 * sigma**2))


def head_row_norm(weight: torch.Tensor, statistic: str = "median") -> float:
    """Typical row norm ‖w‖ of an output head W (V, d): the median (default) or mean of ‖W[v]‖."""
    norms = weight.detach().float().norm(dim=-1)
    if statistic == "median":
        return float(norms.median())
    if statistic == "mean":
        return float(norms.mean())
    raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")


def logit_noise_scale(sigma: float, row_norm: float | None) -> float | None:
    """σ·‖w‖: the std of the logit perturbation (w·v for v ~ N(0, σ²I) has std σ‖w‖), None if unknown."""
    if row_norm is None:
        return None
    return float(sigma) * float(row_norm)


def dynamics_row_norm(dynamics) -> float | None:
    """‖w‖ (median row norm) of a dynamics' output head when it has one (CausalLM, SoftmaxHead)."""
    head = getattr(dynamics, "head", None)
    W = getattr(head, "weight", None) if head is not None else None
    if W is None:
        W = getattr(dynamics, "W", None)
    if W is None or not isinstance(W, torch.Tensor) or W.dim() != 2:
        return None
    return head_row_norm(W)
