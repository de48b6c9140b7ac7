r"""The Controller abstraction: explicit state, pure steps.

A controller owns the proposal :math:`q(V\mid U, s^2) = \mathcal N(U, s^2 I)` from which
controls are drawn, and updates it from rewards. One iteration of :func:`ctrlalign.align` is

.. code-block:: python

    controls = controller.sample(state, generators)          # (D, n, τ, d) or None
    rewards = reward(prompts, dynamics.rollout(ctx, controls, ...))   # (D, n)
    state, info = controller.step(state, controls, rewards, select_generators)

Subclasses override :meth:`Controller.step` (and :meth:`Controller.sample` only if they
sample differently). Every controller draws its Gaussian noise :math:`\varepsilon\sim\mathcal N(0, I)`
from the prompt's own generator in the same order, so under the same seed all controllers see
identical noise and differ only in how they move the mean: :math:`V = U + s\,\varepsilon`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

import torch

from .. import theory
from .._checks import check_int, check_positive

__all__ = ["Controller", "ControllerState", "StepInfo"]


@dataclass(frozen=True)
class ControllerState:
    """Explicit state of a controller for D prompts.

    Attributes:
        mean: (D, τ, d) the control mean U of the current proposal.
        std: (D,) the proposal standard deviation s per prompt (σ unless CEM refits it).
        best_reward: (D,) reward of the response kept so far (−inf before the first step).
        log_mass: (D,) running log Σ exp(r/λ) over all samples seen (softmax sampling's
            reservoir); −inf where unused.
        iteration: number of completed steps.
        sigma: σ of the prior p = N(0, σ² I) (for KL).
    """

    mean: torch.Tensor
    std: torch.Tensor
    best_reward: torch.Tensor
    log_mass: torch.Tensor
    iteration: int
    sigma: float

    def replace(self, **changes) -> "ControllerState":
        """A copy with the given fields changed (states are immutable)."""
        return replace(self, **changes)


class StepInfo(NamedTuple):
    """Per-iteration record, each field (D,) unless stated.

    Attributes:
        mean_reward: mean reward of this round's n samples.
        max_reward: max reward of this round.
        ess: effective sample size 1/Σw² of this round's weights, in [1, n].
        weight_entropy: entropy of the weights (nats), in [0, log n].
        mean_norm: ‖U‖ (Frobenius, over τ and d) of the proposal that generated this round.
        kl: KL(q‖p) of that proposal, Σ‖u_t‖²/(2σ²) in the mean-shift family.
        weights: (D, n) the weights used for the update (one-hot for Best-of-N).
        chosen: (D,) long, index of this round's candidate response.
        replace: (D,) bool, whether the candidate replaces the response kept so far.
    """

    mean_reward: torch.Tensor
    max_reward: torch.Tensor
    ess: torch.Tensor
    weight_entropy: torch.Tensor
    mean_norm: torch.Tensor
    kl: torch.Tensor
    weights: torch.Tensor
    chosen: torch.Tensor
    replace: torch.Tensor


class Controller(ABC):
    r"""Base class of all controllers.

    Args:
        num_samples: n >= 1, samples per prompt per iteration.
        num_iterations: k >= 1, iterations; the budget is n·k reward calls per prompt.
        sigma: σ > 0, the standard deviation of the control noise (and of the prior p).
        horizon: τ >= 1, tokens that receive control; None: the dynamics' maximum.
    """

    name: str = "controller"

    def __init__(self, *, num_samples: int, num_iterations: int, sigma: float, horizon: int | None = None):
        self.num_samples = check_int("num_samples", num_samples, minimum=1, symbol="n")
        self.num_iterations = check_int("num_iterations", num_iterations, minimum=1, symbol="k")
        self.sigma = self._check_sigma(sigma)
        self.horizon = None if horizon is None else check_int("horizon", horizon, minimum=1, symbol="τ")

    def _check_sigma(self, sigma: float) -> float:
        return check_positive("sigma", sigma, symbol="σ")

    @property
    def budget(self) -> int:
        """n·k, reward calls per prompt."""
        return self.num_samples * self.num_iterations

    def __repr__(self) -> str:
        keys = ["num_samples", "num_iterations", "sigma", "horizon"] + list(self._extra_repr())
        return f"{type(self).__name__}(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in keys) + ")"

    def _extra_repr(self) -> Sequence[str]:
        return ()

    # ------------------------------------------------------------------ state
    def init(self, num_prompts: int, hidden_size: int, horizon: int, *, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> ControllerState:
        """Initial state: U = 0 (the prior), s = σ, nothing kept yet.

        Returns:
            :class:`ControllerState` with mean (D, τ, d).
        """
        D = check_int("num_prompts", num_prompts, minimum=1, symbol="D")
        return ControllerState(
            mean=torch.zeros(D, horizon, hidden_size, device=device, dtype=dtype),
            std=torch.full((D,), float(self.sigma), device=device, dtype=dtype),
            best_reward=torch.full((D,), -math.inf, device=device, dtype=torch.float64),
            log_mass=torch.full((D,), -math.inf, device=device, dtype=torch.float64),
            iteration=0,
            sigma=float(self.sigma),
        )

    def sample(self, state: ControllerState, generators: Sequence[torch.Generator]) -> torch.Tensor | None:
        r"""Draw V = U + s·ε, ε ~ N(0, I), prompt j's noise from ``generators[j]``.

        Returns:
            (D, n, τ, d) controls, or None when s = 0 for every prompt (no control at all).
        """
        D, tau, d = state.mean.shape
        if len(generators) != D:
            raise ValueError(f"need one generator per prompt ({D}), got {len(generators)}")
        if bool((state.std == 0).all()):
            return None
        eps = torch.stack([
            torch.randn(self.num_samples, tau, d, generator=g, device=state.mean.device, dtype=state.mean.dtype)
            for g in generators
        ])
        return state.mean.unsqueeze(1) + state.std.view(D, 1, 1, 1) * eps

    def kl(self, state: ControllerState) -> torch.Tensor:
        """KL(q_U ‖ p) of the current proposal, (D,)."""
        return theory.gaussian_kl_isotropic(state.mean.double(), state.std.double(), state.sigma)

    @abstractmethod
    def step(self, state: ControllerState, controls: torch.Tensor | None, rewards: torch.Tensor,
             generators: Sequence[torch.Generator] | None = None) -> tuple[ControllerState, StepInfo]:
        """Update the state from this round's controls (D, n, τ, d) and rewards (D, n).

        ``generators`` (one per prompt, the prompts' ``select`` streams) serve controllers that
        need randomness in the update (softmax sampling). Must not modify its inputs. Returns the new state and a :class:`StepInfo`.
        """

    # ------------------------------------------------------------------ helpers
    def _check_step_inputs(self, state: ControllerState, controls: torch.Tensor | None, rewards: torch.Tensor) -> None:
        D = state.mean.shape[0]
        if tuple(rewards.shape) != (D, self.num_samples):
            raise ValueError(f"rewards must have shape (D={D}, n={self.num_samples}), got {tuple(rewards.shape)}")
        if controls is not None and tuple(controls.shape) != (D, self.num_samples, *state.mean.shape[1:]):
            raise ValueError(
                f"controls must have shape {(D, self.num_samples, *state.mean.shape[1:])}, got {tuple(controls.shape)}"
            )

    def _info(self, state: ControllerState, rewards: torch.Tensor, log_w: torch.Tensor,
              chosen: torch.Tensor, replace: torch.Tensor) -> StepInfo:
        r = rewards.double()
        return StepInfo(
            mean_reward=r.mean(-1),
            max_reward=r.max(-1).values,
            ess=theory.effective_sample_size(log_w.double()),
            weight_entropy=theory.weight_entropy(log_w.double()),
            mean_norm=state.mean.double().flatten(1).norm(dim=-1),
            kl=self.kl(state),
            weights=log_w.exp(),
            chosen=chosen,
            replace=replace,
        )

    @staticmethod
    def _keep_best(state: ControllerState, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Best-so-far bookkeeping: (chosen (D,), replace (D,), new best_reward (D,))."""
        r = rewards.double()
        best, chosen = r.max(-1)
        replace = best > state.best_reward
        return chosen, replace, torch.where(replace, best, state.best_reward)
