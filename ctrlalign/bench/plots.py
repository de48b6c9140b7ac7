"""Figures of a :class:`~ctrlalign.bench.result.BenchResult` (matplotlib, Agg backend, PNG).

* :func:`plot_reward_vs_budget`: mean optimised reward vs N per controller, 95% CI bands.
* :func:`plot_iterations`: for one controller (AISP), mean reward per iteration (round mean,
  round max, best so far) over prompts × seeds, and the effective sample size on a twin axis.
* :func:`plot_heldout_vs_reward`: held-out judge score vs optimised reward, one point per
  (controller, N) (means), with per-response points faint behind them.
* :func:`plot_sweep`: reward at the sweep budget vs σ², one line per λ, one panel per α.
* :func:`plot_reward_kl_frontier`: (KL, reward) points against Best-of-N's analytic-KL curve;
  :func:`plot_result_frontier` draws it for a result (:mod:`~ctrlalign.bench.verdict`).
* :func:`plot_runs_overview`: several runs side by side: round-mean reward per iteration and
  the frontier.
* :func:`write_figures`: all of the above into a folder, returns the paths written.

Every figure of the project (these and the tutorials' in ``examples/``) is drawn under
:func:`figure_style` and written by :func:`save_figure`: at least :data:`MIN_WIDTH_PX` pixels
wide, with every text (titles, axis labels, ticks, legends, annotations) at
:data:`MIN_FONT_PT` points or more, so the plots stay readable in the documentation.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np

from . import frontier, matched, verdict

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = [
    "MIN_FONT_PT",
    "MIN_WIDTH_PX",
    "figure_style",
    "parse_sweep_label",
    "plot_heldout_vs_reward",
    "plot_iterations",
    "plot_result_frontier",
    "plot_runs_overview",
    "plot_reward_kl_frontier",
    "plot_reward_vs_budget",
    "plain_baseline",
    "plot_sweep",
    "save_figure",
    "write_figures",
]

#: smallest width, in pixels, of a saved figure
MIN_WIDTH_PX = 1000
#: smallest font size, in points, of any text in a saved figure
MIN_FONT_PT = 10.0
#: resolution of the saved PNGs (a 7-inch-wide figure is 1,050 px)
DPI = 150
#: matplotlib settings of every figure: text at 10-12 pt
STYLE = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
    "ytick.labelsize": 10, "legend.fontsize": 10, "legend.title_fontsize": 10,
    "figure.titlesize": 12, "lines.linewidth": 1.8, "axes.grid": True, "grid.alpha": 0.3,
    "savefig.dpi": DPI,
}


@contextlib.contextmanager
def figure_style():
    """Draw figures inside ``with figure_style():`` to get the project's sizes (:data:`STYLE`)."""
    with plt.rc_context(STYLE):
        yield


def _styled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with figure_style():
            return fn(*args, **kwargs)
    return wrapper


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, check and write ``fig`` as a PNG at least :data:`MIN_WIDTH_PX` wide; close it.

    Raises ValueError if any visible text is smaller than :data:`MIN_FONT_PT` (a figure drawn
    outside :func:`figure_style`, or with an explicit small ``fontsize``).
    """
    small = sorted({(t.get_text(), t.get_fontsize()) for t in fig.findobj(matplotlib.text.Text)
                    if t.get_visible() and t.get_text().strip() and t.get_fontsize() < MIN_FONT_PT})
    if small:
        plt.close(fig)
        raise ValueError(f"text below {MIN_FONT_PT} pt in {Path(path).name}: {small[:5]}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    dpi = max(DPI, math.ceil(MIN_WIDTH_PX / fig.get_figwidth()))
    fig.savefig(p, dpi=dpi)
    plt.close(fig)
    return p

_SWEEP = re.compile(r"^aisp\[s2=([^,]+),lam=([^,]+),a=([^\]]+)\]$")


def parse_sweep_label(label: str) -> tuple[float, float, float] | None:
    """(σ², λ, α) of a sweep entry's label ``aisp[s2=..,lam=..,a=..]``, else None."""
    m = _SWEEP.match(label)
    return None if m is None else tuple(float(x) for x in m.groups())  # type: ignore[return-value]


def _summary(result) -> list[dict[str, Any]]:
    return result.summary if hasattr(result, "summary") else result["summary"]


