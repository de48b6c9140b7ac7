r"""Control spaces: what a controller's mean parameterises, and how a point θ becomes controls V.

A control space is a linear, injective map :math:`\theta \mapsto V = A\theta` from
coordinates θ (shape ``space.shape``, per prompt) to controls V (τ, d):

=============== ==================== ============================================ ==================
space           θ shape              V                                            dimension m
=============== ==================== ============================================ ==================
``PerToken``    (τ, d)               :math:`v_t = \theta_t` (the paper's)            τ·d
``Shared``      (d,)                 :math:`v_t = \theta` for every t                d
``Blocks(b)``   (⌈τ/b⌉, d)           :math:`v_t = \theta_{\lfloor t/b\rfloor}`      ⌈τ/b⌉·d
``Subspace(r)`` (r,) or (τ, r)       :math:`v_t = E^\top\theta` or :math:`E^\top\theta_t`  r or τ·r
=============== ==================== ============================================ ==================

where E (r, d) has orthonormal rows (the top right-singular vectors of the output head W, or
directions the user passes).

The prior lives in θ's own coordinates, :math:`p(\theta) = \mathcal N(0, \sigma^2 I_m)`, and
so does every proposal :math:`q(\theta\mid\hat\theta) = \mathcal N(\hat\theta, s^2 I_m)`.
Because A is injective, V's law is the push-forward of θ's and the KL is exact in θ:

.. math:: \mathrm{KL}(q_{\hat\theta}\,\|\,p) = \frac{\|\hat\theta\|^2}{2\sigma^2}
          \quad (s = \sigma).

Every theorem of the formulation (the free-energy bound and its equality case, importance
sampling toward the optimal mean, the Best-of-N limit) holds in θ with the dynamics
:math:`y(A\theta)`; ``tests/test_spaces.py`` checks each one per space.

A space is a component of a run beside the controller and the selection:
``align(dynamics, reward, controller, prompts, space=Subspace(rank=32))`` (default
:class:`PerToken`, the paper's), ``space: {name: subspace, rank: 32}`` in a config, ``--space
subspace --rank 32`` on the command line. Each space declares its options, τ = ``horizon``
included, as :class:`~ctrlalign.declare.Hyperparameter` s, exactly as controllers do; configs and
flags come from those declarations and the registry :data:`SPACES`, so **a new space is one
class here** (plus :func:`register_space` when it is not one of the built-in four) and its test.

A space is configured by its options (``Blocks(block_size=4)``, ``Subspace(rank=8)``) and
*bound* to a run with :meth:`ControlSpace.bind` (τ, d, and for ``Subspace`` the head's
directions) before use; :func:`~ctrlalign.align.bind_space` does it for ``align``. ``Shared``
returns V as an expanded view (stride 0 over τ): engines never hold (D, n, τ, d).
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ._checks import ConfigError, check_int
from .declare import Hyperparameter, Registry, Spec, spec_of

__all__ = ["SPACES", "Blocks", "ControlSpace", "PerToken", "Shared", "Subspace", "head_directions", "make_space",
           "register_space"]


@dataclass(frozen=True)
class ControlSpace(ABC):
    """Base class of control spaces.

    To write a space, subclass it as a frozen dataclass whose fields are its options, and
    override exactly:

    * :meth:`coordinate_shape` — θ's shape for τ and d;
    * :meth:`controls` — the linear, injective map θ (..., *shape) → V (..., τ, d);
    * ``hyperparameters`` — a tuple of :class:`~ctrlalign.declare.Hyperparameter` for the fields
      the base does not declare (each is checked once, when the space is constructed);
    * ``name`` — the name used by configs and the command line;

    and :meth:`bind` when binding needs more than τ and d (then list the fields it fills in
    ``bound_arguments``). Register it with :func:`register_space` to reach configs and flags.

    Args:
        horizon: τ >= 1, tokens that receive control; None: the dynamics' maximum (filled by
            :meth:`bind`).
        hidden_size: d, filled by :meth:`bind` (not an option).
    """

    horizon: int | None = field(default=None, kw_only=True)
    hidden_size: int | None = field(default=None, kw_only=True)

    #: name used in configs and the command line
    name: ClassVar[str] = "space"
    #: the options, each checked once at construction (subclasses add theirs)
    hyperparameters: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("horizon", int, "controlled tokens (unset: all max_new_tokens)", "τ", low=1, nullable=True),
    )
    #: ``__init__`` arguments that :meth:`bind` fills: not options, not in configs
    bound_arguments: ClassVar[tuple[str, ...]] = ("hidden_size",)

    def __post_init__(self) -> None:
        for h in self.spec().hyperparameters:
            object.__setattr__(self, h.name, h.check(getattr(self, h.name)))

    @classmethod
    def spec(cls) -> Spec:
        """This space's declaration (options, defaults, ranges)."""
        return spec_of(cls)

    def options(self) -> dict[str, Any]:
        """The options as plain values (the declared fields)."""
        return {k: getattr(self, k) for k in self.spec().names}

    @property
    def bound(self) -> bool:
        """Whether τ and d are known (the space can map θ to V)."""
        return self.horizon is not None and self.hidden_size is not None

    def with_bound(self, **fields: Any) -> ControlSpace:
        """A copy with fields filled by binding (its options were checked at construction and
        are not checked again)."""
        new = copy.copy(self)
        for key, value in fields.items():
            object.__setattr__(new, key, value)
        return new

    def bind(self, horizon: int, dynamics: Any) -> ControlSpace:
        """A copy bound to τ = ``horizon`` and d = ``dynamics.hidden_size``."""
        tau = check_int("horizon", horizon, minimum=1, symbol="τ")
        d = check_int("hidden_size", dynamics.hidden_size, minimum=1, symbol="d")
        return self.with_bound(horizon=tau, hidden_size=d)

    def require_bound(self) -> tuple[int, int]:
        """(τ, d), for :meth:`controls`.

        Raises:
            ConfigError: the space is not bound yet.
        """
        if not self.bound:
            raise ConfigError(f"{self!r} is not bound to a horizon and hidden size; call .bind(horizon, dynamics)")
        return self.horizon, self.hidden_size  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, ...]:
        """θ's shape for one prompt (one sample)."""
        return self.coordinate_shape(*self.require_bound())

    @property
    def dimension(self) -> int:
        """m, the number of coordinates."""
        return math.prod(self.shape)

    @abstractmethod
    def coordinate_shape(self, horizon: int, hidden_size: int) -> tuple[int, ...]:
        """θ's shape for τ = ``horizon`` and d = ``hidden_size``."""

    @abstractmethod
    def controls(self, theta: torch.Tensor) -> torch.Tensor:
        """V = Aθ: θ (..., *shape) → V (..., τ, d). Linear and injective."""

    def describe(self) -> str:
        """Short label, e.g. ``blocks(4)``."""
        return self.name

    def token_dimension(self, hidden_size: int) -> int:
        r"""How many pre-logit directions one token's control spans: :math:`\mathbb E\|v_t\|^2/\sigma^2`
        for θ ~ N(0, σ² I) (d for per-token, shared and block controls). Overflow checks size a
        token's control :math:`\|v_t\| \approx \sigma\sqrt{\cdot}` from it; override it in a space
        whose controls span fewer directions (as :class:`Subspace` does) or are scaled."""
        return hidden_size


