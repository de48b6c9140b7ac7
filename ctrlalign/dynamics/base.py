"""The system under control: ``Dynamics`` maps controls V to outcomes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from .._checks import ConfigError, check_int

__all__ = ["Dynamics", "Outcomes", "Sample", "Step", "StepwiseDynamics"]


@dataclass
class Sample:
    """One response: what ``Outcomes.sample(d, i)`` returns and what ``align`` keeps as best.

    Attributes:
        value: the numeric outcome (toy systems), shape (...), or None.
        tokens: generated token ids (without padding), or None.
        text: decoded response text, or None.
        logprob: Σ_t log-probability of the tokens under the controlled head, or None.
        base_logprob: the same under the uncontrolled head, or None.
    """

    value: torch.Tensor | None = None
    tokens: list[int] | None = None
    text: str | None = None
    logprob: float | None = None
    base_logprob: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as JSON-serialisable values."""
        out: dict[str, Any] = {}
        if self.text is not None:
            out["text"] = self.text
        if self.tokens is not None:
            out["tokens"] = list(self.tokens)
        if self.value is not None:
            out["value"] = self.value.tolist()
        if self.logprob is not None:
            out["logprob"] = self.logprob
        if self.base_logprob is not None:
            out["base_logprob"] = self.base_logprob
        return out


@dataclass
class Outcomes:
    """Outcomes of one rollout of D prompts × n samples.

    Every field but the sizes is optional: toy systems fill ``values``, language models fill
    ``tokens``, ``lengths``, ``texts`` and the log-probabilities.

    Attributes:
        num_prompts: D.
        num_samples: n.
        values: (D, n, ...) numeric outcomes.
        tokens: (D, n, T) generated token ids; positions at or past ``lengths`` hold padding.
        lengths: (D, n) number of generated tokens (EOS included when it was produced).
        texts: D lists of n decoded strings.
        logprobs: (D, n, T) log-probability of each generated token under the controlled
            head, 0 past ``lengths``.
        base_logprobs: (D, n, T) the same under the uncontrolled head W z + b.
        extras: anything else a dynamics wants to report.
    """

    num_prompts: int
    num_samples: int
    values: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    texts: list[list[str]] | None = None
    logprobs: torch.Tensor | None = None
    base_logprobs: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def sample(self, d: int, i: int) -> Sample:
        """The i-th sample of the d-th prompt as a :class:`Sample`."""
        if not (0 <= d < self.num_prompts and 0 <= i < self.num_samples):
            raise IndexError(
                f"sample ({d}, {i}) out of range for {self.num_prompts} prompts x "
                f"{self.num_samples} samples"
            )
        length = int(self.lengths[d, i]) if self.lengths is not None else None
        tokens = None
        if self.tokens is not None:
            row = self.tokens[d, i]
            tokens = row[: length if length is not None else row.shape[0]].tolist()
        lp = blp = None
        if self.logprobs is not None:
            lp = float(self.logprobs[d, i, :length].sum())
        if self.base_logprobs is not None:
            blp = float(self.base_logprobs[d, i, :length].sum())
        return Sample(
            value=None if self.values is None else self.values[d, i].detach().cpu().clone(),
            tokens=tokens,
            text=None if self.texts is None else self.texts[d][i],
            logprob=lp,
            base_logprob=blp,
        )


