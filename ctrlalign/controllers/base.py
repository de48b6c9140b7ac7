r"""The Controller abstraction: a Gaussian proposal over a control space, explicit state, pure steps.

A controller owns the proposal :math:`q(\theta\mid\hat\theta, s^2) = \mathcal N(\hat\theta, s^2 I_m)`
over the coordinates θ of its control space (:mod:`ctrlalign.spaces`; θ = V (τ, d) in the
paper's per-token space) and moves it from rewards. One iteration of :func:`ctrlalign.align` is

.. code-block:: python

    theta = controller.sample(state, generators)           # (D, n, *θ) or None
    outcomes = dynamics.rollout(context, space.controls(theta), ...)
    rewards = cost.rewards(prompts, outcomes)                # (D, n)
    state, info = controller.step(state, theta, rewards)     # info: StepInfo(log_weights, temperature)

``step`` is pure and does one job: the update. What it used to get there travels in the
:class:`StepInfo` (blackjax's State/Info split): the unnormalised log-weights ℓ (D, n) and the
λ (D,) it weighted with. The state holds only what the next step needs (the proposal); the
iteration counter belongs to the loop. Choosing which response to keep
(:mod:`ctrlalign.selection`) and the per-round diagnostics (:mod:`ctrlalign.diagnostics`) are
separate pieces that :func:`~ctrlalign.align` composes.

To write a controller, subclass :class:`Controller` and override exactly:

* :meth:`Controller.step` — ``(state, theta (D, n, *θ), rewards (D, n)) -> (state, StepInfo)``;
* ``hyperparameters`` — a tuple of :class:`~ctrlalign.declare.Hyperparameter` for the
  ``__init__`` arguments the base does not declare (set them with ``self.set_hyperparameter(name, value)``);
* ``name`` — the name used by configs and the command line.

Optionally override :meth:`Controller.init` (to return a state type of your own; it must keep
``mean`` and ``std``) and :meth:`Controller.kl`. Hyperparameters are immutable after
construction (assigning one raises); :meth:`Controller.replace` builds a validated copy with
some changed. Every controller draws ε ~ N(0, I) from the prompt's own generator in the same
order, so under the same seed all controllers see identical noise:
:math:`\theta = \hat\theta + s\,\varepsilon`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, NamedTuple

import torch

from .. import theory
from .._checks import ConfigError
from ..align import align
from ..declare import Declared, Hyperparameter
from ..selection import BestSoFar, Selection
from ..solution import Solution
from ..spaces import ControlSpace

__all__ = ["Controller", "Proposal", "StepInfo", "WeightedController"]


@dataclass(frozen=True)
class Proposal:
    """The state every controller keeps: its Gaussian proposal for D prompts.

    Attributes:
        mean: (D, *θ) the mean θ̂ of the proposal, in the control space's coordinates
            ((D, τ, d) in the per-token space).
        std: (D,) the proposal's standard deviation s (σ unless CEM refits it).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def replace(self, **changes: Any) -> Proposal:
        """A copy with the given fields changed (states are immutable)."""
        return replace(self, **changes)

    @property
    def num_prompts(self) -> int:
        """D."""
        return self.mean.shape[0]


class StepInfo(NamedTuple):
    """What a step used, beside the new state (blackjax's Info): read by diagnostics and the
    selection, never fed back into the next step.

    Attributes:
        log_weights: (D, n) float64 unnormalised log-weights ℓ of the round's samples
            (normalise with ``log_softmax``; their logsumexp is the round's log-mass, which the
            softmax-sampling reservoir uses). −inf marks a sample with no weight.
        temperature: (D,) float64, the λ the weights used; NaN for a controller without one
            (Best-of-N, CEM); +inf where an adaptive λ met rewards that did not vary.
    """

    log_weights: torch.Tensor
    temperature: torch.Tensor

    @classmethod
    def untempered(cls, log_weights: torch.Tensor) -> StepInfo:
        """Info of a controller without a temperature: λ = NaN for every prompt."""
        nan = torch.full(log_weights.shape[:1], float("nan"), dtype=torch.float64, device=log_weights.device)
        return cls(log_weights=log_weights, temperature=nan)


