r"""Softmax sampling: sampling–importance–resampling (SIR) toward q* from the prior.

Draw N = n·k responses from p (U = 0 throughout) and return ONE of them, chosen with
probability :math:`\mathrm{softmax}(r/\lambda)` over all N. As N → ∞ the returned response is
distributed as under :math:`q^*\propto e^{r/\lambda}p`. This is AISP's first step: its
weights are exactly AISP's weights at :math:`\hat U = 0`.

Across iterations the choice is made by a weighted reservoir: the running mass
:math:`M = \sum \exp(r/\lambda)` is kept in log space, and the candidate of a round
(resampled within the round) replaces the kept response with probability
:math:`M_\text{round}/(M_\text{old}+M_\text{round})`, which gives exactly softmax(r/λ) over
all rounds. The kept response is therefore *not* the best one: ``best_reward`` holds the
reward of the kept (resampled) response.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .. import theory
from .._checks import check_positive
from .base import Controller, ControllerState, StepInfo

__all__ = ["SoftmaxSampling"]


class SoftmaxSampling(Controller):
    """Sampling–importance–resampling with softmax(r/λ) weights.

    Args:
        num_samples: n, samples per iteration.
        num_iterations: k, iterations (pool N = n·k).
        sigma: σ > 0, the prior's noise scale (U stays 0).
        temperature: λ > 0.
        horizon: τ, controlled tokens (None: the dynamics' maximum).
    """

    name = "softmax"

    def __init__(self, *, num_samples: int = 8, num_iterations: int = 4, sigma: float = 0.3,
                 temperature: float = 0.3, horizon: int | None = None):
        super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma, horizon=horizon)
        self.temperature = check_positive("temperature", temperature, symbol="λ")

    def _extra_repr(self) -> Sequence[str]:
        return ("temperature",)

    def step(self, state: ControllerState, controls: torch.Tensor | None, rewards: torch.Tensor,
             generators: Sequence[torch.Generator] | None = None) -> tuple[ControllerState, StepInfo]:
        """Resample one candidate with softmax(r/λ) and update the weighted reservoir (U stays 0).

        Needs ``generators`` (the prompts' ``select`` streams) for the resampling draws.
        """
        self._check_step_inputs(state, controls, rewards)
        D = rewards.shape[0]
        if generators is None or len(generators) != D:
            raise ValueError("SoftmaxSampling.step needs one generator per prompt to resample")
        r = rewards.double()
        log_w = theory.log_weights(r, self.temperature)
        round_mass = torch.logsumexp(r / self.temperature, dim=-1)
        new_mass = torch.logaddexp(state.log_mass, round_mass)
        u = torch.stack([torch.rand(2, generator=g, dtype=torch.float64, device=g.device) for g in generators]).to(r.device)
        cdf = log_w.exp().cumsum(-1)
        chosen = torch.searchsorted(cdf, (u[:, 0] * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
        chosen = chosen.clamp_max(r.shape[-1] - 1)
        replace = torch.log(u[:, 1]) < (round_mass - new_mass)
        kept = torch.where(replace, r.gather(-1, chosen[:, None]).squeeze(-1), state.best_reward)
        info = self._info(state, rewards, log_w, chosen, replace)
        return state.replace(best_reward=kept, log_mass=new_mass, iteration=state.iteration + 1), info