class Dynamics(ABC):
    """A controllable system: prompts x and controls V (D, n, τ, d) → outcomes.

    Subclasses override :meth:`rollout` and set ``hidden_size`` (d); they may override
    :meth:`prepare` to do per-prompt work once per run (an LLM prefills its prompt there and
    reuses the cache for every sample and iteration). A system that can also be run step by
    step (closed-loop control: look at partial outcomes, fork or stop rows) subclasses
    :class:`StepwiseDynamics` instead, which writes :meth:`rollout` for it.

    Contract:
        * ``rollout`` uses only ``generators[j]`` for prompt j's randomness, so a prompt's
          outcomes do not depend on which other prompts share the batch.
        * ``controls=None`` means no control at all (the uncontrolled system).
    """

    #: d, the pre-logit / control dimension.
    hidden_size: int
    #: the largest τ this system accepts (None: any).
    max_horizon: int | None = None

    @property
    def device(self) -> torch.device:
        """Device on which controls should be created."""
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the controls."""
        return torch.float32

    def with_sampling(self, **changes: Any) -> Dynamics:
        """The same system with other sampling options (``greedy=True``, ...); systems without
        sampling options refuse."""
        raise ConfigError(f"{type(self).__name__} has no sampling options to change ({sorted(changes)})")

    def head_weight(self) -> torch.Tensor | None:
        """The output head W (V, d) that maps pre-logits to logits, or None if the system has
        none (used by :class:`~ctrlalign.spaces.Subspace` for the head's singular directions)."""
        return None

    def prepare(self, prompts: Sequence[Any]) -> Any:
        """Per-run preparation of D prompts (default: the list itself). Returns a context."""
        return list(prompts)

    @abstractmethod
    def rollout(
        self,
        context: Any,
        controls: torch.Tensor | None,
        generators: Sequence[torch.Generator],
        num_samples: int,
    ) -> Outcomes:
        """Run the system.

        Args:
            context: what :meth:`prepare` returned for D prompts.
            controls: (D, n, τ, d) controls V, or None for the uncontrolled system.
            generators: D generators, one per prompt, for the system's own randomness.
            num_samples: n (needed when ``controls`` is None).

        Returns:
            :class:`Outcomes` of D prompts × n samples.
        """

    def check_controls(self, controls: torch.Tensor | None, num_prompts: int, num_samples: int) -> None:
        """Raise ``ValueError`` naming the shape if ``controls`` is not (D, n, τ, d)."""
        if controls is None:
            return
        if controls.dim() != 4 or controls.shape[0] != num_prompts or controls.shape[1] != num_samples or controls.shape[3] != self.hidden_size:
            raise ValueError(
                f"controls must have shape (num_prompts={num_prompts}, num_samples={num_samples}, "
                f"horizon, hidden_size={self.hidden_size}), got {tuple(controls.shape)}"
            )
        if self.max_horizon is not None and controls.shape[2] > self.max_horizon:
            raise ValueError(
                f"horizon (τ) = {controls.shape[2]} exceeds this system's maximum {self.max_horizon}"
            )


class Step(NamedTuple):
    """What one :meth:`StepwiseDynamics.advance` of b steps produced, for the B = D·n rows
    (row ``j*n + i`` is sample i of prompt j). Fields a system does not have are None.

    Attributes:
        tokens: (B, b) long, the tokens (the pad token where the row had finished).
        logprobs: (B, b) float32, log q of each token under the controlled head (0 where the
            row had finished).
        base_logprobs: (B, b) float32, log p under the uncontrolled head, or None.
        alive: (B, b) bool, the row had not finished before this token.
        values: (B, b, p) numeric states x_{t+1..t+b} (toy systems), or None.
    """

    tokens: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    base_logprobs: torch.Tensor | None = None
    alive: torch.Tensor | None = None
    values: torch.Tensor | None = None


class StepwiseDynamics(Dynamics):
    r"""A :class:`Dynamics` that can also be run step by step: a state-space system.

    With state :math:`s_t` of B = D·n rows (row ``j*n + i`` is sample i of prompt j), controls
    :math:`v_t` (D, n, d) and the system's own pre-drawn noise :math:`u_t` (uniforms for token
    systems):

    .. math::
        s_0 = \mathrm{start}(x, n),\qquad s_{t+1} = f(s_t, v_t, u_t),\quad t = 0..T-1 .

    Subclasses override exactly :meth:`draw_noise`, :meth:`start`, :meth:`advance`,
    :meth:`select` and :meth:`outcomes` (and set ``hidden_size`` and ``max_horizon`` = T),
    and :meth:`sentence_ends` when their rows have sentences; :meth:`rollout` is the
    composition of the first five and is not overridden:

    .. code-block:: python

        noise = dynamics.draw_noise(generators, n)             # (D, n, T, ...)
        state = dynamics.start(context, n)
        state, step = dynamics.advance(state, V, noise[:, :, :τ])      # if V is given
        state, step = dynamics.advance(state, None, noise[:, :, τ:])   # if τ < T
        outcomes = dynamics.outcomes(state)

    Advancing in one call or in any split into blocks gives bitwise the same result, and
    ``select`` with rows ``arange(n)`` changes nothing. A state may be *consumed* by
    ``advance``/``select`` (a language model extends its KV cache in place): keep the
    returned one.

    State objects expose ``num_prompts`` (D), ``num_samples`` (n), ``position`` (t) and
    ``finished`` (B,) bool.
    """

    def draw_noise(self, generators: Sequence[Any], num_samples: int, steps: int | None = None) -> torch.Tensor:
        """The system's randomness for ``steps`` steps (default T) of n rows per prompt, prompt
        j's block from ``generators[j]`` only: (D, n, steps, ...) (uniforms (D, n, steps) for
        token systems). :meth:`rollout` draws all T at once."""
        raise NotImplementedError

    @abstractmethod
    def start(self, context: Any, num_samples: int) -> Any:
        """B = D·n rows at t = 0 from ``context`` (what :meth:`prepare` returned; not modified)."""

    @abstractmethod
    def advance(self, state: Any, controls: torch.Tensor | None, noise: torch.Tensor) -> tuple[Any, Step]:
        """b = ``noise.shape[2]`` more steps for every row.

        Args:
            state: from :meth:`start`, :meth:`advance` or :meth:`select`, at t with t + b ≤ T.
            controls: V for these steps, (D, n, b, d), or None (no control).
            noise: (D, n, b, ...), a slice of :meth:`draw_noise`.

        Returns:
            ``(state at t + b, step)``, the :class:`Step` of the b steps.
        """

    @abstractmethod
    def select(self, state: Any, rows: torch.Tensor) -> Any:
        """New rows continuing named old rows (resampling, forking).

        Args:
            state: D prompts × n rows.
            rows: (D, n') long in 0..n−1: new row (j, i) continues old row (j, rows[j, i]).
        """

    @abstractmethod
    def outcomes(self, state: Any) -> Outcomes:
        """The rows so far as :class:`Outcomes` (D, n, ...); at t = T the rollout's outcomes."""

    def sentence_ends(self, state: Any) -> torch.Tensor | None:
        """(D, n) long, the sentence ends in each row so far — the natural points at which a
        closed-loop controller may look at a row (SMC's ``checkpoint_at="sentences"``) — or None
        (the default) for a system without sentences. A count that grows by one each time a
        row ends a sentence; only its changes are used."""
        return None

    def rollout(
        self,
        context: Any,
        controls: torch.Tensor | None,
        generators: Sequence[torch.Generator],
        num_samples: int,
    ) -> Outcomes:
        """:meth:`draw_noise` for T steps, :meth:`start`, :meth:`advance` the τ controlled steps
        (when ``controls`` (D, n, τ, d) is given) and the T − τ others, :meth:`outcomes`."""
        n = check_int("num_samples", num_samples, minimum=1, symbol="n")
        state = self.start(context, n)
        D = state.num_prompts
        if len(generators) != D:
            raise ConfigError(f"need one generator per prompt: {D} prompts, got {len(generators)}")
        self.check_controls(controls, D, n)
        noise = self.draw_noise(generators, n)
        T = noise.shape[2]
        tau = 0 if controls is None else controls.shape[2]
        if tau > 0:
            state, _ = self.advance(state, controls, noise[:, :, :tau])
        if tau < T:
            state, _ = self.advance(state, None, noise[:, :, tau:])
        return self.outcomes(state)
