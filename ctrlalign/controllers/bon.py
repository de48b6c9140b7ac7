r"""Best-of-N: sample N responses, keep the one with the highest reward. Never moves the mean.

With σ > 0 it samples from the prior p = N(0, σ² I) over the control space's coordinates:
AISP's zero-update case, with exactly the noise AISP draws under the same seed. With σ = 0 it
samples the plain, uncontrolled model (the baseline users compare against). Its weights are
the λ → 0 limit of softmax(r/λ): one-hot at the argmax.
"""

from __future__ import annotations

import torch

from ..declare import Hyperparameter
from .base import Controller, Proposal, StepInfo

__all__ = ["BestOfN"]


class BestOfN(Controller):
    """Best-of-N with N = n·k samples per prompt.

    Args:
        num_samples: n, samples per iteration.
        num_iterations: k, iterations (N = n·k).
        sigma: σ >= 0 (0: the plain model, no control).
    """

    name = "bon"
    hyperparameters = (
        Hyperparameter("sigma", float, "std of the prior's control noise (0: the plain model)", "σ", low=0),
    )

    def __init__(self, *, num_samples: int = 8, num_iterations: int = 4, sigma: float = 0.0):
        super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma)

    def kl(self, state: Proposal) -> torch.Tensor:
        """(D,) zeros: the proposal is the prior (or no control at all)."""
        return torch.zeros(state.num_prompts, dtype=torch.float64, device=state.mean.device)

    def step(self, state: Proposal, theta: torch.Tensor | None, rewards: torch.Tensor) -> tuple[Proposal, StepInfo]:
        """The mean never moves; log-weights are 0 at the (first) argmax and −inf elsewhere
        (the λ → 0 limit of softmax(r/λ)); no temperature (λ = NaN in the info)."""
        self.check_step_inputs(state, theta, rewards)
        r = rewards.double()
        log_w = torch.full_like(r, float("-inf")).scatter(-1, r.argmax(-1, keepdim=True), 0.0)
        return state, StepInfo.untempered(log_w)
