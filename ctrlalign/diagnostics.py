r"""Per-round diagnostics, computed in one place from a round's rewards and weights.

For a round with rewards r (D, n) and the controller's unnormalised log-weights ℓ (D, n),
:math:`w = \mathrm{softmax}(\ell)`:

* the round-mean reward :math:`\bar r` — the Monte-Carlo estimate of the proposal's expected
  reward, the headline sign that a controller *learns* (it rises over iterations);
* the max and the standard deviation of r (the scale a temperature must be compared with);
* the Kish effective sample size :math:`1/\sum_i w_i^2 \in [1, n]` and the weight entropy
  :math:`-\sum_i w_i\log w_i \in [0, \log n]`;
* ‖θ̂‖ and KL(q ‖ p) of the proposal that generated the round (in the control space's
  coordinates), and the λ the controller weighted with (NaN without one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from . import theory

if TYPE_CHECKING:  # annotations only: the controllers call align (Controller.solve)
    from .controllers.base import Controller, Proposal, StepInfo

__all__ = ["Diagnostics", "diagnose"]


class Diagnostics(NamedTuple):
    """One round's diagnostics, each (D,) float64 unless stated.

    Attributes:
        mean_reward: mean of the round's n rewards.
        max_reward: max of the round's rewards.
        reward_std: standard deviation of the round's rewards (population).
        ess: effective sample size of the weights, in [1, n].
        weight_entropy: entropy of the weights (nats), in [0, log n].
        mean_norm: ‖θ̂‖ of the proposal that generated the round.
        kl: KL(q ‖ p) of that proposal.
        temperature: λ used for the weights (NaN for controllers without one; +inf where
            an adaptive λ met rewards that did not vary).
        weights: (D, n) the normalised weights.
    """

    mean_reward: torch.Tensor
    max_reward: torch.Tensor
    reward_std: torch.Tensor
    ess: torch.Tensor
    weight_entropy: torch.Tensor
    mean_norm: torch.Tensor
    kl: torch.Tensor
    temperature: torch.Tensor
    weights: torch.Tensor


def diagnose(controller: Controller, proposal: Proposal, rewards: torch.Tensor, info: StepInfo) -> Diagnostics:
    """Diagnostics of one round.

    Args:
        controller: the controller (for its KL).
        proposal: the state that generated the round (before the step).
        rewards: (D, n).
        info: the step's :class:`~ctrlalign.controllers.base.StepInfo` (log-weights (D, n),
            λ (D,)).
    """
    r = rewards.double()
    log_w = torch.log_softmax(info.log_weights.double(), dim=-1)
    return Diagnostics(
        mean_reward=r.mean(-1),
        max_reward=r.max(-1).values,
        reward_std=r.std(-1, correction=0),
        ess=theory.effective_sample_size(log_w),
        weight_entropy=theory.weight_entropy(log_w),
        mean_norm=proposal.mean.double().flatten(1).norm(dim=-1),
        kl=controller.kl(proposal).double(),
        temperature=info.temperature.double().to(r.device),
        weights=log_w.exp(),
    )
