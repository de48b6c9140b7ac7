r"""Best-of-N: sample N responses, keep the one with the highest reward. Never moves the mean.

With σ > 0 it samples from the prior p = N(0, σ² I) on pre-logits: AISP's zero-update case,
with exactly the noise AISP draws under the same seed. With σ = 0 it samples the plain,
uncontrolled model (the baseline users compare against). Its "weights" are the λ → 0 limit of
softmax(r/λ): one-hot at the argmax.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .._checks import check_nonnegative
from .base import Controller, ControllerState, StepInfo

__all__ = ["BestOfN"]


class BestOfN(Controller):
    """Best-of-N with N = n·k samples per prompt.

    Args:
        num_samples: n, samples per iteration.
        num_iterations: k, iterations (N = n·k).
        sigma: σ >= 0 (0: the plain model, no control).
        horizon: τ, controlled tokens (None: the dynamics' maximum).
    """

    name = "bon"

    def __init__(self, *, num_samples: int = 8, num_iterations: int = 4, sigma: float = 0.0,
                 horizon: int | None = None):
        super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma, horizon=horizon)

    def _check_sigma(self, sigma: float) -> float:
        return check_nonnegative("sigma", sigma, symbol="σ")

    def kl(self, state: ControllerState) -> torch.Tensor:
        """(D,) zeros: Best-of-N reports no control cost (its mean never moves)."""
        return torch.zeros(state.mean.shape[0], dtype=torch.float64, device=state.mean.device)

    def step(self, state: ControllerState, controls: torch.Tensor | None, rewards: torch.Tensor,
             generators: Sequence[torch.Generator] | None = None) -> tuple[ControllerState, StepInfo]:
        """Keep the best response; the mean never moves. Weights are one-hot at the argmax."""
        self._check_step_inputs(state, controls, rewards)
        chosen, replace, best = self._keep_best(state, rewards)
        log_w = torch.full(rewards.shape, float("-inf"), dtype=torch.float64, device=rewards.device)
        log_w.scatter_(-1, chosen.unsqueeze(-1), 0.0)
        info = self._info(state, rewards, log_w, chosen, replace)
        return state.replace(best_reward=best, iteration=state.iteration + 1), info
