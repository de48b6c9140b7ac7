"""The frontier of a bench result and the paper-regime goal check, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrlalign.bench import frontier
from ctrlalign.bench.verdict import (
    baseline_checks,
    frontier_points,
    goal_status,
    reference_frontier,
    regime_goal,
)


def _trace(ctrl, seed, pid, rounds, with_pools=True):
    rows = [{"iteration": i + 1, "mean_reward": float(np.mean(r)), **({"rewards": list(r)} if with_pools else {})}
            for i, r in enumerate(rounds)]
    return {"controller": ctrl, "seed": seed, "prompt_id": pid, "trace": rows}


def _rec(ctrl, N, seed, pid, reward, kl=0.0, fluency=None):
    return {"controller": ctrl, "budget": N, "seed": seed, "prompt_id": pid, "reward": reward, "control_kl": kl,
            "fluency": fluency}


def test_reference_from_pools_hand_computed():
    # one cluster, pool {1, 3, 2, 0} (two rounds of n = 2)
    res = {"traces": [_trace("plain", 0, "p", [[1.0, 3.0], [2.0, 0.0]])], "records": []}
    Ns, R = reference_frontier(res, "plain")
    assert Ns.tolist() == [1, 2, 4]
    # E max of 2 of {0,1,2,3}: (1*1 + 2*2 + 3*3) / C(4,2) = 14/6
    assert R.tolist() == pytest.approx([1.5, 14 / 6, 3.0])


def test_reference_without_pools_uses_round_means_and_kept_rewards():
    res = {"traces": [_trace("plain", 0, "p", [[1.0, 3.0], [2.0, 0.0]], with_pools=False)],
           "records": [_rec("plain", 2, 0, "p", 3.0), _rec("plain", 4, 0, "p", 3.0)]}
    Ns, R = reference_frontier(res, "plain")
    assert Ns.tolist() == [1, 2, 4] and R.tolist() == pytest.approx([1.5, 3.0, 3.0])
    with pytest.raises(ValueError, match="no runs of 'nope'"):
        reference_frontier(res, "nope")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(-5, 5), min_size=8, max_size=8), min_size=1, max_size=4))
def test_reference_runs_from_the_mean_to_the_max(pools):
    """R(1) is the pools' mean, R(m) the mean of their maxima, and R never decreases in N."""
    res = {"traces": [_trace("plain", 0, f"p{j}", [p[:4], p[4:]]) for j, p in enumerate(pools)], "records": []}
    Ns, R = reference_frontier(res, "plain")
    assert Ns.tolist() == [1, 2, 4, 8]
    assert R[0] == pytest.approx(np.mean(pools), abs=1e-9)
    assert R[-1] == pytest.approx(np.mean([max(p) for p in pools]), abs=1e-9)
    assert np.all(np.diff(R) >= -1e-9)


def _result(primary_reward=0.9, primary_fluency=-2.0, kl=0.1):
    """Plain Best-of-N with pools 0..7 (reference R(1) = 3.5 ... R(8) = 7), a prior baseline and
    a primary controller, on 3 prompts x 2 seeds at N = 8."""
    traces, records, comps = [], [], []
    for pid in ("a", "b", "c"):
        for seed in (0, 1):
            traces.append(_trace("plain", seed, pid, [[0, 1, 2, 3], [4, 5, 6, 7]]))
            records.append(_rec("plain", 8, seed, pid, 7.0, fluency=-2.0 + seed * {"a": 0.1, "b": -0.1, "c": 0.0}[pid]))
            records.append(_rec("prior", 8, seed, pid, 7.0, fluency=-2.5))
            records.append(_rec("mine", 8, seed, pid, 7.0 + primary_reward, kl=kl, fluency=primary_fluency))
    for b in ("plain", "prior"):
        comps.append({"controller": "mine", "baseline": b, "budget": 8,
                      "reward_diff": {"mean": primary_reward, "low": primary_reward - 0.5,
                                      "high": primary_reward + 0.5}})
    return {"traces": traces, "records": records, "comparisons": comps}


