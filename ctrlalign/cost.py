r"""Cost = reward + λ·KL: the objective every controller minimises, reported term by term.

.. math:: J(x, U) = -\mathbb E_{V\sim q_U}[r(x, y(V))] + \lambda\,\mathrm{KL}(q_U\,\|\,p),
          \qquad \mathrm{KL}(q_U\|p) = \sum_t \frac{\|u_t\|^2}{2\sigma^2}.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch

from . import theory
from ._checks import check_positive
from .dynamics.base import Outcomes
from .rewards.base import Reward, evaluate_reward

__all__ = ["Cost", "CostTerms"]


class CostTerms(NamedTuple):
    """The terms of J for one round, each (D,).

    Attributes:
        expected_reward: Monte-Carlo estimate of E_q[r] (mean over the n samples).
        kl: KL(q_U‖p).
        objective: J = −expected_reward + λ·kl.
    """

    expected_reward: torch.Tensor
    kl: torch.Tensor
    objective: torch.Tensor


class Cost:
    """Couples a :class:`~ctrlalign.rewards.base.Reward` with the KL penalty weight λ.

    Args:
        reward: the reward r.
        temperature: λ > 0; None: use the controller's own λ (or 1.0 if it has none).
    """

    def __init__(self, reward: Reward, temperature: float | None = None):
        if not callable(reward):
            raise TypeError(f"Cost needs a Reward (or callable), got {type(reward).__name__}")
        self.reward = reward
        self.temperature = None if temperature is None else check_positive("temperature", temperature, symbol="λ")

    def rewards(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        """Score outcomes, checking shape (D, n) and finiteness.

        Raises:
            RewardError: naming the prompt and sample index of a failure.
        """
        return evaluate_reward(self.reward, prompts, outcomes)

    def terms(self, rewards: torch.Tensor, kl: torch.Tensor, temperature: float) -> CostTerms:
        """J's terms from a round's rewards (D, n) and its proposal's KL (D,)."""
        lam = check_positive("temperature", temperature, symbol="λ")
        er = rewards.double().mean(-1)
        return CostTerms(expected_reward=er, kl=kl.double(), objective=-er + lam * kl.double())

    def kl(self, mean: torch.Tensor, sigma: float) -> torch.Tensor:
        """KL(q_U ‖ p) = Σ‖u_t‖²/(2σ²) for mean (D, τ, d); (D,)."""
        return theory.gaussian_kl(mean, sigma)
