r"""Confidence intervals of a mean and of a paired difference.

* :func:`mean_ci`, :func:`paired_diff_ci`: 95% intervals of a mean (Student t, or a bootstrap
  that resamples whole *clusters* — prompts — so that several seeds of one prompt are not
  counted as independent evidence), returned as a :class:`CI`.

Plain functions of numbers, tested against hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["CI", "mean_ci", "paired_diff_ci"]


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
        """Whether the interval lies entirely on one side of 0 (low > 0 or high < 0)."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        """The fields as a plain dict (mean, low, high, n, method), for JSON."""
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
