"""``CountingReward``: a reward wrapper that counts the responses it scores, per prompt.

Budgets are counted, not assumed: the benchmark harness checks that every controller scored
exactly N responses per prompt, and the controller contract (:mod:`ctrlalign.testing`) checks
n·k. A full call scores finished responses; a *prefix* call (a partial response scored at a
checkpoint, as closed-loop controllers will) is counted apart in ``prefix_calls``, so a budget
in full reward calls stays exact when prefix scoring is added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..dynamics.base import Outcomes
from ..random import prompt_key
from .base import Reward, evaluate_reward

__all__ = ["CountingReward"]


class CountingReward(Reward):
    """Wraps a reward; counts the responses scored per prompt (by content).

    Args:
        inner: the reward (or a callable ``(prompts, outcomes) -> (D, n)``) that scores.

    Attributes:
        calls: prompt key (:meth:`key`) → number of finished responses scored: for a call on
            D prompts with n samples each, every prompt's count grows by n (only once the
            call returned valid rewards).
        prefix_calls: the same for prefixes (:meth:`count` with ``prefix=True``).
    """

    def __init__(self, inner: Reward | Callable[..., Any]):
        self.inner = inner
        self.name = getattr(inner, "name", "reward")
        self.calls: dict[bytes, int] = {}
        self.prefix_calls: dict[bytes, int] = {}

    @staticmethod
    def key(prompt: Any) -> bytes:
        """The key under which a prompt's calls are counted (its content,
        :func:`ctrlalign.random.prompt_key`)."""
        return prompt_key(prompt)

    def reset(self) -> None:
        """Forget all counts."""
        self.calls = {}
        self.prefix_calls = {}

    def count(self, prompts: Sequence[Any], num_samples: int, prefix: bool = False) -> None:
        """Add ``num_samples`` scored responses to each prompt's count (``prefix``: to
        ``prefix_calls``)."""
        counts = self.prefix_calls if prefix else self.calls
        for p in prompts:
            k = self.key(p)
            counts[k] = counts.get(k, 0) + num_samples

    @property
    def scores_prefixes(self) -> bool:
        """Whether the wrapped reward scores prefixes."""
        return getattr(self.inner, "scores_prefixes", True)

    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        """Score (D, n) finished responses with ``inner`` (checked by
        :func:`~ctrlalign.rewards.evaluate_reward`) and count them."""
        r = evaluate_reward(self.inner, prompts, outcomes)
        self.count(prompts, outcomes.num_samples)
        return r

    def prefix(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        """Score (D, n) partial responses with ``inner``'s prefix score and count them in
        ``prefix_calls``."""
        r = evaluate_reward(self.inner, prompts, outcomes, prefix=True)
        self.count(prompts, outcomes.num_samples, prefix=True)
        return r
