r"""``align()``: the loop that ties a Dynamics, a reward, a Controller and a Selection together.

The control space is bound once (τ, d), then for k iterations (budget n·k reward calls per
prompt, plus m for :class:`~ctrlalign.selection.FinalProposal`):

1. θ ~ controller.sample(state)  — (D, n, *θ), each prompt from its own generator;
2. V = space.controls(θ) and outcomes = dynamics.rollout(context, V)  — prompts prefilled once;
3. r = cost.rewards(prompts, outcomes)  — (D, n), checked finite;
4. state, ℓ = controller.step(state, θ, r)  — the update and its log-weights;
5. diagnostics from (r, ℓ) (:func:`~ctrlalign.diagnostics.diagnose`), and the selection
   decides which response to keep.

Where the randomness lives: with ``common_random_numbers=True`` every round replays the same
rollout random numbers (each prompt's token uniforms), so two rounds differ only through their
controls; a dynamics built with greedy decoding (``SamplingConfig(greedy=True)``) makes the
response a function of V alone, the reading y(V) of the formulation.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from ._checks import ConfigError, check_int
from .controllers.base import Controller, Proposal
from .cost import Cost, CostTerms
from .diagnostics import Diagnostics, diagnose
from .dynamics.base import Dynamics, Outcomes, Sample
from .random import make_generators
from .rewards.base import Reward
from .selection import Selection
from .spaces import ControlSpace, PerToken

__all__ = ["AlignmentResult", "Iteration", "IterationRecord", "align", "bind_space", "check_prompts"]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass
class IterationRecord:
    """One iteration of the trace, every tensor (D,).

    Attributes:
        iteration: 1-based iteration index.
        diagnostics: the round's :class:`~ctrlalign.diagnostics.Diagnostics`.
        cost: the :class:`~ctrlalign.cost.CostTerms` of this round.
        kept_reward: reward of the response kept after this iteration (−inf: none yet).
        chosen: (D,) long, the round's candidate sample.
        replaced: (D,) bool, whether the candidate replaced the kept response.
        seconds: wall-clock time of the iteration.
    """

    iteration: int
    diagnostics: Diagnostics
    cost: CostTerms
    kept_reward: torch.Tensor
    chosen: torch.Tensor
    replaced: torch.Tensor
    seconds: float

    def summary(self, d: int) -> dict[str, float | None]:
        """Plain numbers for prompt d (for JSON and printing; non-finite values are None)."""
        g = self.diagnostics
        row = {"iteration": self.iteration}
        for key in ("mean_reward", "max_reward", "reward_std", "ess", "weight_entropy", "mean_norm", "kl",
                    "temperature"):
            row[key] = _finite(float(getattr(g, key)[d]))
        row["best_reward"] = _finite(float(self.kept_reward[d]))
        row["objective"] = _finite(float(self.cost.objective[d]))
        row["seconds"] = self.seconds
        return row


class Iteration(NamedTuple):
    """What the per-iteration callback receives.

    Attributes:
        record: the :class:`IterationRecord` appended to the trace.
        outcomes: the round's :class:`~ctrlalign.dynamics.base.Outcomes` (D × n).
        theta: (D, n, *θ) the sampled coordinates, or None (no control).
        rewards: (D, n).
        log_weights: (D, n) the step's unnormalised log-weights.
        state: the controller's state after the step.
        kept: the D responses kept so far (None where nothing is kept yet).
    """

    record: IterationRecord
    outcomes: Outcomes
    theta: torch.Tensor | None
    rewards: torch.Tensor
    log_weights: torch.Tensor
    state: Proposal
    kept: list[Sample | None]


@dataclass
class AlignmentResult:
    """What :func:`align` returns for D prompts.

    Attributes:
        prompts: the D prompts.
        responses: D kept :class:`~ctrlalign.dynamics.base.Sample` s.
        rewards: (D,) rewards of the kept responses.
        trace: one :class:`IterationRecord` per iteration.
        state: the controller's final state (its ``mean`` is the final θ̂, (D, *θ)).
        reward_calls: (D,) responses scored per prompt (n·k, plus the selection's final m).
        seconds: total wall-clock time.
        controller: the controller's name.
        space: the control space (bound).
        selection: the selection's name.
        meta: free-form extras.
    """

    prompts: list[Any]
    responses: list[Sample]
    rewards: torch.Tensor
    trace: list[IterationRecord]
    state: Proposal
    reward_calls: torch.Tensor
    seconds: float
    controller: str = ""
    space: ControlSpace | None = None
    selection: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[str | None]:
        """The kept responses' texts (language models)."""
        return [s.text for s in self.responses]

    def prompt_trace(self, d: int) -> list[dict[str, float | None]]:
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
                "space": None if self.space is None else self.space.describe(),
                "selection": self.selection,
                "trace": self.prompt_trace(d),
            })
        return out

    def to_json(self) -> str:
        """:meth:`to_records` as a JSON string."""
        return json.dumps(self.to_records())


