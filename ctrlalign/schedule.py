r"""Batched AISP: a scheduler that keeps the decode batch full while prompts run k sequential rounds.

Best-of-N with N = n·k decodes a prompt's N samples in one batch. An adaptive controller
needs k *sequential* rounds of n samples, so at the same number of prompts in flight its decode
batch is k times smaller. The remedy (Kanai et al., Figure 2) is to interleave κ·D prompts:
:func:`align_stream` keeps up to ``batch_prompts`` = S prompts in flight, so every decode call
has S·n rows (S·n = D·N when S = k·D), and admits the next queued prompt as soon as one finishes
its k rounds (plus the selection's final draws). Each prompt owns its generators and its rows
of the controller and selection states, so its result is exactly what :func:`~ctrlalign.align`
returns for it (bit for bit on the toy systems and on a batch-invariant dynamics; the test
checks it), whatever else shares the batch.

A dynamics is prepared (prefilled) again whenever the set of prompts in flight changes; with a
fixed k and S dividing the number of prompts that is once per prompt, as for Best-of-N.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from ._checks import check_int
from .align import AlignmentResult, IterationRecord, bind_space, check_prompts
from .controllers.base import Controller
from .cost import Cost, CostTerms
from .diagnostics import Diagnostics, diagnose
from .dynamics.base import Dynamics, Outcomes, Sample
from .random import make_generators
from .rewards.base import Reward
from .selection import Selection
from .spaces import ControlSpace

__all__ = ["align_stream", "stack_rows", "take_row"]


def stack_rows(states: Sequence[Any]) -> Any:
    """Concatenate dataclass states of D_i prompts each along their leading (prompt) axis.
    Tensor fields are concatenated; other fields are taken from the first state."""
    first = states[0]
    changes = {f.name: torch.cat([getattr(s, f.name) for s in states]) for f in fields(first)
               if isinstance(getattr(first, f.name), torch.Tensor)}
    return replace(first, **changes)


def take_row(state: Any, index: int) -> Any:
    """Prompt ``index`` of a dataclass state, as a state of one prompt (tensor fields sliced)."""
    changes = {f.name: getattr(state, f.name)[index:index + 1] for f in fields(state)
               if isinstance(getattr(state, f.name), torch.Tensor)}
    return replace(state, **changes)


@dataclass
class _Slot:
    """One prompt in flight."""

    index: int
    state: Any
    kept_state: Any
    replay: Any
    rounds: int = 0
    kept: Sample | None = None
    records: list[tuple[Diagnostics, CostTerms, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)


def _row(x: torch.Tensor, i: int) -> torch.Tensor:
    return x[i:i + 1]


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
    r"""Align many prompts with at most S = ``batch_prompts`` in flight (S·n rows per decode).

    Same arguments and result as :func:`~ctrlalign.align` for all P prompts (responses,
    rewards (P,), a trace of k records of (P,) tensors, the final states stacked in prompt
    order); ``seconds`` in a record is the mean time of the decode rounds. ``meta`` holds
    ``rounds`` (decode calls), ``rows`` (rows per call) and ``prepares`` (prefills).

    Raises:
        ConfigError: ``batch_prompts`` < 1 or prompts not a list.
    """
    if not isinstance(cost, Cost):
        cost = Cost(cost)
    prompts = check_prompts(prompts)
    S = check_int("batch_prompts", batch_prompts, minimum=1, symbol="S")
    n, k = controller.num_samples, controller.num_iterations
    space = bind_space(space, dynamics)
    selection = controller.default_selection() if selection is None else selection
    gens = make_generators(seed, prompts, device=dynamics.device)
    t0 = time.perf_counter()
    queue = deque(range(len(prompts)))
    active: list[_Slot] = []
    done: dict[int, _Slot] = {}
    calls = torch.zeros(len(prompts), dtype=torch.long)
    meta = {"rounds": 0, "rows": [], "prepares": 0, "round_seconds": []}
    context, members = None, ()
    bar = tqdm(total=len(prompts), desc=f"{controller.name} stream S={S} n={n}", unit="prompt") if progress else None

    def prepare(slots: list[_Slot]) -> Any:
        nonlocal context, members
        key = tuple(s.index for s in slots)
        if key != members:
            context, members = dynamics.prepare([prompts[j] for j in key]), key
            meta["prepares"] += 1
        return context

    def rollout(slots: list[_Slot], theta: torch.Tensor | None, num: int) -> tuple[Outcomes, torch.Tensor]:
        ctx = prepare(slots)
        if common_random_numbers:
            for s in slots:
                gens[s.index].rollout.set_state(s.replay)
        controls = None if theta is None else space.controls(theta)
        outcomes = dynamics.rollout(ctx, controls, [gens[s.index].rollout for s in slots], num)
        for s in slots:
            calls[s.index] += num
        return outcomes, cost.rewards([prompts[s.index] for s in slots], outcomes)

    while queue or active:
        while queue and len(active) < S:
            j = queue.popleft()
            active.append(_Slot(j, controller.init(1, space, device=dynamics.device, dtype=dynamics.dtype),
                                selection.init(1, device=dynamics.device), gens[j].rollout.get_state()))
        tr = time.perf_counter()
        state = stack_rows([s.state for s in active])
        kept_state = stack_rows([s.kept_state for s in active])
        theta = controller.sample(state, [gens[s.index].control for s in active])
        outcomes, rewards = rollout(active, theta, n)
        rewards = rewards.to(state.mean.device)
        new_state, log_w = controller.step(state, theta, rewards)
        diag = diagnose(controller, state, new_state, rewards, log_w)
        terms = cost.terms(rewards, diag.kl, diag.temperature)
        kept_state, chosen, replaced = selection.update(kept_state, rewards, log_w,
                                                       [gens[s.index].select for s in active])
        meta["rounds"] += 1
        meta["rows"].append(len(active) * n)
        meta["round_seconds"].append(time.perf_counter() - tr)
        for i, s in enumerate(active):
            s.rounds += 1
            s.state = replace(take_row(new_state, i), iteration=s.rounds)
            s.kept_state = take_row(kept_state, i)
            if bool(replaced[i]):
                s.kept = outcomes.sample(i, int(chosen[i]))
            s.records.append((Diagnostics(*(_row(x, i) for x in diag)), CostTerms(*(_row(x, i) for x in terms)),
                              s.kept_state.reward.clone(), _row(chosen, i), _row(replaced, i)))
        finished = [s for s in active if s.rounds >= k]
        active = [s for s in active if s.rounds < k]
        if finished and selection.final_samples:
            theta = controller.sample(stack_rows([s.state for s in finished]),
                                      [gens[s.index].control for s in finished], num_samples=selection.final_samples)
            outcomes, rewards = rollout(finished, theta, selection.final_samples)
            kept_state, chosen, replaced = selection.final(stack_rows([s.kept_state for s in finished]), rewards,
                                                           [gens[s.index].select for s in finished])
            for i, s in enumerate(finished):
                s.kept_state = take_row(kept_state, i)
                s.kept = outcomes.sample(i, int(chosen[i]))
        for s in finished:
            done[s.index] = s
        if bar is not None:
            bar.update(len(finished))
    if bar is not None:
        bar.close()
    slots = [done[j] for j in range(len(prompts))]
    mean_s = sum(meta["round_seconds"]) / max(1, len(meta["round_seconds"]))
    trace = []
    for it in range(k):
        rows = [s.records[it] for s in slots]
        trace.append(IterationRecord(
            iteration=it + 1,
            diagnostics=Diagnostics(*(torch.cat(parts) for parts in zip(*(r[0] for r in rows)))),
            cost=CostTerms(*(torch.cat(parts) for parts in zip(*(r[1] for r in rows)))),
            kept_reward=torch.cat([r[2] for r in rows]), chosen=torch.cat([r[3] for r in rows]),
            replaced=torch.cat([r[4] for r in rows]), seconds=mean_s,
        ))
    return AlignmentResult(
        prompts=prompts, responses=[s.kept for s in slots],
        rewards=torch.cat([s.kept_state.reward for s in slots]).cpu(), trace=trace,
        state=stack_rows([s.state for s in slots]), reward_calls=calls, seconds=time.perf_counter() - t0,
        controller=controller.name, space=space, selection=selection.name, meta=meta,
    )
