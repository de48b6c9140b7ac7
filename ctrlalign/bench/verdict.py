r"""The reward–KL frontier of a benchmark result, and the goal checks.

**Reference frontier.** Best-of-N over the base policy at size :math:`N_j` is the point
:math:`(\mathrm{KL}_j, \bar R_j)` with :math:`\mathrm{KL}_j = \log N_j - (N_j-1)/N_j`
(:func:`~ctrlalign.bench.frontier.bon_kl`). :math:`\bar R_j` comes from the plain Best-of-N
baseline's own samples: each (prompt, seed) cluster holds a pool of m = N_max base rewards
(the per-round ``"rewards"`` of its traces), and :math:`\bar R_j` is the mean over the P
clusters of the unbiased best-of-:math:`N_j` estimate from its pool
(:func:`~ctrlalign.bench.frontier.bon_reference_curve`), for :math:`N_j = 1, 2, 4, \dots, m`.
Results written before the pools were stored fall back to N = 1 (the mean reward of all base
samples, which is :math:`\mathbb E_p[r]`) and the budgets' kept rewards.

**A controller's points.** At each budget N a controller sits at (KL, mean kept reward) on two
footings, both in nats:

* ``kl_paper`` = :math:`\mathrm{KL}(q_U\|p)`, the final proposal's divergence from the prior in
  the control space (the footing of the AISP paper's comparison);
* ``kl_charged`` = ``kl_paper`` + :math:`\log N - (N-1)/N`: the proposal's divergence *plus*
  the Best-of-N selection among its N samples, which every controller here also performs.

``kl_charged`` is the fairer (and harsher) charge; neither is the exact KL of the kept
response's distribution, which nothing here can compute. On the paper's footing pure Best-of-N
under a noisy prior sits at KL 0 however large N is, which is why the goal uses the charged one.

A point is *above the frontier* when its reward exceeds the reference interpolated at its KL
(linear in log N). Beyond the reference's largest KL, Best-of-N's reward would only be higher
(it increases with N), so a point there whose reward is below the reference's last reward gets
the gap to that last reward (an upper bound on its true gap, ≤ 0); one above it has no verdict
(NaN), never a made-up one.

**The goal** (:func:`regime_goal`): at every budget N ≥ ``min_budget`` the primary controller's
reward beats every baseline with the paired 95% cluster-bootstrap CI excluding 0; its held-out
fluency is no worse than plain Best-of-N's by more than the half-width of the 95% CI of Best-of-N's
own seed-to-seed fluency difference; and at least one of its points is above the frontier on the
charged footing. The simpler :func:`goal_status` (reward above every baseline at every
N ≥ 32, judge not significantly worse) shares the reward part, :func:`baseline_checks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import frontier, stats

__all__ = ["baseline_checks", "frontier_points", "goal_status", "reference_frontier", "regime_goal"]


def _comparisons(result) -> list[dict[str, Any]]:
    return result.comparisons if hasattr(result, "comparisons") else result["comparisons"]


def _records(result) -> list[dict[str, Any]]:
    return result.records if hasattr(result, "records") else result["records"]


def _traces(result) -> list[dict[str, Any]]:
    return result.traces if hasattr(result, "traces") else result["traces"]


def reference_frontier(result, baseline: str) -> tuple[np.ndarray, np.ndarray]:
    r"""Best-of-N's reference curve from the plain baseline's samples (module docstring).

    Args:
        result: a :class:`~ctrlalign.bench.BenchResult` (or its dict).
        baseline: label of the plain Best-of-N entry (σ = 0: samples of the base policy).

    Returns:
        ``(N (K,), mean reward (K,))``, N increasing from 1.

    Raises:
        ValueError: naming the label, when the result has no records of ``baseline``.
    """
    traces = [t for t in _traces(result) if t["controller"] == baseline]
    if not traces:
        raise ValueError(f"no runs of {baseline!r} in this result; controllers: "
                         f"{sorted({t['controller'] for t in _traces(result)})}")
    if all(all("rewards" in row for row in t["trace"]) for t in traces):
        pools = [[r for row in t["trace"] for r in row["rewards"]] for t in traces]
        m = min(len(p) for p in pools)
        Ns = sorted({1 << j for j in range(int(np.log2(m)) + 1)} | {m})
        _, R, _ = frontier.bon_reference_curve([p[:m] for p in pools], Ns)
        return np.asarray(Ns, dtype=np.float64), R
    # results without pools: E_p[r] from the round means, then the budgets' kept rewards
    first = float(np.mean([np.mean([row["mean_reward"] for row in t["trace"]]) for t in traces]))
    recs = [r for r in _records(result) if r["controller"] == baseline]
    Ns = sorted({int(r["budget"]) for r in recs})
    R = [float(np.mean([r["reward"] for r in recs if r["budget"] == N])) for N in Ns]
    return np.asarray([1.0, *Ns]), np.asarray([first, *R])


def frontier_points(result, baseline: str, controllers: Sequence[str] | None = None) -> list[dict[str, Any]]:
    r"""Every controller's (KL, reward) per budget N, with its gap above the reference.

    Args:
        result: a :class:`~ctrlalign.bench.BenchResult` (or its dict).
        baseline: label of the plain Best-of-N entry that gives the reference curve.
        controllers: labels to place (default: all but ``baseline``).

    Returns:
        One dict per (controller, N): ``controller``, ``budget``, ``reward`` (mean over prompts
        × seeds), ``kl_paper``, ``kl_charged``, ``gap_paper``, ``gap_charged`` (reward minus
        the reference at that KL; beyond the reference's range: the bound above, or NaN).
        Records without a control KL (closed-loop controllers, read out at matched budgets by
        :mod:`~ctrlalign.bench.matched` instead) are left out.
    """
    ref_n, ref_r = reference_frontier(result, baseline)
    recs = _records(result)
    names = list(controllers) if controllers is not None else [
        c for c in dict.fromkeys(r["controller"] for r in recs) if c != baseline]
    out = []
    for c in names:
        for N in sorted({int(r["budget"]) for r in recs if r["controller"] == c}):
            sel = [r for r in recs if r["controller"] == c and r["budget"] == N]
            if all(r.get("control_kl") is None for r in sel):
                continue  # no control KL (a closed-loop controller): no place on this frontier
            reward = float(np.mean([r["reward"] for r in sel]))
            kl_paper = float(np.mean([r["control_kl"] or 0.0 for r in sel]))
            kl_charged = kl_paper + float(frontier.bon_kl(N))
            gaps = frontier.frontier_gap([kl_paper, kl_charged], [reward, reward], ref_r, ref_n=ref_n)
            beyond = np.isnan(gaps) & (np.array([kl_paper, kl_charged]) > frontier.bon_kl(ref_n[-1]))
            gaps = np.where(beyond & (reward <= ref_r[-1]), reward - ref_r[-1], gaps)
            out.append({"controller": c, "budget": N, "reward": reward, "kl_paper": kl_paper,
                        "kl_charged": kl_charged, "gap_paper": float(gaps[0]), "gap_charged": float(gaps[1])})
    return out


def _fluency_tolerance(recs: list[dict[str, Any]]) -> tuple[float, str]:
    """Half-width of the 95% CI of the plain baseline's seed-to-seed fluency difference (per
    prompt, first two seeds); with one seed, the half-width of its mean's CI."""
    by_prompt: dict[str, dict[int, float]] = {}
    for r in recs:
        if r.get("fluency") is not None:
            by_prompt.setdefault(r["prompt_id"], {})[int(r["seed"])] = float(r["fluency"])
    pairs = [sorted(v)[:2] for v in by_prompt.values() if len(v) >= 2]
    diffs = [by_prompt[p][a] - by_prompt[p][b] for p, (a, b) in zip(
        [p for p, v in by_prompt.items() if len(v) >= 2], pairs)]
    if len(diffs) >= 2:
        ci = stats.mean_ci(diffs, method="t")
        return (ci.high - ci.low) / 2, "seed-to-seed"
    vals = [v for d in by_prompt.values() for v in d.values()]
    ci = stats.mean_ci(vals, method="t") if len(vals) >= 2 else None
    return (float("nan") if ci is None else (ci.high - ci.low) / 2), "one seed: CI of the mean"


