"""Solving a batch of prompts: the aligned answer, the plain model's answer for contrast, and
(optionally) every candidate scored on the way.

* :func:`plain_responses` — the plain model's response to each prompt: one rollout with no
  control (Best-of-1 at σ = 0), from the same seed.
* :func:`solve_batch` — the controller's ``solve`` (either kind) plus the plain contrast, as one
  JSON-ready record per prompt.
* :func:`summarize` — aligned vs plain reward over a run: means, 95% CIs, paired difference.
* :class:`CandidateRecorder` — an ``align`` callback that keeps all n·k candidates (text,
  reward, iteration, log-weight, per-token log-probabilities under the controlled and the plain
  head) as JSON-ready rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from ._checks import RewardError
from .align import AlignmentResult, Iteration, align
from .controllers import BestOfN
from .data import PromptItem
from .spaces import ControlSpace

__all__ = ["CandidateRecorder", "plain_responses", "solve_batch", "summarize"]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class CandidateRecorder:
    """An ``align`` callback collecting every candidate of every iteration.

    Each row: ``id``, ``iteration`` (1-based), ``sample`` (0 … n−1), ``text``, ``reward``,
    ``log_weight`` (the step's unnormalised log-weight ℓ), ``chosen`` (the round's candidate for
    the selection), and, when the dynamics reports them, ``length``, ``logprob`` = Σ_t log π_V(y_t)
    with ``token_logprobs``, and ``base_logprob`` = Σ_t log π_0(y_t) with ``base_token_logprobs``
    (first ``length`` tokens). Non-finite numbers are written as null.
    """

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        self.rows: list[dict[str, Any]] = []

    def __call__(self, it: Iteration) -> None:
        o = it.outcomes
        for d in range(o.num_prompts):
            for i in range(o.num_samples):
                self.rows.append(self._row(it, d, i))

    def _row(self, it: Iteration, d: int, i: int) -> dict[str, Any]:
        o = it.outcomes
        length = None if o.lengths is None else int(o.lengths[d, i])
        row: dict[str, Any] = {
            "id": self.ids[it.prompts[d]], "iteration": it.record.iteration, "sample": i,
            "text": None if o.texts is None else o.texts[d][i],
            "reward": _finite(float(it.rewards[d, i])),
            "log_weight": _finite(float(it.log_weights[d, i])),
            "chosen": int(it.record.chosen[d]) == i,
        }
        if length is not None:
            row["length"] = length
        for key, lp in (("logprob", o.logprobs), ("base_logprob", o.base_logprobs)):
            if lp is not None:
                tokens = lp[d, i, :length].float()
                row[key] = _finite(float(tokens.sum()))
                row[key.replace("logprob", "token_logprobs")] = [_finite(float(x)) for x in tokens.tolist()]
        return row

    def for_prompt(self, prompt_id: str) -> list[dict[str, Any]]:
        """The rows of one prompt, in (iteration, sample) order."""
        return [r for r in self.rows if r["id"] == prompt_id]


def plain_responses(dynamics: Any, reward: Any, texts: list[str], *, seed: int, context: Any = None) -> AlignmentResult:
    """The plain model's response to each prompt and its reward: one uncontrolled rollout
    (Best-of-1, σ = 0, one iteration, so no space is sampled), seeded like the aligned run."""
    plain = BestOfN(num_samples=1, num_iterations=1, sigma=0.0)
    return align(dynamics, reward, plain, texts, seed=seed, context=context)


def solve_batch(dynamics: Any, reward: Any, controller: Any, items: list[PromptItem], seed: int, base: bool,
                progress: bool = False, selection: Any = None, common_random_numbers: bool = False,
                candidates: CandidateRecorder | None = None, space: ControlSpace | None = None) -> list[dict[str, Any]]:
    """Solve a batch of prompts with ``controller.solve`` (either kind of controller: open loop
    by :func:`~ctrlalign.align`, closed loop by its ``run``) and, if ``base``, sample the plain
    model; one record each.

    Record keys: ``id``, ``prompt``, then :meth:`~ctrlalign.solution.Solution.record`'s
    (``response``, ``reward``, ``controller``, ``kind``, ``space``, ``selection``,
    ``reward_calls`` (full), ``prefix_calls``, ``tokens`` (decoded), ``trace``: per iteration
    or per checkpoint, and a closed-loop run's ``log_normalizer`` and ``distinct``), then
    ``seconds_batch``, and with ``base`` ``base_response``, ``base_reward``.

    Raises:
        RewardError: the reward failed; the message maps the batch index to the prompt id.
    """
    texts = [it.text for it in items]
    t0 = time.perf_counter()
    context = dynamics.prepare(texts)
    try:
        solution = controller.solve(dynamics, reward, texts, space=space, seed=seed, context=context,
                                    progress=progress, selection=selection,
                                    common_random_numbers=common_random_numbers, callback=candidates)
        base_res = plain_responses(dynamics, reward, texts, seed=seed, context=context) if base else None
    except RewardError as exc:
        ids = ", ".join(f"{d}={it.id}" for d, it in enumerate(items))
        raise RewardError(f"{exc} [prompt index in this batch = prompt id: {ids}]") from exc
    seconds = time.perf_counter() - t0
    records = []
    for d, it in enumerate(items):
        rec: dict[str, Any] = {"id": it.id, "prompt": it.text, **solution.record(d)}
        if base_res is not None:
            rec["base_response"] = base_res.responses[d].text
            rec["base_reward"] = float(base_res.rewards[d])
        rec["seconds_batch"] = seconds
        records.append(rec)
    return records


def _mean_ci(values: list[float]) -> dict[str, Any]:
    """Mean and 95% Student-t confidence interval (None where n < 2)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "ci95": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "ci95": [mean - half, mean + half]}


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aligned vs plain reward over a run's records: each one's mean and 95% CI, the paired
    difference (aligned − plain, over prompts with both) and the win rate, plus printable
    ``lines``."""
    aligned = [float(r["reward"]) for r in records]
    pairs = [(float(r["reward"]), float(r["base_reward"])) for r in records if r.get("base_reward") is not None]
    out: dict[str, Any] = {"prompts": len(records), "aligned": _mean_ci(aligned)}
    if pairs:
        out["plain"] = _mean_ci([b for _, b in pairs])
        out["difference"] = _mean_ci([a - b for a, b in pairs])
        out["win_rate"] = sum(a > b for a, b in pairs) / len(pairs)

    def show(name: str, s: dict[str, Any]) -> str:
        if s["mean"] is None:
            return f"{name}: no results"
        ci = "" if s["ci95"] is None else f"  95% CI [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]"
        return f"{name}: mean {s['mean']:.4f}{ci}  (n={s['n']})"

    lines = [f"summary over {len(records)} prompts", show("  aligned reward", out["aligned"])]
    if pairs:
        lines += [show("  plain reward  ", out["plain"]), show("  aligned - plain", out["difference"]),
                  f"  aligned beats plain on {out['win_rate']:.0%} of prompts"]
    out["lines"] = lines
    return out
