r"""The cross-entropy method (CEM): refit the proposal to the elite samples.

Each iteration keeps the m = ⌈ρ n⌉ highest-reward samples (the elites) and moves the mean
toward their average, in the control space's coordinates:

.. math:: \hat\theta \leftarrow (1-\beta)\hat\theta + \beta\,\frac1m\sum_{i\in\text{elite}} \theta^{(i)} .

With ``refit_std=True`` the isotropic proposal scale is refit too,
:math:`s^2 \leftarrow (1-\beta)s^2 + \beta\,\frac{1}{m M}\sum_{i}\|\theta^{(i)}-\hat\theta\|^2`
(M coordinates), clamped to [``min_std``, σ]. KL is reported for the isotropic proposal
N(θ̂, s² I) against p = N(0, σ² I). There is no temperature: CEM is the common alternative to
path-integral weighting in control.
"""

from __future__ import annotations

import math

import torch

from .._checks import ConfigError
from ..declare import Hyperparameter
from .base import Controller, Proposal, StepInfo

__all__ = ["CEM"]


class CEM(Controller):
    """Cross-entropy method on pre-logits.

    Args:
        num_samples: n, samples per iteration.
        num_iterations: k, iterations (budget n·k).
        sigma: σ > 0, the prior's scale (initial and maximal proposal scale).
        elite_fraction: ρ in (0, 1]; m = ⌈ρ n⌉ elites.
        step_size: β in (0, 1].
        refit_std: also refit the scale s.
        min_std: lower clamp for s when refitting; with ``refit_std`` it must be in (0, σ].

    Raises:
        ConfigError: ``refit_std`` with ``min_std`` = 0 (the scale could collapse to 0 and
            draw no controls) or ``min_std`` > σ.
    """

    name = "cem"
    hyperparameters = (
        Hyperparameter("elite_fraction", float, "share of samples kept as elites", "ρ", low=0, high=1, low_open=True),
        Hyperparameter("step_size", float, "mean smoothing", "β", low=0, high=1, low_open=True),
        Hyperparameter("refit_std", bool, "also refit the proposal scale"),
        Hyperparameter("min_std", float, "lower clamp of the refit scale", low=0),
    )

    def __init__(self, *, num_samples: int = 8, num_iterations: int = 4, sigma: float = 0.3,
                 elite_fraction: float = 0.25, step_size: float = 1.0, refit_std: bool = False,
                 min_std: float = 1e-3):
        super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma)
        for key, value in (("elite_fraction", elite_fraction), ("step_size", step_size),
                           ("refit_std", refit_std), ("min_std", min_std)):
            self.set_hyperparameter(key, value)
        if self.refit_std and not 0 < self.min_std <= self.sigma:
            raise ConfigError(
                f"CEM with refit_std=True needs 0 < min_std <= sigma (σ = {self.sigma:g}), got min_std={min_std!r}: "
                "the refit scale s is clamped to [min_std, σ], and s = 0 would draw no controls")

    @property
    def num_elites(self) -> int:
        """m = ⌈ρ n⌉ (at least 1), the elites kept per round."""
        return max(1, math.ceil(self.elite_fraction * self.num_samples))

    def step(self, state: Proposal, theta: torch.Tensor | None, rewards: torch.Tensor) -> tuple[Proposal, StepInfo]:
        """Move θ̂ toward the mean of the elites (and refit s if ``refit_std``).

        Log-weights: −log m on the elites, −inf elsewhere; no temperature (λ = NaN).
        """
        self.check_step_inputs(state, theta, rewards)
        if theta is None:
            raise ConfigError(f"CEM needs controls, but its proposal scale s is 0 for every prompt "
                              f"(sigma (σ) = {self.sigma:g}, min_std = {self.min_std:g} in {state.std.dtype})")
        r = rewards.double()
        D, n = r.shape
        m = self.num_elites
        elite = r.topk(m, dim=-1).indices  # (D, m)
        log_w = torch.full_like(r, float("-inf")).scatter(-1, elite, -math.log(m))
        X = theta.double().flatten(2)  # (D, n, M)
        elite_X = X.gather(1, elite.unsqueeze(-1).expand(D, m, X.shape[-1]))
        old = state.mean.double().flatten(1)
        new_mean = old + self.step_size * (elite_X.mean(1) - old)
        std = state.std
        if self.refit_std:
            var = (elite_X - new_mean.unsqueeze(1)).pow(2).sum(dim=(1, 2)) / (m * X.shape[-1])
            new_var = (1 - self.step_size) * state.std.double() ** 2 + self.step_size * var
            std = new_var.sqrt().clamp(self.min_std, self.sigma).to(state.std.dtype)
        new = state.replace(mean=new_mean.view_as(state.mean).to(state.mean.dtype), std=std)
        return new, StepInfo.untempered(log_w)