def _main_controllers(result) -> list[str]:
    names = list(dict.fromkeys(r["controller"] for r in _summary(result)))
    return [c for c in names if parse_sweep_label(c) is None]


@_styled
def plot_reward_vs_budget(result, path: str | Path, controllers: Sequence[str] | None = None,
                          key: str = "reward", ylabel: str | None = None) -> Path:
    """Mean ``key`` (default the optimised reward) vs budget N, one line per controller, CI bands."""
    rows = _summary(result)
    controllers = list(controllers) if controllers is not None else _main_controllers(result)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for c in controllers:
        sel = sorted((r for r in rows if r["controller"] == c and r.get(key) is not None), key=lambda r: r["budget"])
        if not sel:
            continue
        N = [r["budget"] for r in sel]
        m = [r[key] for r in sel]
        (line,) = ax.plot(N, m, marker="o", label=c)
        ci = [r.get(f"{key}_ci") for r in sel]
        if all(x is not None for x in ci):
            ax.fill_between(N, [x["low"] for x in ci], [x["high"] for x in ci], color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("budget N (reward calls per prompt)")
    ax.set_ylabel(ylabel or ("optimised reward of the kept response" if key == "reward" else key))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{key} vs budget (mean, 95% CI over prompts x seeds)")
    return save_figure(fig, path)


@_styled
def plot_matched(result, path: str | Path, reference: str) -> Path:
    """Mean kept reward against the mean budget spent, one panel per axis of
    :data:`~ctrlalign.bench.matched.AXES` (decoded tokens, reward calls; log scale): the
    reference Best-of-N's curve over N as a line, every other (controller, budget) as a point
    (a line through a controller's budgets)."""
    records = result.records if hasattr(result, "records") else result["records"]
    method = (result.config if hasattr(result, "config") else result["config"]).get("ci_method", "bootstrap")
    fig, axes = plt.subplots(1, len(matched.AXES), figsize=(11, 4.4), sharey=True)
    for ax, (axis, label) in zip(axes, matched.AXES.items()):
        rows = matched.matched_readout(records, reference, axis, method=method)
        for c in dict.fromkeys(r["controller"] for r in rows):
            sel = sorted((r for r in rows if r["controller"] == c), key=lambda r: r["spent"])
            style = {"color": "black", "linewidth": 2} if c == reference else {}
            ax.plot([r["spent"] for r in sel], [r["reward"] for r in sel], marker="o",
                    label=f"{c} (reference)" if c == reference else c, **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"{label} per prompt (log)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("kept reward (mean over prompts × seeds)")
    axes[0].legend()
    fig.suptitle(f"every controller against {reference} at matched budgets")
    return save_figure(fig, path)


@_styled
def plot_iterations(result, path: str | Path, controller: str = "aisp") -> Path:
    """Per-iteration mean (over prompts × seeds) of round-mean, round-max and best-so-far reward
    for ``controller``, with ESS (and ‖U‖) on twin axes."""
    traces = result.traces if hasattr(result, "traces") else result["traces"]
    sel = [t["trace"] for t in traces if t["controller"] == controller]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if not sel:
        ax.text(0.5, 0.5, f"no traces for {controller!r}", ha="center", transform=ax.transAxes)
        return save_figure(fig, path)
    K = min(len(t) for t in sel)
    it = list(range(1, K + 1))

    def mean_of(k: str) -> list[float]:
        return [sum(t[i][k] for t in sel) / len(sel) for i in range(K)]

    ax.plot(it, mean_of("mean_reward"), marker="o", label="round mean reward")
    ax.plot(it, mean_of("max_reward"), marker="^", label="round max reward")
    ax.plot(it, mean_of("best_reward"), marker="s", label="best so far")
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ess = mean_of("ess")
    ax2.plot(it, ess, color="k", ls="--", marker="x", label="ESS (right axis)")
    ax2.set_ylabel("effective sample size")
    ax2.set_ylim(bottom=0)
    ax2.grid(False)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4)
    norms = mean_of("mean_norm")
    ax.set_title(f"{controller}: per iteration (mean over {len(sel)} prompt x seed runs); "
                 f"‖U‖ {norms[0]:.1f}→{norms[-1]:.1f}")
    return save_figure(fig, path)


@_styled
def plot_heldout_vs_reward(result, path: str | Path, controllers: Sequence[str] | None = None) -> Path:
    """Held-out judge score vs optimised reward: per-(controller, N) means (labelled by N)."""
    rows = _summary(result)
    records = result.records if hasattr(result, "records") else result["records"]
    controllers = list(controllers) if controllers is not None else _main_controllers(result)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for c in controllers:
        pts = [(r["reward"], r["judge"]) for r in records if r["controller"] == c and r.get("judge") is not None
               and r["budget"] == max(x["budget"] for x in rows)]
        sel = sorted((r for r in rows if r["controller"] == c and r.get("judge") is not None), key=lambda r: r["budget"])
        if not sel:
            continue
        (line,) = ax.plot([r["reward"] for r in sel], [r["judge"] for r in sel], marker="o", label=c)
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, alpha=0.15, color=line.get_color())
        for r in sel:
            ax.annotate(str(r["budget"]), (r["reward"], r["judge"]), fontsize=MIN_FONT_PT, xytext=(2, 2),
                        textcoords="offset points")
    ax.set_xlabel("optimised reward (mean)")
    ax.set_ylabel("held-out judge score (mean)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("held-out vs optimised (points: N; faint: responses at max N)")
    return save_figure(fig, path)


@_styled
def plot_sweep(result, path: str | Path, key: str = "reward") -> Path | None:
    """Sweep entries: mean ``key`` vs σ², one line per λ, one panel per α. None if no sweep."""
    rows = [r for r in _summary(result) if parse_sweep_label(r["controller"]) is not None]
    if not rows:
        return None
    N = max(r["budget"] for r in rows)
    rows = [r for r in rows if r["budget"] == N]
    pars = {r["controller"]: parse_sweep_label(r["controller"]) for r in rows}
    alphas = sorted({p[2] for p in pars.values()})
    lams = sorted({p[1] for p in pars.values()})
    fig, axes = plt.subplots(1, len(alphas), figsize=(max(7.5, 3.8 * len(alphas)), 4.2), sharey=True, squeeze=False)
    base = [r for r in _summary(result) if r["controller"] in ("bon-plain", "bon") and r["budget"] == N]
    for ax, a in zip(axes[0], alphas):
        for lam in lams:
            sel = sorted((pars[r["controller"]][0], r[key]) for r in rows
                          if pars[r["controller"]][1] == lam and pars[r["controller"]][2] == a and r.get(key) is not None)
            if sel:
                ax.plot([s for s, _ in sel], [v for _, v in sel], marker="o", label=f"λ={lam:g}")
        for b in base:
            if b.get(key) is not None:
                ax.axhline(b[key], color="gray", ls=":", label=f"{b['controller']}")
        ax.set_xscale("log")
        ax.set_xlabel("σ²")
        ax.set_title(f"α = {a:g}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{key} at N = {N}")
    axes[0][-1].legend()
    return save_figure(fig, path)


def plot_reward_kl_frontier(
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    ref_n: Sequence[int],
    ref_reward: Sequence[float],
    path: str | Path,
    *,
    title: str | None = None,
    ylabel: str = "reward",
) -> Path:
    r"""The reward–KL frontier with Best-of-N's analytic KL as the reference curve; saved as a PNG.

    Best-of-N at :math:`N_j` sits at :math:`(\log N_j - (N_j-1)/N_j,\ \bar R_{N_j})`
    (:func:`~ctrlalign.bench.frontier.bon_kl`); a controller's runs are points (KL, reward). A
    point above the curve reaches more reward than Best-of-N for the same divergence from the
    base policy (:func:`~ctrlalign.bench.frontier.above_frontier`). The points' KL must be on
    the footing the caller states (:mod:`ctrlalign.bench.verdict` gives two).

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
        return _draw_frontier(points, ref_n, ref_reward, path, title, ylabel)


def _draw_frontier(points, ref_n, ref_reward, path, title, ylabel) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    _frontier_on(ax, points, ref_n, ref_reward, title, ylabel)
    ax.legend()
    return save_figure(fig, path)


def _frontier_on(ax, points, ref_n, ref_reward, title, ylabel) -> None:
    """Draw the reference curve and the points on ``ax`` (no legend)."""
    n = np.asarray(ref_n, dtype=np.float64)
    R = np.asarray(ref_reward, dtype=np.float64)
    kl = frontier.bon_kl(n)
    dense = np.exp(np.linspace(np.log(n[0]), np.log(n[-1]), 200))
    ax.plot(frontier.bon_kl(dense), np.interp(np.log(dense), np.log(n), R), color="0.3", lw=1.5,
            label="Best-of-N: KL = log N − (N−1)/N")
    ax.scatter(kl, R, color="0.3", s=14, zorder=3)
    for kj, rj, nj in zip(kl, R, n):
        ax.annotate(f"{nj:g}", (kj, rj), textcoords="offset points", xytext=(3, -12), fontsize=10, color="0.3")
    for label, (x, y) in points.items():
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        gap = frontier.frontier_gap(x, y, R, ref_n=n)
        inside = int(np.isfinite(gap).sum())
        above = int((np.nan_to_num(gap, nan=-np.inf) > 0).sum())
        ax.plot(x, y, marker="o", ls="--", lw=0.8, label=f"{label} ({above}/{inside} above)")
    ax.set_xlabel("KL to the base policy (nats)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)


def _frontier_inputs(result, baseline: str, footing: str):
    """(points, ref_n, ref_reward) of a result for :func:`plot_reward_kl_frontier`."""
    if footing not in ("paper", "charged"):
        raise ValueError(f"footing must be 'paper' or 'charged', got {footing!r}")
    ref_n, ref_r = verdict.reference_frontier(result, baseline)
    points: dict[str, tuple[list[float], list[float]]] = {}
    for p in verdict.frontier_points(result, baseline):
        xs, ys = points.setdefault(p["controller"], ([], []))
        xs.append(p[f"kl_{footing}"])
        ys.append(p["reward"])
    return points, ref_n, ref_r


@_styled
def plot_runs_overview(results: Mapping[str, Any], path: str | Path, max_kl: float | None = 12.0) -> Path:
    """Several runs side by side (one column each): top, the round-mean reward per iteration of
    every controller (mean over prompts × seeds: does the proposal learn?); bottom, the
    reward–KL frontier on the charged footing against the run's plain Best-of-N curve (points
    beyond ``max_kl`` nats are left out of the panel, not of the tables).

    Args:
        results: run name → result (each with a σ = 0 Best-of-N baseline for the frontier).
        path: the PNG to write.
        max_kl: right edge of the frontier panels (None: all points).
    """
    names = list(results)
    fig = plt.figure(figsize=(4.6 * len(names), 9.4))
    gs = fig.add_gridspec(3, len(names), height_ratios=[1, 1, 0.2])
    axes = np.array([[fig.add_subplot(gs[i, j]) for j in range(len(names))] for i in range(2)])
    legend_ax = fig.add_subplot(gs[2, :])
    handles: dict[str, Any] = {}
    every = dict.fromkeys(t["controller"] for r in results.values()
                          for t in (r.traces if hasattr(r, "traces") else r["traces"]))
    colors = {c: f"C{i % 10}" for i, c in enumerate(every)}  # one color per controller in every panel
    for j, name in enumerate(names):
        res = results[name]
        traces = res.traces if hasattr(res, "traces") else res["traces"]
        top, bottom = axes[0, j], axes[1, j]
        for c in dict.fromkeys(t["controller"] for t in traces):
            sel = [t["trace"] for t in traces if t["controller"] == c]
            K = min(len(t) for t in sel)
            ys = [sum(t[i]["mean_reward"] for t in sel) / len(sel) for i in range(K)]
            (line,) = top.plot(range(1, K + 1), ys, marker="o", label=c, color=colors[c])
            handles.setdefault(c, line)
        top.set_title(name)
        top.set_xlabel("iteration")
        top.set_ylabel("round-mean reward" if j == 0 else "")
        top.grid(alpha=0.3)
        plain = plain_baseline(res)
        if plain is None:
            bottom.axis("off")
            continue
        points, ref_n, ref_r = _frontier_inputs(res, plain, "charged")
        if max_kl is not None:
            points = {c: ([x for x in xs if x <= max_kl], [y for x, y in zip(xs, ys) if x <= max_kl])
                      for c, (xs, ys) in points.items()}
        _frontier_on(bottom, {}, ref_n, ref_r, None, "mean kept reward" if j == 0 else "")
        for c, (xs, ys) in points.items():
            if xs:
                bottom.plot(xs, ys, marker="o", ls="--", lw=0.8, color=colors.get(c))
        bottom.set_xlabel("charged KL: KL(q_U‖p) + log N − (N−1)/N")
    for ax in axes[0]:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    legend_ax.axis("off")
    legend_ax.legend(list(handles.values()), list(handles), loc="center", ncol=min(len(handles), 4), frameon=False)
    return save_figure(fig, path)


def plot_result_frontier(result, path: str | Path, baseline: str, footing: str = "paper") -> Path:
    """The reward–KL frontier of a result: every controller but ``baseline`` per budget N, on
    the ``footing`` ``"paper"`` (KL(q_U‖p)) or ``"charged"`` (plus the selection's KL), against
    the reference curve of ``baseline``'s own samples (:mod:`~ctrlalign.bench.verdict`)."""
    points, ref_n, ref_r = _frontier_inputs(result, baseline, footing)
    what = "KL(q_U‖p)" if footing == "paper" else "KL(q_U‖p) + log N − (N−1)/N"
    return plot_reward_kl_frontier(points, ref_n, ref_r, path, title=f"reward vs KL ({what}; points: N)",
                                   ylabel="mean reward of the kept response")


def write_figures(result, folder: str | Path, prefix: str = "bench", primary: str | None = None) -> list[Path]:
    """Write every figure for ``result`` into ``folder`` as ``<prefix>-<figure>.png``."""
    folder = Path(folder)
    paths = []
    main = _main_controllers(result)
    if main:
        paths.append(plot_reward_vs_budget(result, folder / f"{prefix}-reward-vs-budget.png"))
        if any(r.get("judge") is not None for r in _summary(result)):
            paths.append(plot_reward_vs_budget(result, folder / f"{prefix}-judge-vs-budget.png", key="judge",
                                               ylabel="held-out judge score of the kept response"))
            paths.append(plot_heldout_vs_reward(result, folder / f"{prefix}-heldout-vs-reward.png"))
        it_ctrl = primary or next((c for c in main if c.startswith("aisp")), None)
        if it_ctrl is None:  # no AISP among the main entries: the best sweep entry, if any
            sweep_rows = [r for r in _summary(result) if parse_sweep_label(r["controller"]) is not None]
            if sweep_rows:
                N = max(r["budget"] for r in sweep_rows)
                it_ctrl = max((r for r in sweep_rows if r["budget"] == N), key=lambda r: r["reward"])["controller"]
        if it_ctrl is not None:
            paths.append(plot_iterations(result, folder / f"{prefix}-iterations.png", controller=it_ctrl))
    plain = plain_baseline(result)
    if plain is not None:
        paths.append(plot_result_frontier(result, folder / f"{prefix}-frontier.png", plain))
    reference = matched_reference(result)
    if reference is not None and len(main) > 1:
        paths.append(plot_matched(result, folder / f"{prefix}-matched.png", reference))
    sweep = plot_sweep(result, folder / f"{prefix}-sweep.png")
    if sweep is not None:
        paths.append(sweep)
        if any(r.get("judge") is not None for r in _summary(result)):
            paths.append(plot_sweep(result, folder / f"{prefix}-sweep-judge.png", key="judge"))
    return paths


def matched_reference(result) -> str | None:
    """The reference Best-of-N of the matched read-out (:func:`~ctrlalign.bench.matched.default_reference`),
    if it ran at two budgets or more."""
    cfg = result.config if hasattr(result, "config") else result["config"]
    meta = result.meta if hasattr(result, "meta") else result["meta"]
    ref = matched.default_reference(cfg, meta)
    records = result.records if hasattr(result, "records") else result["records"]
    return ref if len({r["budget"] for r in records if r["controller"] == ref}) >= 2 else None


def plain_baseline(result) -> str | None:
    """The first configured baseline with σ = 0 (samples of the base policy), if it ran."""
    cfg = result.config if hasattr(result, "config") else result["config"]
    meta = result.meta if hasattr(result, "meta") else result["meta"]
    ran = {r["controller"] for r in _summary(result)}
    return next((b for b in cfg.get("baselines") or [] if b in ran
                 and meta.get("controllers", {}).get(b, {}).get("sigma") == 0), None)
