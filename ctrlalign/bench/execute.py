r"""One benchmark run: a controller on a prompt batch under one seed, read off at every budget.

:func:`run_one` calls :func:`ctrlalign.align` once, with k_max = N_max / n iterations, and
reads off the result at every budget N = n·i it was asked for (i ≤ k_max) from the
per-iteration callback. This *anytime* read-out is exact, not an approximation: every
controller here (AISP, MPPI, CEM, Best-of-N, softmax sampling) draws the same noise and makes
the same updates in its first i iterations whatever k is, so the response kept after i
iterations of a k_max-iteration run is the response a run with k = i returns
(``tests/test_bench.py`` checks this against separate runs). The budget is checked, not
assumed: the optimised reward is a :class:`~ctrlalign.rewards.CountingReward`, and at each
budget N every prompt must have been scored exactly N times.

Per (controller, N, seed, prompt) a record holds: the optimised reward of the kept response,
KL(q_U‖p) and ‖U‖ of the controller's final proposal (its mean after the last update), the
token-level log-ratio of the kept response to the base model, its diversity, its text (toy
systems: its value and tokens), and the time, tokens and reward calls spent to reach N. The
held-out scores are added later (:func:`~ctrlalign.bench.score.finish_bench`).

A controller that cannot be read off at every budget (``anytime`` False: the closed-loop ones,
whose cost is set by their own hyperparameters) is run once by :func:`run_solved`, through the
``solve`` protocol both kinds implement; its records carry the budget it spent (full reward
calls per prompt) as ``budget``.

Every record holds the decoded tokens of its prompt counted by a
:class:`~ctrlalign.dynamics.counting.CountingDynamics` wrapped around the system (stopped and
resampled-away rows included; not the controller's own report, which is checked against it),
the full reward calls (``reward_calls``) and prefix reward calls (``prefix_calls``) counted by
the :class:`~ctrlalign.rewards.CountingReward`, and the seconds per prompt.
"""

from __future__ import annotations

import resource
import sys
from typing import Any, NamedTuple

import torch

from ..align import Iteration, align
from ..cost import Cost
from ..dynamics.base import Dynamics, Sample, StepwiseDynamics
from ..dynamics.counting import CountingDynamics
from ..rewards.counting import CountingReward
from . import diversity
from .config import BenchController

__all__ = ["BenchRun", "counted", "peak_rss_mb", "run_one", "run_solved"]


class BenchRun(NamedTuple):
    """What one (controller, seed, prompt batch) run produced.

    Attributes:
        run: wall-clock, prefill, tokens, tokens/s, reward calls, memory, mean best reward.
        records: one per (budget N, prompt), budget-major (module docstring).
        traces: one per prompt: ``align``'s per-iteration trace, each round with the proposal's
            ‖U‖ and KL after the update (``post_mean_norm``, ``post_kl``) and its n rewards.
    """

    run: dict[str, Any]
    records: list[dict[str, Any]]
    traces: list[dict[str, Any]]


