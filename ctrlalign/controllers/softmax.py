r"""Softmax sampling: sampling–importance–resampling (SIR) toward q* from the prior.

Draw N = n·k responses from p (θ̂ = 0 throughout) and return ONE of them, chosen with
probability :math:`\mathrm{softmax}(r/\lambda)` over all N. As N → ∞ the returned response is
distributed as under :math:`q^*\propto e^{r/\lambda}p`. This is AISP's first step: its
weights are exactly AISP's weights at :math:`\hat\theta = 0`.

The controller only weighs; the choice across rounds is made by its default selection, the
weighted reservoir :class:`~ctrlalign.selection.Reservoir`, which gives exactly softmax(r/λ)
over all rounds (for a fixed λ). The kept response is therefore *not* the best one.
"""

from __future__ import annotations

import torch

from ..declare import Hyperparameter
from ..selection import Reservoir, Selection
from .base import Proposal, StepInfo, WeightedController

__all__ = ["SoftmaxSampling"]


class SoftmaxSampling(WeightedController):
    """Sampling–importance–resampling with softmax(r/λ) weights.

    Args:
        num_samples: n, samples per iteration.
        num_iterations: k, iterations (pool N = n·k).
        sigma: σ >= 0, the prior's noise scale (θ̂ stays 0; σ = 0 samples the plain model).
        temperature: λ > 0 (fixed); None with ``target_ess``.
        target_ess: adaptive λ per round so that the ESS is this fraction of n.
    """

    name = "softmax"
    hyperparameters = (
        Hyperparameter("sigma", float, "std of the prior's control noise (0: SIR from the plain model)", "σ", low=0),
    )

    def __init__(self, *, num_samples: int = 8, num_iterations: int = 4, sigma: float = 0.3,
                 temperature: float | None = 0.3, target_ess: float | None = None):
        super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma)
        self.set_temperature(temperature, target_ess)

    def kl(self, state: Proposal) -> torch.Tensor:
        """(D,) zeros: the proposal is the prior (or, at σ = 0, no control at all)."""
        return torch.zeros(state.num_prompts, dtype=torch.float64, device=state.mean.device)

    def default_selection(self) -> Selection:
        """The weighted reservoir (exact softmax(r/λ) over all N samples)."""
        return Reservoir()

    def step(self, state: Proposal, theta: torch.Tensor | None,
             rewards: torch.Tensor) -> tuple[Proposal, StepInfo]:
        """Log-weights r/λ; the mean stays 0 (the state is returned unchanged)."""
        self.check_step_inputs(state, theta, rewards)
        return state, self.weigh(state, theta, rewards)
