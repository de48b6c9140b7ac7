r"""Metrics for matched-budget benchmarks: confidence intervals, diversity, KL, scales.

Everything here is a plain function of numbers or strings, tested against hand-computed values.

* :func:`mean_ci`, :func:`paired_diff_ci`: 95% intervals of a mean (Student t, or a bootstrap
  that resamples whole *clusters* — prompts — so that several seeds of one prompt are not
  counted as independent evidence).
* :func:`distinct_n`, :func:`diversity`: the distinct-n-gram ratio and RE-Control's diversity
  :math:`\prod_{n=2}^{4} \text{distinct-}n`.
* :func:`token_kl`: :math:`\sum_t [\log p_\text{ctrl}(y_t) - \log p_\text{base}(y_t)]` over a
  response's tokens — a single-sample estimate (see its docstring for what it is and is not).
* :func:`control_kl`: :math:`\mathrm{KL}(q_U\|p) = \sum_t \|u_t\|^2 / (2\sigma^2)`.
* :func:`head_row_norm`, :func:`logit_noise_scale`: σ expressed on the logit scale, σ·‖w‖.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "CI",
    "control_kl",
    "distinct_n",
    "diversity",
    "head_row_norm",
    "logit_noise_scale",
    "mean_ci",
    "ngrams",
    "paired_diff_ci",
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
        num_resamples, seed: bootstrap settings (deterministic under ``seed``).

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
