r"""Cost = reward + λ·KL: the objective every controller minimises, reported term by term.

.. math:: J(x, \hat\theta) = -\mathbb E_{\theta\sim q}[r(x, y(A\theta))] + \lambda\,\mathrm{KL}(q\,\|\,p),
          \qquad \mathrm{KL}(q\|p) = \frac{\|\hat\theta\|^2}{2\sigma^2}\ (s = \sigma).

λ has one home, the controller: :func:`~ctrlalign.align` passes the λ the controller weighted
the round with. Controllers without a temperature (Best-of-N, CEM) are the λ → 0 limit and
report J = −E[r].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .dynamics.base import Outcomes
from .rewards.base import Reward, evaluate_reward

__all__ = ["Cost", "CostTerms"]


class CostTerms(NamedTuple):
    """The terms of J for one round, each (D,).

    Attributes:
        expected_reward: Monte-Carlo estimate of E_q[r] (mean over the n samples).
        kl: KL(q‖p) of the proposal that generated the round.
        temperature: λ of the round (NaN: none, J is then −E[r]).
        objective: J = −expected_reward + λ·kl.
    """

    expected_reward: torch.Tensor
    kl: torch.Tensor
    temperature: torch.Tensor
    objective: torch.Tensor


class Cost:
    """The reward r of the objective, scored with checks.

    Args:
        reward: the reward r (a :class:`~ctrlalign.rewards.base.Reward` or callable).
    """

    def __init__(self, reward: Reward):
        if not callable(reward):
            raise TypeError(f"Cost needs a Reward (or callable), got {type(reward).__name__}")
        self.reward = reward

    def rewards(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        """Score outcomes, checking shape (D, n) and finiteness.

        Raises:
            RewardError: naming the prompt and sample index of a failure.
        """
        return evaluate_reward(self.reward, prompts, outcomes)

    @staticmethod
    def terms(rewards: torch.Tensor, kl: torch.Tensor, temperature: torch.Tensor) -> CostTerms:
        """J's terms from a round's rewards (D, n), its proposal's KL (D,) and λ (D,) (NaN: none)."""
        er = rewards.double().mean(-1)
        lam = temperature.double().to(er.device)
        penalty = torch.where(torch.isnan(lam) | (kl.double() == 0), torch.zeros_like(er), lam * kl.double())
        return CostTerms(expected_reward=er, kl=kl.double(), temperature=lam, objective=-er + penalty)
