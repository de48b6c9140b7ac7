r"""Which prompts are in flight: the scheduler behind :func:`~ctrlalign.align`'s round loop.

Best-of-N with N = n·k decodes a prompt's N samples in one batch. An adaptive controller
needs k *sequential* rounds of n samples, so at the same number of prompts in flight its decode
batch is k times smaller. The remedy (Kanai et al., Figure 2) is to interleave κ·D prompts:
the scheduler keeps up to S = ``batch_prompts`` prompts in flight, so every decode call has
S·n rows (S·n = D·N when S = k·D), and admits the next queued prompts when a cohort finishes
its k rounds. Each prompt owns its generators and its own rows of the controller and selection
states (:func:`stack_rows` / :func:`take_row` move between one state of S prompts and S states
of one), so its result is exactly what it gets alone, whatever else shares the batch.

The scheduler only does the bookkeeping (queue, slots, per-prompt iteration counters); the
round itself — sample, rollout, reward, step, select — is written once, in
:func:`ctrlalign.align`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from ._checks import check_int
from .dynamics.base import Sample

__all__ = ["Scheduler", "Slot", "stack_rows", "take_row"]


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
class Slot:
    """One prompt in flight.

    Attributes:
        index: the prompt's position in the run's prompt list.
        state: the controller's state for this prompt (one row).
        kept_state: the selection's state for this prompt (one row).
        replay: the rollout generator's saved state (common random numbers), or None.
        iteration: completed rounds (the per-prompt iteration counter, owned by the loop).
        kept: the response kept so far.
        rounds: what each round recorded for this prompt (in order), opaque to the scheduler.
    """

    index: int
    state: Any
    kept_state: Any
    replay: Any = None
    iteration: int = 0
    kept: Sample | None = None
    rounds: list[Any] = field(default_factory=list)


class Scheduler:
    """Admit prompts in cohorts of at most S and retire them after their last round.

    Args:
        num_prompts: P, prompts in the run.
        batch_prompts: S >= 1, prompts in flight (rows per decode: S·n).
        open_slot: builds the :class:`Slot` of prompt j when it is admitted.
        num_iterations: k, rounds per prompt.
    """

    def __init__(self, num_prompts: int, batch_prompts: int, open_slot: Callable[[int], Slot],
                 num_iterations: int) -> None:
        self.batch_prompts = check_int("batch_prompts", batch_prompts, minimum=1, symbol="S")
        self.num_iterations = num_iterations
        self.open_slot = open_slot
        self.queue = deque(range(num_prompts))
        self.active: list[Slot] = []
        self.done: dict[int, Slot] = {}

    @property
    def running(self) -> bool:
        """Whether any prompt is queued or in flight."""
        return bool(self.queue or self.active)

    def admit(self) -> list[Slot]:
        """Fill the free slots from the queue (in prompt order); return the prompts in flight."""
        while self.queue and len(self.active) < self.batch_prompts:
            self.active.append(self.open_slot(self.queue.popleft()))
        return self.active

    def retire(self) -> list[Slot]:
        """Remove and return the prompts that completed k rounds (they may still draw the
        selection's final samples before :meth:`finish`)."""
        finished = [s for s in self.active if s.iteration >= self.num_iterations]
        self.active = [s for s in self.active if s.iteration < self.num_iterations]
        return finished

    def finish(self, slots: Sequence[Slot]) -> None:
        """Record retired prompts as done."""
        for s in slots:
            self.done[s.index] = s

    def results(self) -> list[Slot]:
        """Every prompt's slot, in prompt order (after the run)."""
        return [self.done[j] for j in sorted(self.done)]