def bind_space(space: ControlSpace | None, dynamics: Dynamics) -> ControlSpace:
    """``space`` (None: :class:`~ctrlalign.spaces.PerToken`, the paper's) bound to τ (the
    space's ``horizon``, else the dynamics' maximum) and the dynamics' d.

    Raises:
        ConfigError: τ unset everywhere, or larger than the dynamics allows.
    """
    space = PerToken() if space is None else space
    tau = space.horizon if space.horizon is not None else dynamics.max_horizon
    if tau is None:
        raise ConfigError("horizon (τ) is unset on the space and the dynamics has no max_horizon")
    if dynamics.max_horizon is not None and tau > dynamics.max_horizon:
        raise ConfigError(f"horizon (τ) = {tau} exceeds the dynamics' maximum {dynamics.max_horizon}")
    return space.bind(tau, dynamics)


def check_prompts(prompts: Any) -> list[Any]:
    """The D prompts as a list, after refusing a single prompt (a string, bytes or dict) and
    an empty sequence with a :class:`~ctrlalign.ConfigError` that says what to pass instead."""
    if isinstance(prompts, (str, bytes, dict)):
        raise ConfigError(f"prompts must be a list of prompts, got a single {type(prompts).__name__} "
                          f"{str(prompts)[:60]!r}; wrap it in a list: [prompt]")
    prompts = list(prompts)
    check_int("number of prompts", len(prompts), minimum=1, symbol="D")
    return prompts