@dataclass(frozen=True)
class PerToken(ControlSpace):
    """One control per token, θ = V (τ, d): the paper's space, exactly as published."""

    name: ClassVar[str] = "per-token"

    def coordinate_shape(self, horizon: int, hidden_size: int) -> tuple[int, ...]:
        """(τ, d)."""
        return (horizon, hidden_size)

    def controls(self, theta: torch.Tensor) -> torch.Tensor:
        """V = θ (no copy)."""
        return theta


@dataclass(frozen=True)
class Shared(ControlSpace):
    """One control u (d,) shared by all τ tokens: v_t = u."""

    name: ClassVar[str] = "shared"

    def coordinate_shape(self, horizon: int, hidden_size: int) -> tuple[int, ...]:
        """(d,)."""
        return (hidden_size,)

    def controls(self, theta: torch.Tensor) -> torch.Tensor:
        """V = 1_τ ⊗ u as an expanded view (..., τ, d) with stride 0 over τ."""
        tau, d = self.require_bound()
        return theta.unsqueeze(-2).expand(*theta.shape[:-1], tau, d)


@dataclass(frozen=True)
class Blocks(ControlSpace):
    """One control per block of b consecutive tokens: v_t = θ_{⌊t/b⌋}, θ (⌈τ/b⌉, d).

    Args:
        block_size: b >= 1 (b = 1 is per-token, b >= τ is shared).
    """

    block_size: int = 4
    name: ClassVar[str] = "blocks"
    hyperparameters: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("block_size", int, "tokens per block", "b", low=1),
    )

    def coordinate_shape(self, horizon: int, hidden_size: int) -> tuple[int, ...]:
        """(⌈τ/b⌉, d)."""
        return (-(-horizon // self.block_size), hidden_size)

    def controls(self, theta: torch.Tensor) -> torch.Tensor:
        """V (..., τ, d): each block's control repeated b times, truncated to τ."""
        tau, _ = self.require_bound()
        return theta.repeat_interleave(self.block_size, dim=-2)[..., :tau, :]

    def describe(self) -> str:
        """``blocks(b)``."""
        return f"blocks({self.block_size})"


def head_directions(weight: torch.Tensor, rank: int) -> torch.Tensor:
    r"""The top-r right-singular vectors of the head W (V, d): the pre-logit directions that
    move the logits most. Computed from the d × d Gram matrix :math:`W^\top W`.

    Returns:
        E (r, d), orthonormal rows, in float64, ordered by singular value (largest first);
        each row's sign is fixed so that its largest-magnitude entry is positive.
    """
    W = weight.detach().to("cpu", torch.float64)
    r = check_int("rank", rank, minimum=1, symbol="r")
    if r > W.shape[1]:
        raise ConfigError(f"rank (r) = {r} exceeds the pre-logit dimension d = {W.shape[1]}")
    evals, evecs = torch.linalg.eigh(W.T @ W)  # ascending
    E = evecs[:, -r:].flip(-1).T.contiguous()
    idx = E.abs().argmax(dim=-1)
    sign = torch.sign(E.gather(-1, idx[:, None]))
    return E * sign


@dataclass(frozen=True)
class Subspace(ControlSpace):
    r"""Controls in the span of r orthonormal pre-logit directions E (r, d).

    Args:
        rank: r >= 1.
        directions: ``"head"`` (the top-r right-singular vectors of the output head, see
            :func:`head_directions`) or, from Python only, a tensor (r, d) of directions
            (orthonormalised by QR).
        shared: one θ (r,) for all tokens (True) or one per token, θ (τ, r) (False).
        basis: E (r, d), filled by :meth:`bind` (not an option).
    """

    rank: int = 8
    directions: Any = "head"
    shared: bool = True
    basis: torch.Tensor | None = None
    name: ClassVar[str] = "subspace"
    hyperparameters: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("rank", int, "pre-logit directions spanned", "r", low=1),
        Hyperparameter("directions", str, "'head': the output head's top-r right-singular vectors (from Python "
                       "also a tensor (r, d))", choices=("head",), objects=(torch.Tensor,)),
        Hyperparameter("shared", bool, "one θ (r,) for all tokens, else one per token θ (τ, r)"),
    )
    bound_arguments: ClassVar[tuple[str, ...]] = ("hidden_size", "basis")

    def bind(self, horizon: int, dynamics: Any) -> Subspace:
        """Bind τ and d and fix the basis E (r, d) (from the dynamics' head for ``"head"``)."""
        bound = super().bind(horizon, dynamics)
        if isinstance(self.directions, str):
            weight = dynamics.head_weight()
            if weight is None:
                raise ConfigError(f"{type(dynamics).__name__} has no output head; pass Subspace(directions=tensor (r, d))")
            E = head_directions(weight, self.rank)
        else:
            D = torch.as_tensor(self.directions, dtype=torch.float64)
            if D.dim() != 2 or D.shape != (self.rank, bound.hidden_size):
                raise ConfigError(f"Subspace directions must have shape (r={self.rank}, d={bound.hidden_size}), "
                                  f"got {tuple(D.shape)}")
            q, rr = torch.linalg.qr(D.T)
            if bool((rr.diagonal().abs() < 1e-10).any()):
                raise ConfigError("Subspace directions are linearly dependent")
            E = q.T.contiguous()
        return bound.with_bound(basis=E)

    def coordinate_shape(self, horizon: int, hidden_size: int) -> tuple[int, ...]:
        """(r,) when shared, else (τ, r)."""
        return (self.rank,) if self.shared else (horizon, self.rank)

    def controls(self, theta: torch.Tensor) -> torch.Tensor:
        r"""V = θ E (per token) or :math:`1_\tau\otimes\theta E` (shared, an expanded view)."""
        tau, d = self.require_bound()
        if self.basis is None:
            raise ConfigError("Subspace is not bound: call .bind(horizon, dynamics)")
        v = theta @ self.basis.to(theta.dtype).to(theta.device)
        if self.shared:
            return v.unsqueeze(-2).expand(*v.shape[:-1], tau, d)
        return v

    def token_dimension(self, hidden_size: int) -> int:
        """r: a token's control v_t = E^T θ lies in the span of E's r orthonormal rows."""
        return min(self.rank, hidden_size)

    def describe(self) -> str:
        """``subspace(r)`` or ``subspace(r, per-token)``."""
        return f"subspace({self.rank}{'' if self.shared else ', per-token'})"

    def __eq__(self, other: object) -> bool:  # tensors make the dataclass __eq__ ambiguous
        return self is other

    __hash__ = object.__hash__


#: configuration name → space class (add one with :func:`register_space`)
SPACES = Registry("control space", [PerToken, Shared, Blocks, Subspace])


def register_space(cls: type[ControlSpace]) -> type[ControlSpace]:
    """Make a space class available to configs and the command line under ``cls.name``
    (usable as a class decorator). Its ``hyperparameters`` are validated at once."""
    return SPACES.register(cls)


def make_space(name: str | ControlSpace = "per-token", **options: Any) -> ControlSpace:
    """A space from its configuration name and options (a :class:`ControlSpace` passes through).

    Raises:
        ConfigError: naming an unknown space, an option that does not apply to it, or a value
            its declaration refuses.
    """
    if isinstance(name, ControlSpace):
        if options:
            raise ConfigError(f"options {sorted(options)} configure a space given by name, not {name!r}")
        return name
    return SPACES.build(name, options)
