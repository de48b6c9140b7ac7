r"""The reward–KL frontier figure with Best-of-N's analytic KL as the reference curve.

Best-of-N at :math:`N_j` sits at :math:`(\log N_j - (N_j-1)/N_j,\ \bar R_{N_j})`
(:func:`~ctrlalign.bench.metrics.bon_kl`, :func:`~ctrlalign.bench.metrics.bon_reference_curve`);
a controller's runs are points (KL, reward). A point above the curve reaches more reward than
Best-of-N for the same divergence from the base policy
(:func:`~ctrlalign.bench.metrics.above_frontier`). The points' KL must be on the same footing:
a divergence of the *response distribution* from the base model's, in nats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from . import metrics
from .plots import figure_style, plt, save_figure

__all__ = ["plot_reward_kl_frontier"]


def plot_reward_kl_frontier(
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    ref_n: Sequence[int],
    ref_reward: Sequence[float],
    path: str | Path,
    *,
    title: str | None = None,
    ylabel: str = "reward",
) -> Path:
    r"""Draw the frontier and save it as a PNG.

    Args:
        points: controller label → (KL values (P,), reward values (P,)), e.g. one point per
            budget or per setting (means over prompts and seeds).
        ref_n: (K,) Best-of-N sizes of the reference, increasing (e.g. 1, 2, 4, …, 512).
        ref_reward: (K,) Best-of-N's mean reward at those sizes.
        path: the PNG to write (folders are created).
        title: the figure's title.
        ylabel: the y axis label.

    Returns:
        The path written. Each controller's legend entry says how many of its points lie above
        the reference (of those inside the reference's KL range).
    """
    with figure_style():
        return _draw(points, ref_n, ref_reward, path, title, ylabel)


def _draw(points, ref_n, ref_reward, path, title, ylabel) -> Path:
    n = np.asarray(ref_n, dtype=np.float64)
    R = np.asarray(ref_reward, dtype=np.float64)
    kl = metrics.bon_kl(n)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    dense = np.exp(np.linspace(np.log(n[0]), np.log(n[-1]), 200))
    ax.plot(metrics.bon_kl(dense), np.interp(np.log(dense), np.log(n), R), color="0.3", lw=1.5,
            label="Best-of-N: KL = log N − (N−1)/N")
    ax.scatter(kl, R, color="0.3", s=14, zorder=3)
    for kj, rj, nj in zip(kl, R, n):
        ax.annotate(f"{nj:g}", (kj, rj), textcoords="offset points", xytext=(3, -12), fontsize=10, color="0.3")
    for label, (x, y) in points.items():
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        gap = metrics.frontier_gap(x, y, R, ref_n=n)
        inside = int(np.isfinite(gap).sum())
        above = int((np.nan_to_num(gap, nan=-np.inf) > 0).sum())
        ax.plot(x, y, marker="o", ls="--", lw=0.8, label=f"{label} ({above}/{inside} above)")
    ax.set_xlabel("KL to the base policy (nats)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
