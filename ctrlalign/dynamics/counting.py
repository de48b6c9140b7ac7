"""``CountingDynamics``: a wrapper that counts the tokens a stepwise system decodes, per prompt.

Budgets in tokens are counted outside the controller: every ``advance`` adds each prompt's
rows' alive steps (rows later stopped or resampled away included), whatever the controller
reports. The benchmark (:mod:`ctrlalign.bench`) reads every controller's decoded tokens from
this wrapper; the closed-loop contract (:mod:`ctrlalign.testing`) checks the controllers' own
counts against it.
"""

from __future__ import annotations

import torch

from .base import StepwiseDynamics

__all__ = ["CountingDynamics"]


class CountingDynamics(StepwiseDynamics):
    """Wraps a :class:`~ctrlalign.dynamics.base.StepwiseDynamics` and counts, per prompt of the
    last :meth:`prepare`, the steps its rows decoded while alive (``tokens``, (D,) long): the
    budget in tokens, counted outside the controller."""

    def __init__(self, inner: StepwiseDynamics) -> None:
        self.inner = inner
        self.hidden_size, self.max_horizon = inner.hidden_size, inner.max_horizon
        self.tokens = torch.zeros(0, dtype=torch.long)

    def reset(self, num_prompts: int) -> None:
        """Counts restart at zero for D = ``num_prompts`` prompts (a context prepared elsewhere,
        e.g. one prefill shared by several runs)."""
        self.tokens = torch.zeros(num_prompts, dtype=torch.long)

    @property
    def device(self) -> torch.device:
        """The inner system's device."""
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        """The inner system's dtype."""
        return self.inner.dtype

    def head_weight(self) -> torch.Tensor | None:
        """The inner system's head."""
        return self.inner.head_weight()

    def prepare(self, prompts):
        """The inner preparation; the counts restart at zero for these D prompts."""
        self.tokens = torch.zeros(len(prompts), dtype=torch.long)
        return self.inner.prepare(prompts)

    def draw_noise(self, generators, num_samples, steps=None):
        """The inner system's noise."""
        return self.inner.draw_noise(generators, num_samples, steps)

    def start(self, context, num_samples):
        """The inner start."""
        return self.inner.start(context, num_samples)

    def advance(self, state, controls, noise):
        """The inner advance, counting each prompt's alive steps (every step of every row when
        the system reports no ``alive``)."""
        state, step = self.inner.advance(state, controls, noise)
        D, n, b = noise.shape[:3]
        alive = torch.ones(D * n, b, dtype=torch.bool) if step.alive is None else step.alive.cpu()
        self.tokens += alive.reshape(D, -1).sum(-1)
        return state, step

    def select(self, state, rows):
        """The inner select."""
        return self.inner.select(state, rows)

    def outcomes(self, state):
        """The inner outcomes."""
        return self.inner.outcomes(state)

    def sentence_ends(self, state):
        """The inner sentence ends."""
        return self.inner.sentence_ends(state)
