r"""Response selection: which of the sampled responses :func:`~ctrlalign.align` returns.

A selection is a small component with its own explicit state (:class:`Kept`), separate from
the controller (which only moves its proposal). After every round :func:`~ctrlalign.align`
calls :meth:`Selection.update` with the round's rewards (D, n) and the controller's
unnormalised log-weights (D, n); it answers which sample is the round's candidate and whether
it replaces the response kept so far.

* :class:`BestSoFar` — the highest reward seen (Best-of-N's rule; the default).
* :class:`Reservoir` — one response drawn with probability softmax(log-weights) over *all*
  rounds, by a weighted reservoir (softmax sampling's rule; exact SIR for a fixed λ).
* :class:`FinalProposal` — a response (or the best of m) drawn from the *final* proposal
  q(θ | θ̂_k) after the last update: what the controller has learned, not what it stumbled
  on. It costs m extra reward calls per prompt (``final_samples``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ._checks import ConfigError, check_int

__all__ = ["SELECTIONS", "BestSoFar", "FinalProposal", "Kept", "Reservoir", "Selection", "make_selection"]


@dataclass(frozen=True)
class Kept:
    """Selection state for D prompts.

    Attributes:
        reward: (D,) float64 reward of the kept response (−inf before one is kept).
        log_mass: (D,) float64 running log Σ exp(log-weights) over all rounds (the reservoir's);
            −inf where unused.
    """

    reward: torch.Tensor
    log_mass: torch.Tensor

    def replace(self, **changes) -> Kept:
        """A copy with the given fields changed."""
        return replace(self, **changes)


class Selection(ABC):
    """Base class: override :meth:`update` (and :meth:`final` with ``final_samples`` > 0)."""

    #: name used by configs and the command line
    name = "selection"
    #: samples drawn from the final proposal after the last update (and scored) per prompt
    final_samples: int = 0

    def init(self, num_prompts: int, device: torch.device | str = "cpu") -> Kept:
        """Nothing kept yet."""
        empty = torch.full((num_prompts,), -math.inf, dtype=torch.float64, device=device)
        return Kept(reward=empty, log_mass=empty.clone())

    @abstractmethod
    def update(self, kept: Kept, rewards: torch.Tensor, log_weights: torch.Tensor,
               generators: Sequence[torch.Generator]) -> tuple[Kept, torch.Tensor, torch.Tensor]:
        """After a round: rewards (D, n), unnormalised log-weights (D, n), the prompts' ``select``
        generators → (new state, chosen (D,) long, replace (D,) bool)."""

    def final(self, kept: Kept, rewards: torch.Tensor,
              generators: Sequence[torch.Generator]) -> tuple[Kept, torch.Tensor, torch.Tensor]:
        """After the ``final_samples`` draws from the final proposal, rewards (D, m)."""
        raise NotImplementedError(f"{type(self).__name__} draws no final samples")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _best(kept: Kept, rewards: torch.Tensor, force: bool) -> tuple[Kept, torch.Tensor, torch.Tensor]:
    r = rewards.double().to(kept.reward.device)
    best, chosen = r.max(-1)
    swap = torch.ones_like(best, dtype=torch.bool) if force else best > kept.reward
    return kept.replace(reward=torch.where(swap, best, kept.reward)), chosen, swap


class BestSoFar(Selection):
    """Keep the highest-reward response seen in any round (ties: the earliest)."""

    name = "best"

    def update(self, kept, rewards, log_weights, generators):
        """The round's argmax replaces the kept response if its reward is strictly higher."""
        return _best(kept, rewards, force=False)


class Reservoir(Selection):
    r"""Draw one response with probability :math:`w_i \propto \exp(\ell_i)` over all rounds' samples.

    Per round: a candidate is resampled within the round with the normalised weights, and
    replaces the kept response with probability :math:`M_\text{round}/(M_\text{old}+M_\text{round})`,
    :math:`M = \sum\exp(\ell)`, which gives exactly softmax(ℓ) over all rounds. Two uniforms
    per prompt and round come from the prompt's ``select`` generator.
    """

    name = "reservoir"

    def update(self, kept, rewards, log_weights, generators):
        """Resample a candidate and update the weighted reservoir.

        Raises:
            ConfigError: a log-weight is NaN or +inf (naming the prompt and sample); a round
                whose weights are all −inf keeps nothing.
        """
        D = rewards.shape[0]
        if len(generators) != D:
            raise ValueError(f"Reservoir needs one generator per prompt ({D}), got {len(generators)}")
        ell = log_weights.double().to(kept.reward.device)
        bad = torch.isnan(ell) | (ell == math.inf)
        if bool(bad.any()):
            d, i = (int(x) for x in torch.nonzero(bad)[0])
            raise ConfigError(f"Reservoir: the log-weight of prompt {d}, sample {i} is {float(ell[d, i])}; "
                              "log-weights must be finite or -inf (a weight of 0)")
        r = rewards.double().to(kept.reward.device)
        round_mass = torch.logsumexp(ell, dim=-1)
        new_mass = torch.logaddexp(kept.log_mass, round_mass)
        u = torch.stack([torch.rand(2, generator=g, dtype=torch.float64, device=g.device) for g in generators])
        u = u.to(r.device)
        cdf = torch.log_softmax(ell, dim=-1).exp().cumsum(-1)
        chosen = torch.searchsorted(cdf, (u[:, 0] * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
        chosen = chosen.clamp_max(r.shape[-1] - 1)
        swap = torch.log(u[:, 1]) < (round_mass - new_mass)
        reward = torch.where(swap, r.gather(-1, chosen[:, None]).squeeze(-1), kept.reward)
        return kept.replace(reward=reward, log_mass=new_mass), chosen, swap


class FinalProposal(Selection):
    """A response from the final proposal q(θ | θ̂_k): the best of ``num_samples`` = m draws
    (m = 1: one draw, the proposal's own sample). Rounds keep nothing.

    Args:
        num_samples: m >= 1, extra samples (and reward calls) per prompt.
    """

    name = "final"

    def __init__(self, num_samples: int = 1):
        self.final_samples = check_int("final_samples", num_samples, minimum=1, symbol="m")

    def update(self, kept, rewards, log_weights, generators):
        """Nothing is kept from the rounds."""
        D = rewards.shape[0]
        none = torch.zeros(D, dtype=torch.bool, device=kept.reward.device)
        return kept, torch.zeros(D, dtype=torch.long, device=kept.reward.device), none

    def final(self, kept, rewards, generators):
        """The best of the m final draws is kept."""
        return _best(kept, rewards, force=True)

    def __repr__(self) -> str:
        return f"FinalProposal(num_samples={self.final_samples})"


#: configuration name → selection class
SELECTIONS: dict[str, type[Selection]] = {"best": BestSoFar, "reservoir": Reservoir, "final": FinalProposal}


def make_selection(name: str | Selection | None, final_samples: int = 1) -> Selection | None:
    """A selection from its configuration name (None passes through: the controller's default)."""
    if name is None or isinstance(name, Selection):
        return name
    if name not in SELECTIONS:
        raise ConfigError(f"unknown selection {name!r}; choose one of {', '.join(SELECTIONS)}")
    return FinalProposal(final_samples) if name == "final" else SELECTIONS[name]()