def test_frontier_points_on_both_footings():
    pts = {p["controller"]: p for p in frontier_points(_result(kl=0.1), "plain")}
    mine = pts["mine"]
    assert mine["kl_paper"] == pytest.approx(0.1)
    assert mine["kl_charged"] == pytest.approx(0.1 + math.log(8) - 7 / 8)
    # paper footing: reference at KL 0.1 is between N=1 (3.5) and N=2, far below 7.9
    assert mine["gap_paper"] > 3
    # charged footing: beyond the reference's largest KL (N = 8) and above its last reward: no verdict
    assert math.isnan(mine["gap_charged"])
    # the prior baseline at KL 0 + selection: exactly on the curve's end, reward 7 = R(8): beyond it by 0
    assert pts["prior"]["gap_charged"] == pytest.approx(0.0, abs=1e-9)
    low = {p["controller"]: p for p in frontier_points(_result(primary_reward=-1.0), "plain")}["mine"]
    assert low["gap_charged"] == pytest.approx(-1.0)  # the bound: reward minus the reference's last reward


def test_regime_goal_met_and_each_part_can_fail():
    # a point above the curve on the charged footing needs a KL inside the reference's range:
    # charge at N = 8 is already the whole range, so a met goal needs a smaller-N point above it
    res = _result(primary_reward=0.9, primary_fluency=-2.0)
    res["records"] += [_rec("mine", 4, s, p, 6.9, kl=0.0, fluency=-2.0) for p in "abc" for s in (0, 1)]
    g = regime_goal(res, "mine", ["plain", "prior"], min_budget=8)
    assert g["met"], g["failing"]
    # reward CI touching 0 fails
    bad = _result(primary_reward=0.4)
    bad["records"] += res["records"][-6:]
    g = regime_goal(bad, "mine", ["plain", "prior"], min_budget=8)
    assert not g["met"] and any("reward vs plain" in f for f in g["failing"])
    # fluency worse than Best-of-N's (-2.0) by more than its seed-to-seed CI half-width,
    # t(2) * 0.1 / sqrt(3) = 0.248 (seed differences -0.1, +0.1, 0)
    g = regime_goal(res, "mine", ["plain", "prior"], min_budget=8)
    assert g["fluency"][0]["tolerance"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    worse = _result(primary_fluency=-2.3)
    worse["records"] += res["records"][-6:]
    g = regime_goal(worse, "mine", ["plain", "prior"], min_budget=8)
    assert not g["met"] and any(f.startswith("fluency at N=8") for f in g["failing"])
    # no point above the curve
    g = regime_goal(_result(), "mine", ["plain", "prior"], min_budget=8)
    assert not g["met"] and any("above Best-of-N" in f for f in g["failing"])
    # nothing at N >= min_budget is a failure, not a pass
    g = regime_goal(res, "mine", ["plain", "prior"], min_budget=128)
    assert not g["met"] and any("no budget" in f for f in g["failing"])


def test_bon_reference_is_bon_kl():
    res = {"traces": [_trace("plain", 0, "p", [[1.0, 3.0], [2.0, 0.0]])], "records": []}
    Ns, _ = reference_frontier(res, "plain")
    assert frontier.bon_kl(Ns).tolist() == pytest.approx([0.0, math.log(2) - 0.5, math.log(4) - 0.75])


def test_goal_status_and_regime_goal_share_one_reward_check():
    """Both goals read the reward part from baseline_checks: a reward CI above 0 passes, one
    touching 0 fails, a worse judge fails goal_status only, and a missing comparison fails both."""
    res = _result(primary_reward=0.9)
    assert [(c["baseline"], c["budget"], c["reward_better"]) for c in baseline_checks(res, "mine", ["plain", "prior"], 8)] \
        == [("plain", 8, True), ("prior", 8, True)]
    assert goal_status(res, "mine", ["plain", "prior"], min_budget=8)["met"]
    assert not goal_status(_result(primary_reward=0.4), "mine", ["plain", "prior"], min_budget=8)["met"]
    res["comparisons"][1]["judge_diff"] = {"mean": -1.0, "low": -1.5, "high": -0.5}
    g = goal_status(res, "mine", ["plain", "prior"], min_budget=8)
    assert not g["met"] and [c["judge_not_worse"] for c in g["checks"]] == [True, False]
    missing = _result(primary_reward=0.9)
    missing["comparisons"].pop()
    assert not goal_status(missing, "mine", ["plain", "prior"], min_budget=8)["met"]
    g = regime_goal(missing, "mine", ["plain", "prior"], min_budget=8)
    assert "reward vs prior at N=8" in g["failing"]
    assert not goal_status(res, "mine", ["plain", "prior"], min_budget=128)["met"]  # nothing checked: not met
