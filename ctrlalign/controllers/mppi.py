r"""MPPI (model predictive path integral) on pre-logits: the general form AISP specialises.

One step, from the proposal :math:`\mathcal N(\hat\theta, \sigma^2 I)` over the control
space's coordinates and its samples :math:`\theta^{(i)}` with rewards :math:`r_i`:

.. math::
    \log w_i = \frac{r_i}{\lambda} - \frac{\gamma}{\sigma^2}\langle\hat\theta, \theta^{(i)}\rangle
    \quad(\text{normalised}),\qquad
    \hat\theta \leftarrow (1-\beta)\hat\theta + \beta \sum_i w_i \theta^{(i)} .

In the per-token space :math:`\langle\hat\theta,\theta\rangle = \sum_t \hat u_t^\top v_t`.
γ (``likelihood_ratio``) = 1 is exact importance sampling toward q* (the "information
theoretic" MPPI); γ = 0 drops the likelihood ratio (weights softmax(r/λ), classic MPPI).
β (``step_size``) in (0, 1] smooths the mean update. AISP is γ = 1 − α, β = 1. λ is fixed
(``temperature``) or adaptive (``target_ess``).
"""

from __future__ import annotations

import torch

from .._checks import ConfigError
from ..declare import Hyperparameter
from .base import Proposal, StepInfo, WeightedController

__all__ = ["MPPI"]


class MPPI(WeightedController):
    """MPPI on pre-logits.

    Args:
        num_samples: n, samples per iteration.
        num_iterations: k, iterations (budget n·k).
        sigma: σ > 0, control noise scale.
        temperature: λ > 0 (fixed); None with ``target_ess``.
        target_ess: adaptive λ so that the ESS is this fraction of n; None: fixed λ.
        likelihood_ratio: γ in [0, 1], weight of the importance-sampling correction.
        step_size: β in (0, 1], mean smoothing.
    """

    name = "mppi"
    hyperparameters = (
        Hyperparameter("likelihood_ratio", float, "weight of the importance-sampling correction", "γ", low=0, high=1),
        Hyperparameter("step_size", float, "mean smoothing", "β", low=0, high=1, low_open=True),
    )

    def __init__(self, *, num_samples: int = 8, num_iterations: int = 4, sigma: float = 0.3,
                 temperature: float | None = 0.3, target_ess: float | None = None,
                 likelihood_ratio: float = 1.0, step_size: float = 1.0):
        super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma)
        self.set_temperature(temperature, target_ess)
        self.set_hyperparameter("likelihood_ratio", likelihood_ratio)
        self.set_hyperparameter("step_size", step_size)

    def offsets(self, state: Proposal, theta: torch.Tensor | None) -> torch.Tensor | None:
        r"""(D, n) :math:`\frac{\gamma}{\sigma^2}\langle\hat\theta,\theta^{(i)}\rangle`, or None when γ = 0."""
        alpha = 1.0 - self.likelihood_ratio
        if alpha >= 1.0:
            return None
        inner = torch.einsum("dnm,dm->dn", theta.double().flatten(2), state.mean.double().flatten(1))
        return (1.0 - alpha) / (self.sigma * self.sigma) * inner

    def step(self, state: Proposal, theta: torch.Tensor | None,
             rewards: torch.Tensor) -> tuple[Proposal, StepInfo]:
        """Weights r/λ − c (λ fixed or adaptive); θ̂ ← (1−β)θ̂ + β Σ_i w_i θ^(i)."""
        self.check_step_inputs(state, theta, rewards)
        if theta is None:
            raise ConfigError(f"{type(self).__name__} needs controls (sigma > 0)")
        info = self.weigh(state, theta, rewards)
        w = torch.softmax(info.log_weights, dim=-1)
        target = torch.einsum("dn,dn...->d...", w, theta.double())
        new_mean = state.mean.double() + self.step_size * (target - state.mean.double())
        return state.replace(mean=new_mean.to(state.mean.dtype)), info
