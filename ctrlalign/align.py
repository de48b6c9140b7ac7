r"""``align()``: the loop that ties a Dynamics, a Cost and a Controller together.

For k iterations (budget n·k reward calls per prompt):

1. V ~ controller.sample(state)  — (D, n, τ, d), each prompt from its own generator;
2. outcomes = dynamics.rollout(context, V)  — the prompts are prepared (prefilled) once;
3. r = cost.rewards(prompts, outcomes)  — (D, n), checked finite;
4. state, info = controller.step(state, V, r);
5. keep, per prompt, the response the controller designates (best so far, or resampled).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ._checks import check_int
from .controllers.base import Controller, ControllerState, StepInfo
from .cost import Cost, CostTerms
from .dynamics.base import Dynamics, Sample
from .random import make_generators
from .rewards.base import Reward

__all__ = ["align", "AlignmentResult", "IterationRecord"]


@dataclass
class IterationRecord:
    """One iteration of the trace, every tensor (D,).

    Attributes:
        iteration: 1-based iteration index.
        info: the controller's :class:`~ctrlalign.controllers.base.StepInfo`.
        cost: the :class:`~ctrlalign.cost.CostTerms` of this round.
        best_reward: reward of the response kept after this iteration.
        seconds: wall-clock time of the iteration.
    """

    iteration: int
    info: StepInfo
    cost: CostTerms
    best_reward: torch.Tensor
    seconds: float

    def summary(self, d: int) -> dict[str, float]:
        """Plain numbers for prompt d (for JSON and printing)."""
        i = self.info
        return {
            "iteration": self.iteration,
            "mean_reward": float(i.mean_reward[d]),
            "max_reward": float(i.max_reward[d]),
            "best_reward": float(self.best_reward[d]),
            "ess": float(i.ess[d]),
            "weight_entropy": float(i.weight_entropy[d]),
            "mean_norm": float(i.mean_norm[d]),
            "kl": float(i.kl[d]),
            "objective": float(self.cost.objective[d]),
            "seconds": self.seconds,
        }


@dataclass
class AlignmentResult:
    """What :func:`align` returns for D prompts.

    Attributes:
        prompts: the D prompts.
        responses: D kept :class:`~ctrlalign.dynamics.base.Sample` s (best so far, or the
            resampled one for softmax sampling).
        rewards: (D,) rewards of the kept responses.
        trace: one :class:`IterationRecord` per iteration.
        state: the controller's final state (its ``mean`` is the final U, (D, τ, d)).
        reward_calls: (D,) responses scored per prompt (= n·k).
        seconds: total wall-clock time.
    """

    prompts: list[Any]
    responses: list[Sample]
    rewards: torch.Tensor
    trace: list[IterationRecord]
    state: ControllerState
    reward_calls: torch.Tensor
    seconds: float
    controller: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[str | None]:
        """The kept responses' texts (language models)."""
        return [s.text for s in self.responses]

    def prompt_trace(self, d: int) -> list[dict[str, float]]:
        """Per-iteration summary for prompt d."""
        return [rec.summary(d) for rec in self.trace]

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per prompt."""
        out = []
        for d, p in enumerate(self.prompts):
            out.append({
                "prompt": p if isinstance(p, (str, list)) else torch.as_tensor(p).tolist(),
                "response": self.responses[d].to_dict(),
                "reward": float(self.rewards[d]),
                "reward_calls": int(self.reward_calls[d]),
                "controller": self.controller,
                "trace": self.prompt_trace(d),
            })
        return out

    def to_json(self) -> str:
        """:meth:`to_records` as a JSON string."""
        return json.dumps(self.to_records())


def _resolve_temperature(cost: Cost, controller: Controller) -> float:
    if cost.temperature is not None:
        return cost.temperature
    return float(getattr(controller, "temperature", 1.0))


def align(
    dynamics: Dynamics,
    cost: Cost | Reward,
    controller: Controller,
    prompts: Sequence[Any],
    *,
    seed: int = 0,
    budget: int | None = None,
    context: Any = None,
    progress: bool = False,
    callback: Callable[[IterationRecord], None] | None = None,
) -> AlignmentResult:
    r"""Align D prompts: sample → rollout → reward → controller step, k times.

    Args:
        dynamics: the system (e.g. :class:`~ctrlalign.dynamics.CausalLM`).
        cost: a :class:`~ctrlalign.cost.Cost`, or a bare reward (wrapped in ``Cost``).
        controller: any :class:`~ctrlalign.controllers.base.Controller`.
        prompts: D prompts.
        seed: base seed; prompt j's generators are seeded from (seed, prompt j's content), so
            its result is the same alone or in any batch.
        budget: optional cap on reward calls per prompt; iterations = min(k, budget // n).
        context: a context already returned by ``dynamics.prepare(prompts)`` (reuse a prefill).
        progress: show a progress bar over iterations.
        callback: called with each :class:`IterationRecord`.

    Returns:
        :class:`AlignmentResult`.
    """
    if not isinstance(cost, Cost):
        cost = Cost(cost)
    prompts = list(prompts)
    D = check_int("number of prompts", len(prompts), minimum=1, symbol="D")
    n = controller.num_samples
    k = controller.num_iterations
    if budget is not None:
        budget = check_int("budget", budget, minimum=n)
        k = min(k, budget // n)
    tau = controller.horizon if controller.horizon is not None else dynamics.max_horizon
    if tau is None:
        raise ValueError("horizon (τ) is unset on the controller and the dynamics has no max_horizon")
    if dynamics.max_horizon is not None and tau > dynamics.max_horizon:
        raise ValueError(f"horizon (τ) = {tau} exceeds the dynamics' maximum {dynamics.max_horizon}")
    lam = _resolve_temperature(cost, controller)

    t0 = time.perf_counter()
    if context is None:
        context = dynamics.prepare(prompts)
    gens = make_generators(seed, prompts, device=dynamics.device)
    control_gens = [g.control for g in gens]
    rollout_gens = [g.rollout for g in gens]
    select_gens = [g.select for g in gens]
    state = controller.init(D, dynamics.hidden_size, tau, device=dynamics.device, dtype=dynamics.dtype)
    kept: list[Sample | None] = [None] * D
    calls = torch.zeros(D, dtype=torch.long)
    trace: list[IterationRecord] = []

    iterator = range(k)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=k, desc=f"{controller.name} D={D} n={n}", unit="iter")
    for it in iterator:
        ti = time.perf_counter()
        controls = controller.sample(state, control_gens)
        outcomes = dynamics.rollout(context, controls, rollout_gens, n)
        rewards = cost.rewards(prompts, outcomes).to(state.mean.device)
        calls += n
        kl = controller.kl(state)
        state, info = controller.step(state, controls, rewards, select_gens)
        for d in range(D):
            if bool(info.replace[d]) or kept[d] is None:
                kept[d] = outcomes.sample(d, int(info.chosen[d]))
        rec = IterationRecord(
            iteration=it + 1, info=info, cost=cost.terms(rewards, kl, lam),
            best_reward=state.best_reward.clone(), seconds=time.perf_counter() - ti,
        )
        trace.append(rec)
        if callback is not None:
            callback(rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(best=f"{float(state.best_reward.mean()):.3f}", ess=f"{float(info.ess.mean()):.1f}")
    if bar is not None:
        bar.close()
    return AlignmentResult(
        prompts=prompts, responses=kept, rewards=state.best_reward.cpu(), trace=trace, state=state,
        reward_calls=calls, seconds=time.perf_counter() - t0, controller=controller.name,
    )