def peak_rss_mb() -> float:
    """The process's peak resident memory in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def counted(dynamics: Dynamics, num_prompts: int) -> tuple[Dynamics, CountingDynamics | None]:
    """``dynamics`` wrapped in a :class:`~ctrlalign.dynamics.counting.CountingDynamics` reset for
    D prompts (and the wrapper), or as it is (and None) when it cannot be run step by step."""
    if not isinstance(dynamics, StepwiseDynamics):
        return dynamics, None
    wrapper = CountingDynamics(dynamics)
    wrapper.reset(num_prompts)
    return wrapper, wrapper


def _calls(counting: CountingReward, text: Any) -> tuple[int, int]:
    """(full, prefix) reward calls of a prompt so far."""
    key = CountingReward.key(text)
    return counting.calls.get(key, 0), counting.prefix_calls.get(key, 0)


def run_one(dynamics: Dynamics, cost: Cost, counting: CountingReward, entry: BenchController, texts: list,
            ids: list[str], context: Any, seed: int, budgets: list[int], prefill_s: float) -> BenchRun:
    """Run ``entry`` on the D prompts ``texts`` (ids ``ids``, prefilled ``context``) for
    N_max = max(budgets) reward calls per prompt, and read the kept response off at every budget.

    Args:
        cost: the cost whose reward is ``counting`` (reset here).
        prefill_s: seconds the prefill took (charged to every budget's time per prompt).

    Raises:
        AssertionError: a prompt was scored other than N times at budget N, or the read-out
            disagrees with what ``align`` returns.
    """
    n = entry.num_samples_used
    N_max = max(budgets)
    k_max = N_max // n
    controller = entry.build(k_max)
    counting.reset()
    Dn = len(texts)
    totals = {"seconds": 0.0, "tokens": 0}
    checkpoints = {b // n: b for b in budgets}
    snaps: list[dict[str, Any]] = []
    post: list[tuple[torch.Tensor, torch.Tensor]] = []
    round_rewards: list[torch.Tensor] = []  # (D, n) per round: the reference frontier's pools
    kept: list[Sample | None] = [None] * Dn
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    def callback(it: Iteration) -> None:
        rec = it.record
        totals["seconds"] += rec.seconds
        if it.outcomes.lengths is not None:
            totals["tokens"] += int(it.outcomes.lengths.sum())
        norm = it.state.mean.double().flatten(1).norm(dim=-1).cpu()
        kl = controller.kl(it.state).double().cpu()
        post.append((norm, kl))
        round_rewards.append(it.rewards.double().cpu())
        kept[:] = it.kept
        i = rec.iteration
        if i not in checkpoints:
            return
        N = checkpoints[i]
        for d in range(Dn):
            calls = counting.calls.get(CountingReward.key(texts[d]), 0)
            if calls != N:
                raise AssertionError(f"budget mismatch: {entry.key} used {calls} reward calls for prompt "
                                     f"{ids[d]} at N = {N}")
            s = it.kept[d]
            tkl = None
            if s.logprob is not None and s.base_logprob is not None:
                tkl = s.logprob - s.base_logprob
            snaps.append({
                "controller": entry.key, "budget": N, "seed": seed, "prompt_id": ids[d],
                "num_samples": n, "num_iterations": i,
                "reward": float(rec.kept_reward[d]),
                "control_kl": float(kl[d]), "mean_norm": float(norm[d]),
                "token_kl": tkl,
                "length": None if s.tokens is None else len(s.tokens),
                "text": s.text,
                "value": None if s.value is None else s.value.tolist(),
                # toy systems: keep the tokens for the judge (language models keep the text)
                "tokens_ids": s.tokens if s.text is None else None,
                "reward_calls": calls,
                "prefix_calls": _calls(counting, texts[d])[1],
                "seconds_per_prompt": (totals["seconds"] + prefill_s) / Dn,
                "tokens": totals["tokens"] / Dn if wrapper is None else int(wrapper.tokens[d]),
                "diversity": None if s.text is None else diversity.diversity(s.text),
            })

    if entry.greedy:
        dynamics = dynamics.with_sampling(greedy=True)
    dynamics, wrapper = counted(dynamics, Dn)
    res = align(dynamics, cost, controller, texts, space=entry.space.build(), seed=seed, context=context,
                callback=callback, selection=entry.build_selection(),
                common_random_numbers=entry.common_random_numbers)
    # the anytime read-out must agree with what align itself returns at k_max
    for d in range(Dn):
        if abs(float(res.rewards[d]) - snaps[-Dn + d]["reward"]) > 1e-9 or res.responses[d].text != kept[d].text:
            raise AssertionError(f"kept-response bookkeeping diverged from align() for {entry.key}, prompt {ids[d]}")
        calls = int(res.reward_calls[d])
        if calls != N_max:
            raise AssertionError(f"{entry.key} made {calls} reward calls for prompt {ids[d]}, expected {N_max}")
    traces = []
    for d in range(Dn):
        trace = res.prompt_trace(d)
        for t, (norm, kl), rr in zip(trace, post, round_rewards):
            t["post_mean_norm"] = float(norm[d])
            t["post_kl"] = float(kl[d])
            t["rewards"] = rr[d].tolist()
        traces.append({"controller": entry.key, "seed": seed, "prompt_id": ids[d], "trace": trace})
    secs = res.seconds
    run = {
        "controller": entry.key, "seed": seed, "prompt_ids": list(ids), "num_prompts": Dn,
        "budget": N_max, "num_samples": n, "num_iterations": k_max, "seconds": secs,
        "prefill_seconds": prefill_s,
        "tokens": totals["tokens"], "tokens_per_second": totals["tokens"] / secs if secs > 0 else 0.0,
        "reward_calls_per_prompt": N_max,
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "mean_best_reward": float(res.rewards.double().mean()),
    }
    return BenchRun(run, snaps, traces)


def run_solved(dynamics: Dynamics, cost: Cost, counting: CountingReward, entry: BenchController, texts: list,
               ids: list[str], context: Any, seed: int, prefill_s: float) -> BenchRun:
    """Run ``entry`` once on the D prompts ``texts`` through its controller's ``solve`` (a
    controller with its own cost, e.g. a closed-loop one) and record, per prompt, the kept
    response, its reward and the budget spent: decoded tokens counted by the wrapper, full and
    prefix reward calls counted by ``counting`` (``budget`` = the full calls), seconds.

    Raises:
        AssertionError: the controller's own count of tokens or calls disagrees with the
            wrappers'.
    """
    controller = entry.build()
    counting.reset()
    Dn = len(texts)
    if entry.greedy:
        dynamics = dynamics.with_sampling(greedy=True)
    dynamics, wrapper = counted(dynamics, Dn)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sol = controller.solve(dynamics, cost, texts, seed=seed, context=context, space=entry.space.build(),
                           selection=entry.build_selection(), common_random_numbers=entry.common_random_numbers)
    tokens = sol.tokens if wrapper is None else wrapper.tokens
    records, traces = [], []
    for d in range(Dn):
        full, prefix = _calls(counting, texts[d])
        if (full, prefix) != (int(sol.reward_calls[d]), int(sol.prefix_calls[d])) or int(tokens[d]) != int(sol.tokens[d]):
            raise AssertionError(f"budget mismatch: {entry.key} reports {int(sol.reward_calls[d])} full and "
                                 f"{int(sol.prefix_calls[d])} prefix calls and {int(sol.tokens[d])} tokens for prompt "
                                 f"{ids[d]}; counted {full}, {prefix} and {int(tokens[d])}")
        s = sol.responses[d]
        records.append({
            "controller": entry.key, "budget": full, "seed": seed, "prompt_id": ids[d],
            "num_samples": getattr(controller, "num_samples", getattr(controller, "num_particles", None)),
            "num_iterations": None, "reward": float(sol.rewards[d]), "control_kl": None, "mean_norm": None,
            "token_kl": None if s.logprob is None or s.base_logprob is None else s.logprob - s.base_logprob,
            "length": None if s.tokens is None else len(s.tokens), "text": s.text,
            "value": None if s.value is None else s.value.tolist(),
            "tokens_ids": s.tokens if s.text is None else None,
            "reward_calls": full, "prefix_calls": prefix,
            "seconds_per_prompt": (sol.seconds + prefill_s) / Dn, "tokens": int(tokens[d]),
            "diversity": None if s.text is None else diversity.diversity(s.text),
        })
        traces.append({"controller": entry.key, "seed": seed, "prompt_id": ids[d], "kind": sol.kind,
                       "trace": sol.traces[d]})
    secs = sol.seconds
    total = int(tokens.sum())
    run = {
        "controller": entry.key, "seed": seed, "prompt_ids": list(ids), "num_prompts": Dn,
        "budget": max(r["budget"] for r in records), "num_samples": records[0]["num_samples"], "num_iterations": None,
        "seconds": secs, "prefill_seconds": prefill_s, "tokens": total,
        "tokens_per_second": total / secs if secs > 0 else 0.0,
        "reward_calls_per_prompt": max(r["reward_calls"] for r in records),
        "prefix_calls_per_prompt": max(r["prefix_calls"] for r in records),
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "mean_best_reward": float(sol.rewards.double().mean()),
    }
    return BenchRun(run, records, traces)