def align(
    dynamics: Dynamics,
    cost: Cost | Reward,
    controller: Controller,
    prompts: Sequence[Any],
    *,
    space: ControlSpace | None = None,
    seed: int = 0,
    budget: int | None = None,
    context: Any = None,
    selection: Selection | None = None,
    common_random_numbers: bool = False,
    progress: bool = False,
    callback: Callable[[Iteration], None] | None = None,
) -> AlignmentResult:
    r"""Align D prompts: sample → rollout → reward → controller step → select, k times.

    Args:
        dynamics: the system (e.g. :class:`~ctrlalign.dynamics.CausalLM`).
        cost: a :class:`~ctrlalign.cost.Cost`, or a bare reward (wrapped in ``Cost``).
        controller: any :class:`~ctrlalign.controllers.base.Controller`.
        prompts: a list of D prompts (a single string is refused, not split into characters).
        space: the control space θ lives in (:mod:`ctrlalign.spaces`, with its horizon τ);
            None: :class:`~ctrlalign.spaces.PerToken` over the dynamics' whole horizon (the
            paper's). Bound here with :func:`bind_space`.
        seed: base seed; prompt j's generators are seeded from (seed, prompt j's content), so
            its result is the same alone or in any batch.
        budget: optional cap on reward calls per prompt; iterations = min(k, budget // n).
        context: a context already returned by ``dynamics.prepare(prompts)`` (reuse a prefill).
        selection: which response to keep (:mod:`ctrlalign.selection`); None: the controller's
            default (best so far; softmax sampling's reservoir).
        common_random_numbers: replay the same rollout random numbers in every round.
        progress: show a progress bar over iterations.
        callback: called after each iteration with an :class:`Iteration`.

    Returns:
        :class:`AlignmentResult`.
    """
    if not isinstance(cost, Cost):
        cost = Cost(cost)
    prompts = check_prompts(prompts)
    D = len(prompts)
    n = controller.num_samples
    k = controller.num_iterations
    if budget is not None:
        budget = check_int("budget", budget, minimum=n)
        k = min(k, budget // n)
    space = bind_space(space, dynamics)
    selection = controller.default_selection() if selection is None else selection

    t0 = time.perf_counter()
    if context is None:
        context = dynamics.prepare(prompts)
    gens = make_generators(seed, prompts, device=dynamics.device)
    control_gens = [g.control for g in gens]
    rollout_gens = [g.rollout for g in gens]
    select_gens = [g.select for g in gens]
    replay = [g.get_state() for g in rollout_gens] if common_random_numbers else None
    state = controller.init(D, space, device=dynamics.device, dtype=dynamics.dtype)
    kept_state = selection.init(D, device=state.mean.device)
    kept: list[Sample | None] = [None] * D
    calls = torch.zeros(D, dtype=torch.long)
    trace: list[IterationRecord] = []

    def run_round(current: Proposal, num: int) -> tuple[torch.Tensor | None, Outcomes, torch.Tensor]:
        if replay is not None:
            for g, s in zip(rollout_gens, replay):
                g.set_state(s)
        theta = controller.sample(current, control_gens, num_samples=num)
        controls = None if theta is None else space.controls(theta)
        outcomes = dynamics.rollout(context, controls, rollout_gens, num)
        calls.add_(num)
        return theta, outcomes, cost.rewards(prompts, outcomes).to(current.mean.device)

    def keep(outcomes: Outcomes, chosen: torch.Tensor, replaced: torch.Tensor) -> None:
        for d in range(D):
            if bool(replaced[d]):
                kept[d] = outcomes.sample(d, int(chosen[d]))

    bar = tqdm(total=k, desc=f"{controller.name} D={D} n={n}", unit="iter") if progress else None
    for it in range(k):
        ti = time.perf_counter()
        theta, outcomes, rewards = run_round(state, n)
        new_state, log_w = controller.step(state, theta, rewards)
        diag = diagnose(controller, state, new_state, rewards, log_w)
        kept_state, chosen, replaced = selection.update(kept_state, rewards, log_w, select_gens)
        keep(outcomes, chosen, replaced)
        rec = IterationRecord(
            iteration=it + 1, diagnostics=diag, cost=cost.terms(rewards, diag.kl, diag.temperature),
            kept_reward=kept_state.reward.clone(), chosen=chosen, replaced=replaced,
            seconds=time.perf_counter() - ti,
        )
        trace.append(rec)
        state = new_state
        if callback is not None:
            callback(Iteration(rec, outcomes, theta, rewards, log_w, state, list(kept)))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(mean=f"{float(diag.mean_reward.mean()):.3f}", ess=f"{float(diag.ess.mean()):.1f}")
    if bar is not None:
        bar.close()
    if selection.final_samples:
        _, outcomes, rewards = run_round(state, selection.final_samples)
        kept_state, chosen, replaced = selection.final(kept_state, rewards, select_gens)
        keep(outcomes, chosen, replaced)
    missing = [d for d in range(D) if kept[d] is None]
    if missing:
        raise RuntimeError(f"{selection!r} kept no response for prompts {missing}")
    return AlignmentResult(
        prompts=prompts, responses=kept, rewards=kept_state.reward.cpu(), trace=trace, state=state,
        reward_calls=calls, seconds=time.perf_counter() - t0, controller=controller.name, space=space,
        selection=selection.name,
    )
