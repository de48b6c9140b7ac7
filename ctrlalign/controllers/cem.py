r"""The cross-entropy method (CEM): refit the proposal to the elite samples.

Each iteration keeps the m = ⌈ρ n⌉ highest-reward samples (the elites) and moves the mean
toward their average:

.. math:: U \leftarrow (1-\beta)\hat U + \beta\,\frac1m\sum_{i\in\text{elite}} V^{(i)} .

With ``refit_std=True`` the isotropic proposal scale is refit too,
:math:`s^2 \leftarrow (1-\beta)s^2 + \beta\,\frac{1}{m\tau d}\sum_{i}\|V^{(i)}-U\|^2`, clamped to
[``min_std``, σ]. KL is reported for the isotropic proposal N(U, s² I) against p = N(0, σ² I).
There is no temperature: CEM is the common alternative to path-integral weighting in control.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .._checks import check_interval, check_nonnegative
from .base import Controller, ControllerState, StepInfo

__all__ = ["CEM"]


class CEM(Controller):
    """Cross-entropy method on pre-logits.

    Args:
        num_samples: n, samples per iteration.
        num_iterations: k, iterations (budget n·k).
        sigma: σ > 0, the prior's scale (initial and maximal proposal scale).
        horizon: τ, controlled tokens (None: the dynamics' maximum).
        elite_fraction: ρ in (0, 1]; m = ⌈ρ n⌉ elites.
        step_size: β in (0, 1].
        refit_std: also refit the scale s.
        min_std: lower clamp for s when refitting.
    """

    name = "cem"

    def __init__(self, *, num_samples: int = 8, num_iterations: int = 4, sigma: float = 0.3,
                 elite_fraction: float = 0.25, step_size: float = 1.0, refit_std: bool = False,
                 min_std: float = 1e-3, horizon: int | None = None):
        super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma, horizon=horizon)
        self.elite_fraction = check_interval("elite_fraction", elite_fraction, 0.0, 1.0, symbol="ρ")
        if self.elite_fraction == 0:
            raise ValueError("elite_fraction (ρ) must be in (0, 1], got 0")
        self.step_size = check_interval("step_size", step_size, 0.0, 1.0, symbol="β")
        if self.step_size == 0:
            raise ValueError("step_size (β) must be in (0, 1], got 0")
        self.refit_std = bool(refit_std)
        self.min_std = check_nonnegative("min_std", min_std)
        self.num_elites = max(1, math.ceil(self.elite_fraction * self.num_samples))

    def _extra_repr(self) -> Sequence[str]:
        return ("elite_fraction", "step_size", "refit_std")

    def step(self, state: ControllerState, controls: torch.Tensor | None, rewards: torch.Tensor,
             generators: Sequence[torch.Generator] | None = None) -> tuple[ControllerState, StepInfo]:
        """Move U toward the mean of the elites (and refit s if ``refit_std``); keep the best response."""
        self._check_step_inputs(state, controls, rewards)
        if controls is None:
            raise ValueError("CEM needs controls (sigma > 0)")
        r = rewards.double()
        D, n = r.shape
        m = self.num_elites
        elite = r.topk(m, dim=-1).indices  # (D, m)
        log_w = torch.full_like(r, float("-inf")).scatter(-1, elite, -math.log(m))
        V = controls.double()
        elite_V = V.gather(1, elite.view(D, m, 1, 1).expand(D, m, *V.shape[2:]))
        old = state.mean.double()
        new_mean = old + self.step_size * (elite_V.mean(1) - old)
        std = state.std
        if self.refit_std:
            tau_d = V.shape[2] * V.shape[3]
            var = (elite_V - new_mean.unsqueeze(1)).pow(2).sum(dim=(1, 2, 3)) / (m * tau_d)
            new_var = (1 - self.step_size) * state.std.double() ** 2 + self.step_size * var
            std = new_var.sqrt().clamp(self.min_std, self.sigma).to(state.std.dtype)
        chosen, replace, best = self._keep_best(state, rewards)
        info = self._info(state, rewards, log_w, chosen, replace)
        new_state = state.replace(mean=new_mean.to(state.mean.dtype), std=std, best_reward=best,
                                  iteration=state.iteration + 1)
        return new_state, info