def _budgets(result, primary: str, min_budget: int) -> list[int]:
    """The budgets N ≥ ``min_budget`` at which ``primary`` has records, ascending."""
    return sorted({int(r["budget"]) for r in _records(result) if r["controller"] == primary
                   and r["budget"] >= min_budget})


def baseline_checks(result, primary: str, baselines: Sequence[str], min_budget: int) -> list[dict[str, Any]]:
    """The check of ``primary`` against each baseline at each budget N ≥ ``min_budget`` it ran at,
    from the paired differences (primary − baseline) of the result's comparisons.

    Returns:
        One dict per (baseline, N), baseline-major: ``baseline``, ``budget``, ``reward_diff`` and
        ``judge_diff`` (the CIs, None when absent), ``reward_better`` (the reward CI's lower bound
        above 0; a missing comparison fails) and ``judge_not_worse`` (no judge, or the judge CI's
        upper bound ≥ 0).
    """
    comps = _comparisons(result)
    checks = []
    for b in baselines:
        for N in _budgets(result, primary, min_budget):
            row = next((c for c in comps if c["controller"] == primary and c["baseline"] == b
                        and c["budget"] == N), None)
            rd = None if row is None else row.get("reward_diff")
            jd = None if row is None else row.get("judge_diff")
            checks.append({"baseline": b, "budget": N, "reward_diff": rd, "judge_diff": jd,
                           "reward_better": bool(rd and rd["low"] > 0),
                           "judge_not_worse": bool(jd is None or jd["high"] >= 0)})
    return checks