_BASE_HYPERPARAMETERS = (
    Hyperparameter("num_samples", int, "samples per prompt per iteration", "n", low=1),
    Hyperparameter("num_iterations", int, "iterations; budget n·k reward calls per prompt", "k", low=1),
    Hyperparameter("sigma", float, "control noise std, also the prior's (θ ~ N(0, σ² I))", "σ", low=0, low_open=True),
)


class Controller(Declared):
    r"""Base class of all open-loop controllers.

    Args:
        num_samples: n >= 1, samples per prompt per iteration.
        num_iterations: k >= 1, iterations; the budget is n·k reward calls per prompt.
        sigma: σ > 0, the standard deviation of the control noise (and of the prior p).

    The control space θ lives in (and its horizon τ) is not the controller's: it is a component
    of its own (:mod:`ctrlalign.spaces`), given to :func:`~ctrlalign.align` and bound to the
    run before :meth:`init` receives it. The declaration machinery (validation, immutability,
    :meth:`~ctrlalign.declare.Declared.replace`, :meth:`~ctrlalign.declare.Declared.config`) is
    :class:`~ctrlalign.declare.Declared`'s, shared with the closed-loop controllers.
    """

    name: ClassVar[str] = "controller"
    hyperparameters: ClassVar[tuple[Hyperparameter, ...]] = _BASE_HYPERPARAMETERS
    #: whether the controller acts in a control space (the run's ``space`` section)
    uses_space: ClassVar[bool] = True
    #: whether the controller needs sampled rollouts (greedy decoding refused)
    needs_sampling: ClassVar[bool] = False
    #: whether its result after i of k iterations is a k = i run's (the bench reads it off at every budget)
    anytime: ClassVar[bool] = True

    def __init__(self, *, num_samples: int = 8, num_iterations: int = 4, sigma: float = 0.3):
        for key, value in (("num_samples", num_samples), ("num_iterations", num_iterations), ("sigma", sigma)):
            self.set_hyperparameter(key, value)

    # ------------------------------------------------------------------ solving a batch
    def solve(self, dynamics: Any, reward: Any, prompts: Sequence[Any], *, seed: int = 0, context: Any = None,
              space: ControlSpace | None = None, selection: Selection | None = None,
              common_random_numbers: bool = False, callback: Callable[[Any], None] | None = None,
              progress: bool = False) -> Solution:
        """Solve D prompts by :func:`~ctrlalign.align` (the arguments are its own) and return
        the :class:`~ctrlalign.solution.Solution`: the kept responses, n·k full reward calls
        (no prefix calls), the decoded tokens (every candidate's length; n·T per round on a
        system without lengths) and the per-iteration trace."""
        counted = _TokenCount(len(prompts), getattr(dynamics, "max_horizon", None), callback)
        res = align(dynamics, reward, self, prompts, space=space, seed=seed, context=context, progress=progress,
                    selection=selection, common_random_numbers=common_random_numbers, callback=counted)
        D = len(res.prompts)
        return Solution(
            prompts=res.prompts, responses=res.responses, rewards=res.rewards.double().cpu(),
            reward_calls=res.reward_calls.long().cpu(), prefix_calls=torch.zeros(D, dtype=torch.long),
            tokens=counted.tokens, traces=[res.prompt_trace(d) for d in range(D)], controller=self.name,
            kind="open-loop", seconds=res.seconds, space=None if res.space is None else res.space.describe(),
            selection=res.selection, result=res)

    def check_setting(self, *, space: dict[str, Any] | None, greedy: bool, unscored_prefixes: Sequence[str],
                      open_loop_options: Sequence[str] = ()) -> None:
        """Refuse a run setting this controller cannot work in, before any model work: the
        run's ``space`` section (None: unset), greedy decoding, the reward terms that cannot
        score prefixes, and the options of open-loop runs that are set (``selection``, ...). An
        open-loop controller works in every one."""

    @property
    def budget(self) -> int:
        """n·k, reward calls per prompt."""
        return self.num_samples * self.num_iterations

    def __repr__(self) -> str:
        cfg = {k: v for k, v in self.config().items() if v is not None}
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in cfg.items()) + ")"

    def default_selection(self) -> Selection:
        """The response selection :func:`~ctrlalign.align` uses unless told otherwise (best so far)."""
        return BestSoFar()

    # ------------------------------------------------------------------ state
    def init(self, num_prompts: int, space: ControlSpace, *, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> Proposal:
        """Initial state: θ̂ = 0 (the prior), s = σ.

        Args:
            num_prompts: D.
            space: the bound control space (its ``shape`` is θ's).

        Returns:
            :class:`Proposal` with mean (D, *θ).

        Raises:
            ConfigError: σ > 0 rounds to 0 in ``dtype`` (e.g. σ = 1e-50 in float32).
        """
        std = torch.full((num_prompts,), float(self.sigma), device=device, dtype=dtype)
        if self.sigma > 0 and bool((std == 0).any()):
            raise ConfigError(f"sigma (σ) = {self.sigma:g} is 0 in {dtype} (its smallest normal number is "
                              f"{torch.finfo(dtype).smallest_normal:g}); use a larger σ")
        return Proposal(mean=self._zeros(num_prompts, space, device, dtype), std=std)

    @staticmethod
    def _zeros(num_prompts: int, space: ControlSpace, device: Any, dtype: torch.dtype) -> torch.Tensor:
        if num_prompts < 1:
            raise ConfigError(f"number of prompts (D) must be >= 1, got {num_prompts}")
        return torch.zeros(num_prompts, *space.shape, device=device, dtype=dtype)

    def sample(self, state: Proposal, generators: Sequence[torch.Generator],
               num_samples: int | None = None) -> torch.Tensor | None:
        r"""Draw θ = θ̂ + s·ε, ε ~ N(0, I), prompt j's noise from ``generators[j]``.

        Args:
            num_samples: how many (default n).

        Returns:
            (D, n, *θ) coordinates, or None when s = 0 for every prompt (no control at all).
        """
        D = state.num_prompts
        n = self.num_samples if num_samples is None else num_samples
        if len(generators) != D:
            raise ValueError(f"need one generator per prompt ({D}), got {len(generators)}")
        if bool((state.std == 0).all()):
            return None
        shape = state.mean.shape[1:]
        eps = torch.stack([
            torch.randn(n, *shape, generator=g, device=state.mean.device, dtype=state.mean.dtype)
            for g in generators
        ])
        return state.mean.unsqueeze(1) + state.std.view(D, 1, *([1] * len(shape))) * eps

    def kl(self, state: Proposal) -> torch.Tensor:
        r"""KL(q ‖ p) of the proposal in θ's coordinates, (D,):
        :math:`\tfrac12[m s^2/\sigma^2 + \|\hat\theta\|^2/\sigma^2 - m + m\log(\sigma^2/s^2)]`."""
        return theory.gaussian_kl_isotropic(state.mean.double().flatten(1).unsqueeze(1), state.std.double(),
                                            self.sigma)

    @abstractmethod
    def step(self, state: Proposal, theta: torch.Tensor | None, rewards: torch.Tensor) -> tuple[Proposal, StepInfo]:
        """Update the proposal from this round's coordinates θ (D, n, *θ) and rewards (D, n).

        Pure: must not modify its inputs. Returns the new state and the :class:`StepInfo`
        (the (D, n) float64 unnormalised log-weights of the update and the λ (D,) used).
        """

    # ------------------------------------------------------------------ helpers for step
    def check_step_inputs(self, state: Proposal, theta: torch.Tensor | None, rewards: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the shapes unless rewards are (D, n) and θ (D, n, *θ) or None."""
        D = state.num_prompts
        if tuple(rewards.shape) != (D, self.num_samples):
            raise ValueError(f"rewards must have shape (D={D}, n={self.num_samples}), got {tuple(rewards.shape)}")
        want = (D, self.num_samples, *state.mean.shape[1:])
        if theta is not None and tuple(theta.shape) != want:
            raise ValueError(f"controls must have shape {want}, got {tuple(theta.shape)}")


class _TokenCount:
    """An ``align`` callback counting each prompt's decoded tokens (the candidates' lengths),
    then calling ``inner``."""

    def __init__(self, num_prompts: int, horizon: int | None, inner: Callable[[Any], None] | None) -> None:
        self.tokens = torch.zeros(num_prompts, dtype=torch.long)
        self.horizon, self.inner = horizon, inner

    def __call__(self, it: Any) -> None:
        o = it.outcomes
        for j, d in enumerate(it.prompts):
            if o.lengths is not None:
                self.tokens[d] += int(o.lengths[j].sum())
            else:
                self.tokens[d] += o.num_samples * int(self.horizon or 0)
        if self.inner is not None:
            self.inner(it)


_WEIGHT_HYPERPARAMETERS = (
    Hyperparameter("temperature", float, "fixed temperature λ of the weights softmax(r/λ) (unset with target_ess)",
                   "λ", low=0, low_open=True, nullable=True, excludes=("target_ess",)),
    Hyperparameter("target_ess", float, "adaptive λ per prompt and round so that the ESS is this fraction of n",
                   "ρ_ESS", low=0, high=1, low_open=True, nullable=True, excludes=("temperature",)),
)


class WeightedController(Controller):
    r"""A controller whose weights are :math:`\log w_i = r_i/\lambda - c_i`, with λ fixed
    (``temperature``) or chosen per prompt and round so that the ESS is ``target_ess``·n
    (:func:`ctrlalign.theory.adaptive_temperature`). Subclasses override
    :meth:`offsets` (the c_i; zero by default) and :meth:`step`, and call :meth:`weigh`.
    """

    hyperparameters = _WEIGHT_HYPERPARAMETERS

    def set_temperature(self, temperature: float | None, target_ess: float | None) -> None:
        """Store λ's setting: fixed ``temperature`` or adaptive ``target_ess``; a ``target_ess``
        replaces the declared default temperature (so ``AISP(target_ess=0.5)`` is adaptive)."""
        if target_ess is not None and temperature == self.spec().defaults.get("temperature"):
            temperature = None
        self.set_hyperparameter("temperature", temperature)
        self.set_hyperparameter("target_ess", target_ess)
        if (self.temperature is None) == (self.target_ess is None):
            raise ConfigError(
                f"{type(self).__name__}: set exactly one of temperature (λ, fixed) and target_ess (adaptive λ); "
                f"got temperature={temperature!r}, target_ess={target_ess!r}")

    def offsets(self, state: Proposal, theta: torch.Tensor | None) -> torch.Tensor | None:
        """(D, n) the terms c_i subtracted from r/λ, or None (zero)."""
        return None

    def weigh(self, state: Proposal, theta: torch.Tensor | None, rewards: torch.Tensor) -> StepInfo:
        """:class:`StepInfo` of r/λ − c: log-weights (D, n) unnormalised, with λ (D,) fixed or
        adaptive.

        Raises:
            ConfigError: r/λ overflows float64 (a fixed λ far too small for the rewards' scale),
                naming λ and the scale (:func:`ctrlalign.theory.tempered_logits`).
        """
        r = rewards.double()
        c = self.offsets(state, theta)
        if self.target_ess is not None:
            lam = theory.adaptive_temperature(r, self.target_ess, offsets=c)
        else:
            lam = torch.full(r.shape[:1], self.temperature, dtype=torch.float64, device=r.device)
        return StepInfo(log_weights=theory.tempered_logits(r, lam, c), temperature=lam)
