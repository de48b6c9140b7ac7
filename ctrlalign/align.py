r"""``align()``: the round loop that ties a Dynamics, a reward, a Controller and a Selection together.

The control space is bound once (τ, d). Up to S = ``batch_prompts`` prompts are in flight
(:mod:`ctrlalign.schedule`; S = all prompts by default); every round, for the S' prompts in
flight (budget n·k reward calls per prompt, plus m for
:class:`~ctrlalign.selection.FinalProposal`):

1. θ ~ controller.sample(state)  — (S', n, *θ), each prompt from its own generator;
2. V = space.controls(θ) and outcomes = dynamics.rollout(context, V)  — prompts prefilled once
   per cohort;
3. r = cost.rewards(prompts, outcomes)  — (S', n), checked finite;
4. state, info = controller.step(state, θ, r)  — the update, and the log-weights ℓ and λ it used;
5. diagnostics from (r, info) (:func:`~ctrlalign.diagnostics.diagnose`), and the selection
   decides which response to keep;

and each prompt's iteration counter (owned by the loop, not by the controller's state) moves on.
A prompt leaves after k rounds (then the selection's final draws). This round is the only one:
:func:`align_stream` is the same loop with S < D.

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
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from tqdm.auto import tqdm

from ._checks import ConfigError, check_int
from .cost import Cost, CostTerms
from .data import check_prompt
from .diagnostics import Diagnostics, diagnose
from .dynamics.base import Dynamics, Outcomes, Sample
from .random import make_generators
from .rewards.base import Reward
from .schedule import Scheduler, Slot, stack_rows, take_row
from .selection import Selection
from .spaces import ControlSpace, PerToken

if TYPE_CHECKING:  # annotations only: the controllers call align (Controller.solve)
    from .controllers.base import Controller, Proposal, StepInfo

__all__ = ["AlignmentResult", "Iteration", "IterationRecord", "align", "align_stream", "bind_space",
           "check_prompts"]


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

    def row(self, d: int) -> IterationRecord:
        """Prompt d's part of the record (every tensor (1,))."""
        return IterationRecord(
            iteration=self.iteration, diagnostics=Diagnostics(*(t[d:d + 1] for t in self.diagnostics)),
            cost=CostTerms(*(t[d:d + 1] for t in self.cost)), kept_reward=self.kept_reward[d:d + 1],
            chosen=self.chosen[d:d + 1], replaced=self.replaced[d:d + 1], seconds=self.seconds)

    @classmethod
    def concat(cls, records: Sequence[IterationRecord]) -> IterationRecord:
        """One record of the prompts of several records of one iteration, in order; ``seconds``
        is their mean."""
        return cls(
            iteration=records[0].iteration,
            diagnostics=Diagnostics(*(torch.cat(parts) for parts in zip(*(r.diagnostics for r in records)))),
            cost=CostTerms(*(torch.cat(parts) for parts in zip(*(r.cost for r in records)))),
            kept_reward=torch.cat([r.kept_reward for r in records]),
            chosen=torch.cat([r.chosen for r in records]), replaced=torch.cat([r.replaced for r in records]),
            seconds=sum(r.seconds for r in records) / len(records))

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
    """What the per-round callback receives, for the S' prompts of the round.

    With every prompt in flight (the default) a round is one iteration of all D prompts, and
    S' = D in prompt order.

    Attributes:
        record: the :class:`IterationRecord` of the round's S' prompts (its ``iteration`` is
            theirs: prompts admitted together run their rounds together).
        outcomes: the round's :class:`~ctrlalign.dynamics.base.Outcomes` (S' × n).
        theta: (S', n, *θ) the sampled coordinates, or None (no control).
        rewards: (S', n).
        info: the step's :class:`~ctrlalign.controllers.base.StepInfo` (log-weights (S', n),
            λ (S',)).
        state: the controller's state after the step (S' prompts).
        kept: the S' responses kept so far (None where nothing is kept yet).
        prompts: the S' prompts' positions in the run's prompt list.
    """

    record: IterationRecord
    outcomes: Outcomes
    theta: torch.Tensor | None
    rewards: torch.Tensor
    info: StepInfo
    state: Proposal
    kept: list[Sample | None]
    prompts: list[int]

    @property
    def log_weights(self) -> torch.Tensor:
        """(S', n) the step's unnormalised log-weights (``info.log_weights``)."""
        return self.info.log_weights


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
        meta: the loop's bookkeeping: ``rounds`` (decode rounds), ``rows`` (rows per round),
            ``prepares`` (prefills) and ``round_seconds``.
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
    an empty sequence with a :class:`~ctrlalign.ConfigError` that says what to pass instead,
    and every text prompt as the command line does (:func:`ctrlalign.data.check_prompt`: empty,
    whitespace-only or a lone surrogate is refused naming the prompt's index), before any
    prompt is run."""
    if isinstance(prompts, (str, bytes, dict)):
        raise ConfigError(f"prompts must be a list of prompts, got a single {type(prompts).__name__} "
                          f"{str(prompts)[:60]!r}; wrap it in a list: [prompt]")
    prompts = list(prompts)
    check_int("number of prompts", len(prompts), minimum=1, symbol="D")
    return [check_prompt(d, p) for d, p in enumerate(prompts)]


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
    batch_prompts: int | None = None,
    progress: bool = False,
    callback: Callable[[Iteration], None] | None = None,
) -> AlignmentResult:
    r"""Align D prompts: sample → rollout → reward → controller step → select, k rounds each.

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
        context: a context already returned by ``dynamics.prepare(prompts)`` for all D prompts
            (reuse a prefill); needs every prompt in flight (``batch_prompts`` None or >= D).
        selection: which response to keep (:mod:`ctrlalign.selection`); None: the controller's
            default (best so far; softmax sampling's reservoir).
        common_random_numbers: replay the same rollout random numbers in every round.
        batch_prompts: S, prompts in flight (S·n rows per decode); None: all D. A prompt's
            result does not depend on S (Batched AISP, :func:`align_stream`).
        progress: show a progress bar over prompt-rounds.
        callback: called after each round with an :class:`Iteration`.

    Returns:
        :class:`AlignmentResult`.

    Raises:
        ConfigError: bad prompts, budget or ``batch_prompts``, or a ``context`` with fewer
            prompts in flight than D.
    """
    if not isinstance(cost, Cost):
        cost = Cost(cost)
    prompts = check_prompts(prompts)
    P = len(prompts)
    n = controller.num_samples
    k = controller.num_iterations
    if budget is not None:
        budget = check_int("budget", budget, minimum=n)
        k = min(k, budget // n)
    S = P if batch_prompts is None else check_int("batch_prompts", batch_prompts, minimum=1, symbol="S")
    if context is not None and S < P:
        raise ConfigError(f"a prepared context covers all {P} prompts, but batch_prompts (S) = {S} puts "
                          "fewer in flight; pass context=None or batch_prompts >= the number of prompts")
    space = bind_space(space, dynamics)
    selection = controller.default_selection() if selection is None else selection
    device, dtype = dynamics.device, dynamics.dtype

    t0 = time.perf_counter()
    gens = make_generators(seed, prompts, device=device)
    calls = torch.zeros(P, dtype=torch.long)
    meta: dict[str, Any] = {"rounds": 0, "rows": [], "prepares": 0, "round_seconds": []}
    prepared: dict[str, Any] = {"members": tuple(range(P)) if context is not None else None, "context": context}

    def open_slot(j: int) -> Slot:
        return Slot(j, controller.init(1, space, device=device, dtype=dtype), selection.init(1, device=device),
                    replay=gens[j].rollout.get_state() if common_random_numbers else None)

    def rollout(slots: Sequence[Slot], state: Proposal, num: int) -> tuple[torch.Tensor | None, Outcomes,
                                                                            torch.Tensor]:
        """θ from ``state``, then the rollout of the slots' prompts and its rewards (S', num)."""
        members = tuple(s.index for s in slots)
        if members != prepared["members"]:
            prepared.update(members=members, context=dynamics.prepare([prompts[j] for j in members]))
            meta["prepares"] += 1
        for s in slots:
            if s.replay is not None:
                gens[s.index].rollout.set_state(s.replay)
        theta = controller.sample(state, [gens[j].control for j in members], num_samples=num)
        controls = None if theta is None else space.controls(theta)
        outcomes = dynamics.rollout(prepared["context"], controls, [gens[j].rollout for j in members], num)
        calls[list(members)] += num
        rewards = cost.rewards([prompts[j] for j in members], outcomes).to(state.mean.device)
        return theta, outcomes, rewards

    scheduler = Scheduler(P, S, open_slot, k)
    bar = tqdm(total=P * k, desc=f"{controller.name} D={P} S={S} n={n}", unit="round") if progress else None
    while scheduler.running:
        slots = scheduler.admit()
        tr = time.perf_counter()
        state = stack_rows([s.state for s in slots])
        theta, outcomes, rewards = rollout(slots, state, n)
        new_state, info = controller.step(state, theta, rewards)
        diag = diagnose(controller, state, rewards, info)
        terms = cost.terms(rewards, diag.kl, diag.temperature)
        kept_state, chosen, replaced = selection.update(stack_rows([s.kept_state for s in slots]), rewards,
                                                       info.log_weights, [gens[s.index].select for s in slots])
        seconds = time.perf_counter() - tr
        meta["rounds"] += 1
        meta["rows"].append(len(slots) * n)
        meta["round_seconds"].append(seconds)
        record = IterationRecord(iteration=slots[0].iteration + 1, diagnostics=diag, cost=terms,
                                 kept_reward=kept_state.reward.clone(), chosen=chosen, replaced=replaced,
                                 seconds=seconds)
        for i, s in enumerate(slots):
            s.iteration += 1
            s.state, s.kept_state = take_row(new_state, i), take_row(kept_state, i)
            if bool(replaced[i]):
                s.kept = outcomes.sample(i, int(chosen[i]))
            s.rounds.append(record.row(i))
        if callback is not None:
            callback(Iteration(record, outcomes, theta, rewards, info, new_state, [s.kept for s in slots],
                               [s.index for s in slots]))
        if bar is not None:
            bar.update(len(slots))
            bar.set_postfix(mean=f"{float(diag.mean_reward.mean()):.3f}", ess=f"{float(diag.ess.mean()):.1f}")
        finished = scheduler.retire()
        if finished and selection.final_samples:
            _, outcomes, rewards = rollout(finished, stack_rows([s.state for s in finished]), selection.final_samples)
            kept_state, chosen, _ = selection.final(stack_rows([s.kept_state for s in finished]), rewards,
                                                    [gens[s.index].select for s in finished])
            for i, s in enumerate(finished):
                s.kept_state = take_row(kept_state, i)
                s.kept = outcomes.sample(i, int(chosen[i]))
        scheduler.finish(finished)
    if bar is not None:
        bar.close()
    slots = scheduler.results()
    missing = [s.index for s in slots if s.kept is None]
    if missing:
        raise RuntimeError(f"{selection!r} kept no response for prompts {missing}")
    return AlignmentResult(
        prompts=prompts, responses=[s.kept for s in slots],
        rewards=torch.cat([s.kept_state.reward for s in slots]).cpu(),
        trace=[IterationRecord.concat([s.rounds[it] for s in slots]) for it in range(k)],
        state=stack_rows([s.state for s in slots]), reward_calls=calls, seconds=time.perf_counter() - t0,
        controller=controller.name, space=space, selection=selection.name, meta=meta,
    )


def align_stream(
    dynamics: Dynamics,
    cost: Cost | Reward,
    controller: Controller,
    prompts: Sequence[Any],
    *,
    batch_prompts: int,
    space: ControlSpace | None = None,
    seed: int = 0,
    selection: Selection | None = None,
    common_random_numbers: bool = False,
    progress: bool = False,
) -> AlignmentResult:
    r"""Batched AISP: :func:`align` with at most S = ``batch_prompts`` prompts in flight
    (S·n rows per decode; S = k·D fills the batch Best-of-N of N = n·k would use). The same
    loop, so each prompt's result equals :func:`align`'s for it. ``meta`` holds ``rounds``
    (decode calls), ``rows`` (rows per call) and ``prepares`` (prefills).
    """
    return align(dynamics, cost, controller, prompts, space=space, seed=seed, selection=selection,
                 common_random_numbers=common_random_numbers, batch_prompts=batch_prompts, progress=progress)