def goal_status(result, primary: str, baselines: Sequence[str], min_budget: int = 32) -> dict[str, Any]:
    """Is ``primary``'s reward above every baseline's at every N ≥ ``min_budget`` (CI of the
    paired difference above 0), with a judge score not significantly worse (CI upper bound ≥ 0)?

    Returns:
        ``{"met", "checks"}``: ``checks`` from :func:`baseline_checks`; ``met`` needs at least
        one check and every check passing.
    """
    checks = baseline_checks(result, primary, baselines, min_budget)
    met = bool(checks) and all(c["reward_better"] and c["judge_not_worse"] for c in checks)
    return {"met": met, "checks": checks}


def regime_goal(result, primary: str, baselines: Sequence[str], plain: str | None = None,
                min_budget: int = 128) -> dict[str, Any]:
    """The paper-regime goal for one controller (module docstring).

    Args:
        result: a summarised :class:`~ctrlalign.bench.BenchResult` (comparisons filled).
        primary: the controller's label.
        baselines: labels it must beat (both Best-of-N baselines, at least).
        plain: the plain Best-of-N label (fluency reference and frontier); default the first
            baseline.
        min_budget: the smallest N checked.

    Returns:
        ``{"met", "reward": [per (baseline, N)], "fluency": [per N], "frontier": [points],
        "failing": [reasons]}``. A part with nothing to check (no fluency scored, no budget
        ≥ ``min_budget``) fails: an absent check is not a pass.
    """
    plain = plain or baselines[0]
    recs = _records(result)
    budgets = _budgets(result, primary, min_budget)
    failing = []
    reward = []
    for c in baseline_checks(result, primary, baselines, min_budget):
        reward.append({"baseline": c["baseline"], "budget": c["budget"], "diff": c["reward_diff"],
                       "ok": c["reward_better"]})
        if not c["reward_better"]:
            failing.append(f"reward vs {c['baseline']} at N={c['budget']}")
    fluency = []
    for N in budgets:
        mine = [r["fluency"] for r in recs if r["controller"] == primary and r["budget"] == N
                and r.get("fluency") is not None]
        base = [r for r in recs if r["controller"] == plain and r["budget"] == N and r.get("fluency") is not None]
        if not mine or not base:
            fluency.append({"budget": N, "ok": False, "reason": "no fluency scored"})
            failing.append(f"fluency at N={N} (not scored)")
            continue
        tol, how = _fluency_tolerance(base)
        diff = float(np.mean(mine)) - float(np.mean([r["fluency"] for r in base]))
        ok = bool(np.isfinite(tol) and diff >= -tol)
        fluency.append({"budget": N, "diff": diff, "tolerance": tol, "tolerance_from": how, "ok": ok})
        if not ok:
            failing.append(f"fluency at N={N} ({diff:+.3f} vs tolerance {tol:.3f})")
    points = frontier_points(result, plain, [primary])
    if not any(p["gap_charged"] > 0 for p in points):
        failing.append("no reward-KL point above Best-of-N's curve (charged KL)")
    if not budgets:
        failing.append(f"no budget N >= {min_budget}")
    return {"met": not failing, "reward": reward, "fluency": fluency, "frontier": points, "failing": failing}
