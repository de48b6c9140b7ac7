r"""MPPI (model predictive path integral) on pre-logits: the general form AISP specialises.

One step, from the proposal :math:`\mathcal N(\hat U, \sigma^2 I)` and its samples
:math:`V^{(i)}` with rewards :math:`r_i`:

.. math::
    \log w_i = \frac{r_i}{\lambda} - \frac{\gamma}{\sigma^2}\sum_t \hat u_t^\top v_t^{(i)}
    \quad(\text{normalised}),\qquad
    U \leftarrow (1-\beta)\hat U + \beta \sum_i w_i V^{(i)} .

γ (``likelihood_ratio``) = 1 is exact importance sampling toward q* (the "information
theoretic" MPPI); γ = 0 drops the likelihood ratio (weights softmax(r/λ), classic MPPI).
β (``step_size``) in (0, 1] smooths the mean update. AISP is γ = 1 − α, β = 1.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .. import theory
from .._checks import check_interval, check_positive
from .base import Controller, ControllerState, StepInfo

__all__ = ["MPPI"]


class MPPI(Controller):
    """MPPI on pre-logits.

    Args:
        num_samples: n, samples per iteration.
        num_iterations: k, iterations (budget n·k).
        sigma: σ > 0, control noise scale.
        horizon: τ, controlled tokens (None: the dynamics' maximum).
        temperature: λ > 0.
        likelihood_ratio: γ in [0, 1], weight of the importance-sampling correction.
        step_size: β in (0, 1], mean smoothing.
    """

    name = "mppi"

    def __init__(self, *, num_samples: int = 8, num_iterations: int = 4, sigma: float = 0.3,
                 temperature: float = 0.3, likelihood_ratio: float = 1.0, step_size: float = 1.0,
                 horizon: int | None = None):
        super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma, horizon=horizon)
        self.temperature = check_positive("temperature", temperature, symbol="λ")
        self.likelihood_ratio = check_interval("likelihood_ratio", likelihood_ratio, 0.0, 1.0, symbol="γ")
        self.step_size = check_interval("step_size", step_size, 0.0, 1.0, symbol="β")
        if self.step_size == 0.0:
            raise ValueError("step_size (β) must be in (0, 1], got 0")

    def _extra_repr(self) -> Sequence[str]:
        return ("temperature", "likelihood_ratio", "step_size")

    def log_weights(self, state: ControllerState, controls: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """(D, n) normalised log-weights (see the module docstring)."""
        return theory.log_weights(
            rewards.double(), self.temperature, controls=controls.double(), mean=state.mean.double(),
            sigma=self.sigma, alpha=1.0 - self.likelihood_ratio,
        )

    def step(self, state: ControllerState, controls: torch.Tensor | None, rewards: torch.Tensor,
             generators: Sequence[torch.Generator] | None = None) -> tuple[ControllerState, StepInfo]:
        """Weights from :meth:`log_weights`; U ← (1−β)Û + β Σ_i w_i V^(i); keep the best response."""
        self._check_step_inputs(state, controls, rewards)
        if controls is None:
            raise ValueError(f"{type(self).__name__} needs controls (sigma > 0)")
        log_w = self.log_weights(state, controls, rewards)
        target = torch.einsum("dn,dntk->dtk", log_w.exp(), controls.double())
        new_mean = state.mean.double() + self.step_size * (target - state.mean.double())
        chosen, replace, best = self._keep_best(state, rewards)
        info = self._info(state, rewards, log_w, chosen, replace)
        new_state = state.replace(mean=new_mean.to(state.mean.dtype), best_reward=best, iteration=state.iteration + 1)
        return new_state, info
