r"""The engine protocol: prefill once, then decode B = D·n rows step by step.

An engine is the part of :class:`~ctrlalign.dynamics.causal_lm.CausalLM` that runs the model.
It follows the decoding contract of :mod:`ctrlalign.dynamics.decoding` as a state-space
system whose state is the KV cache, the next pre-logit :math:`z_{t+1}` and the decoded rows:

* :meth:`Engine.prefill` — once per run: input ids (D, L) left-padded, attention mask (D, L)
  → an engine-specific *prefix* (the prompts' KV cache and :math:`z_1` (D, d)). Never
  modified, so any number of decodes start from it.
* :meth:`Engine.start` — a :class:`EngineState` of B = D·n rows (row ``j*n + i`` is sample i of
  prompt j) at t = 0, each continuing its prompt's prefix.
* :meth:`Engine.advance` — b more tokens for every row (below). Returns the new state and a
  :class:`~ctrlalign.dynamics.base.Step`. A row that has finished (EOS, or t = T) gets the pad
  token and log-probabilities 0.
* :meth:`Engine.select` — rows (D, n') of indices in 0..n−1: new row (j, i) continues old row
  (j, rows[j, i]) (resampling, forking). The KV cache is gathered.

At steps s = t+1..t+b an advance draws

.. math::
    y_s = \mathrm{InvCDF}\big(\mathrm{softmax}(g(W(z_s + v_s) + b)),\ u_s\big)
    \ \text{(controls given)},\qquad
    y_s = \mathrm{InvCDF}\big(\mathrm{softmax}(g(W z_s + b)),\ u_s\big)\ \text{(None)},

with log p = :math:`\log\mathrm{softmax}(g(Wz_s+b))_{y_s}` and log q the same for the
controlled logits (both at temperature 1).

Advancing t tokens in one call or in any split into blocks gives bitwise the same rows: the
engines run the same per-token kernels on the same shapes in the same order either way.

A state is *consumed* by :meth:`~Engine.advance` and :meth:`~Engine.select` (engines extend
their KV cache in place): using it again raises ``RuntimeError``. Keep the returned state.

To write an engine, subclass :class:`Engine` and override exactly :meth:`~Engine.prefill`,
:meth:`~Engine.start`, :meth:`~Engine.advance` and :meth:`~Engine.select`; :meth:`Engine.decode`
(a whole rollout) is their composition. The engines built in are
:class:`~ctrlalign.dynamics.engines.eager.EagerEngine` and
:class:`~ctrlalign.dynamics.engines.static.StaticEngine`.

Shapes: D prompts, n samples, B = D·n rows, L padded prompt length, T new tokens, τ ≤ T horizon,
b tokens per advance, d hidden size, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..base import Step
from ..decoding import DecodeResult, SamplingConfig, sample_with_logprobs

__all__ = ["Decoded", "Engine", "EngineState", "Lease", "StepRecorder", "check_advance_inputs", "check_decode_shapes",
           "check_rows", "eos_list"]


class Lease:
    """Marks a state as usable once: :meth:`consume` succeeds the first time and raises after."""

    __slots__ = ("live",)

    def __init__(self) -> None:
        self.live = True

    def consume(self) -> None:
        """Mark used; raise ``RuntimeError`` if it already was."""
        if not self.live:
            raise RuntimeError(
                "this decode state was already advanced or selected from (engines extend their KV "
                "cache in place); continue from the state that call returned"
            )
        self.live = False


@dataclass(frozen=True)
class Decoded:
    """The rows decoded so far (B rows, t tokens each).

    Attributes:
        tokens: (B, t) long; ``pad_token_id`` after a row finished.
        logprobs: (B, t) float32, log q of each token, 0 after the end.
        base_logprobs: (B, t) float32, log p, or None when not computed.
        lengths: (B,) long, generated tokens including the EOS.
        finished: (B,) bool, the row emitted EOS (a row at t = T is finished too, see
            :attr:`EngineState.finished`).
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor
    base_logprobs: torch.Tensor | None
    lengths: torch.Tensor
    finished: torch.Tensor

    @classmethod
    def empty(cls, rows: int, base_logprobs: bool, device: torch.device) -> Decoded:
        """B = ``rows`` rows with no token yet."""
        z = torch.zeros(rows, 0, dtype=torch.float32, device=device)
        return cls(
            tokens=torch.zeros(rows, 0, dtype=torch.long, device=device),
            logprobs=z,
            base_logprobs=z.clone() if base_logprobs else None,
            lengths=torch.zeros(rows, dtype=torch.long, device=device),
            finished=torch.zeros(rows, dtype=torch.bool, device=device),
        )

    def extend(self, step: Step, lengths: torch.Tensor, finished: torch.Tensor) -> Decoded:
        """These rows followed by a step's b tokens; ``lengths`` and ``finished`` after it."""
        return Decoded(
            tokens=torch.cat([self.tokens, step.tokens], 1),
            logprobs=torch.cat([self.logprobs, step.logprobs], 1),
            base_logprobs=None if self.base_logprobs is None else torch.cat([self.base_logprobs, step.base_logprobs], 1),
            lengths=lengths,
            finished=finished,
        )

    def gather(self, index: torch.Tensor) -> Decoded:
        """Rows ``index`` (B',) of these rows."""
        return Decoded(
            tokens=self.tokens[index],
            logprobs=self.logprobs[index],
            base_logprobs=None if self.base_logprobs is None else self.base_logprobs[index],
            lengths=self.lengths[index],
            finished=self.finished[index],
        )


@dataclass(frozen=True)
class EngineState:
    """What every engine's state holds; an engine subclasses it to add its own fields.

    Attributes:
        num_prompts: D.
        num_samples: n (rows per prompt).
        config: the sampling config; T = ``config.max_new_tokens``.
        eos_token_ids: tokens that end a row (empty, or ``config.ignore_eos``: none).
        pad_token_id: the token of a finished row.
        base_logprobs: whether log p is computed.
        decoded: :class:`Decoded`, the B = D·n rows so far (row ``j*n + i``).
        lease: used by the engine to refuse a state advanced twice.
    """

    num_prompts: int
    num_samples: int
    config: SamplingConfig
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    base_logprobs: bool
    decoded: Decoded
    lease: Lease = dataclasses.field(default_factory=Lease, compare=False)

    @property
    def position(self) -> int:
        """t, tokens decoded so far (the same for every row)."""
        return self.decoded.tokens.shape[1]

    @property
    def max_new_tokens(self) -> int:
        """T."""
        return self.config.max_new_tokens

    @property
    def use_eos(self) -> bool:
        """Whether an EOS token ends a row."""
        return not self.config.ignore_eos and len(self.eos_token_ids) > 0

    @property
    def finished(self) -> torch.Tensor:
        """(B,) bool: the row emitted EOS or has T tokens."""
        if self.position >= self.max_new_tokens:
            return torch.ones_like(self.decoded.finished)
        return self.decoded.finished

    def successor(self, **changes: Any) -> EngineState:
        """A copy with ``changes`` and a fresh lease (after consuming this one)."""
        self.lease.consume()
        return dataclasses.replace(self, lease=Lease(), **changes)


class StepRecorder:
    r"""One advance's b tokens of B rows, drawn step by step by the decoding contract.

    The part of an advance that every engine running its decode steps from Python shares:
    :meth:`draw` samples step s from the step's logits (B, V) by
    :func:`~ctrlalign.dynamics.decoding.sample_with_logprobs` with the uniforms (B,), writes
    pad and log-probabilities 0 for rows that had already finished, and marks a row finished
    when it emits an EOS; :meth:`step` returns the :class:`~ctrlalign.dynamics.base.Step`
    (tokens, logprobs, base_logprobs, alive, each (B, b)). An engine's loop is::

        rec = StepRecorder(state, finished, b)
        for s in range(b):
            if rec.all_finished():
                break                      # the rest is padding
            tok = rec.draw(s, logits, base_logits, u[:, s])
            if rec.all_finished() or t0 + s == T - 1:
                continue                   # no next pre-logit needed
            ...                            # the model's forward pass on tok → next logits

    Args:
        state: the state being advanced (its config, EOS and pad tokens, ``base_logprobs``).
        finished: (B,) bool, the rows finished before this advance (not modified).
        b: tokens in this advance.
    """

    def __init__(self, state: EngineState, finished: torch.Tensor, b: int) -> None:
        B, device = finished.shape[0], finished.device
        self.config = state.config
        self.pad = state.pad_token_id
        self.use_eos = state.use_eos
        self.eos = torch.as_tensor(state.eos_token_ids, dtype=torch.long, device=device)
        self.finished = finished.clone()
        self.tokens = torch.full((B, b), self.pad, dtype=torch.long, device=device)
        self.logprobs = torch.zeros(B, b, dtype=torch.float32, device=device)
        self.base_logprobs = torch.zeros(B, b, dtype=torch.float32, device=device) if state.base_logprobs else None
        self.alive = torch.zeros(B, b, dtype=torch.bool, device=device)

    def all_finished(self) -> bool:
        """Whether EOS ends rows and every row has ended."""
        return self.use_eos and bool(self.finished.all())

    def draw(self, s: int, logits: torch.Tensor, base_logits: torch.Tensor | None,
             uniforms: torch.Tensor) -> torch.Tensor:
        """Token s of every row from the controlled logits (B, V) and the base logits (B, V)
        (``logits`` itself when uncontrolled, so log p reuses log q; None without base
        log-probabilities), with uniforms (B,). Returns the tokens (B,) long."""
        tok, lp, blp = sample_with_logprobs(logits, uniforms, self.config, base_logits=base_logits)
        alive = ~self.finished
        if self.use_eos:
            tok = torch.where(alive, tok, self.pad)
            lp = torch.where(alive, lp, 0.0)
            if blp is not None:
                blp = torch.where(alive, blp, 0.0)
        self.tokens[:, s] = tok
        self.logprobs[:, s] = lp
        if self.base_logprobs is not None:
            self.base_logprobs[:, s] = blp
        self.alive[:, s] = alive
        if self.use_eos:
            self.finished |= torch.isin(tok, self.eos)
        return tok

    def step(self) -> Step:
        """The :class:`~ctrlalign.dynamics.base.Step` of the b tokens (B, b)."""
        return Step(tokens=self.tokens, logprobs=self.logprobs, base_logprobs=self.base_logprobs, alive=self.alive)


class Engine(ABC):
    """A rollout engine. Subclasses override :meth:`prefill`, :meth:`start`, :meth:`advance`
    and :meth:`select` (all abstract) and nothing else."""

    @abstractmethod
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """Run D prompts once; return the prefix every later :meth:`start` begins from.

        Args:
            input_ids: (D, L) long token ids, left-padded.
            attention_mask: (D, L), 1 at real tokens and 0 on the left padding; every row has at
                least one real token.

        Returns:
            The engine's prefix object (KV cache of the prompts and z_1 (D, d)); read only by
            this engine, never modified by it.
        """

    @abstractmethod
    def start(
        self,
        prefix: Any,
        num_samples: int,
        config: SamplingConfig,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        base_logprobs: bool,
    ) -> EngineState:
        """B = D·n rows at t = 0, row ``j*n + i`` continuing prompt j of ``prefix`` (not modified).

        Args:
            prefix: what :meth:`prefill` returned.
            num_samples: n.
            config: :class:`~ctrlalign.dynamics.decoding.SamplingConfig`; T = ``max_new_tokens``.
            eos_token_ids: tokens that end a row (empty: none; ignored with ``config.ignore_eos``).
            pad_token_id: written after a row's end.
            base_logprobs: also compute log p, :math:`\\log\\mathrm{softmax}(g(Wz_t+b))_{y_t}`.
        """

    @abstractmethod
    def advance(
        self, state: EngineState, controls: torch.Tensor | None, uniforms: torch.Tensor
    ) -> tuple[EngineState, Step]:
        """Decode b = ``uniforms.shape[2]`` more tokens for every row (consumes ``state``).

        Args:
            state: from :meth:`start`, :meth:`advance` or :meth:`select`, with t + b ≤ T.
            controls: V for these b tokens, (D, n, b, d), in the model's dtype and device, or
                None (no control). May be a stride-0 view; need not be contiguous.
            uniforms: U, (D, n, b) in [0, 1).

        Returns:
            ``(state at t + b, step)`` with the step's tokens, logprobs (log q), base_logprobs
            (log p, or None) and alive, each (B, b).
        """

    @abstractmethod
    def select(self, state: EngineState, rows: torch.Tensor) -> EngineState:
        """New rows continuing the named old rows (consumes ``state``).

        Args:
            state: a state of D prompts × n rows.
            rows: (D, n') long in 0..n−1: new row ``j*n' + i`` continues old row
                ``j*n + rows[j, i]`` (its KV cache, next pre-logit and decoded tokens).

        Returns:
            The state of D × n' rows at the same t.
        """

    def decode(
        self,
        prefix: Any,
        controls: torch.Tensor | None,
        uniforms: torch.Tensor,
        config: SamplingConfig,
        *,
        num_samples: int,
        eos_token_ids: int | Sequence[int] | None,
        pad_token_id: int,
        base_logprobs: bool = False,
    ) -> DecodeResult:
        """A whole rollout: :meth:`start`, :meth:`advance` τ tokens under ``controls``
        (D, n, τ, d) (when given), then the other T − τ uncontrolled, with uniforms (D, n, T).

        Returns:
            :class:`~ctrlalign.dynamics.decoding.DecodeResult` of B = D·n rows: tokens (B, T),
            lengths (B,), logprobs (B, T), base_logprobs (B, T) or None.
        """
        state = self.start(prefix, num_samples, config, eos_token_ids=eos_list(eos_token_ids),
                           pad_token_id=pad_token_id, base_logprobs=base_logprobs)
        d = self.hidden_size
        tau = check_decode_shapes(state.num_prompts, int(num_samples), d, controls, uniforms, config)
        if tau > 0:
            state, _ = self.advance(state, controls, uniforms[:, :, :tau])
        if tau < config.max_new_tokens:
            state, _ = self.advance(state, None, uniforms[:, :, tau:])
        out = state.decoded
        return DecodeResult(out.tokens, out.lengths, out.logprobs, out.base_logprobs)

    #: d, the pre-logit dimension (set by the engine).
    hidden_size: int


def check_decode_shapes(
    num_prompts: int,
    num_samples: int,
    hidden_size: int,
    controls: torch.Tensor | None,
    uniforms: torch.Tensor,
    config: SamplingConfig,
) -> int:
    """Check a whole rollout's controls (D, n, τ, d) and uniforms (D, n, T); return τ (0 when
    ``controls`` is None).

    Raises:
        ValueError: naming the shape received and the one expected.
    """
    D, n, T = num_prompts, int(num_samples), config.max_new_tokens
    if tuple(uniforms.shape) != (D, n, T):
        raise ValueError(f"uniforms must have shape (D, n, T) = {(D, n, T)}, got {tuple(uniforms.shape)}")
    if controls is None:
        return 0
    if controls.dim() != 4 or tuple(controls.shape[:2]) != (D, n) or controls.shape[3] != hidden_size:
        raise ValueError(
            f"controls must have shape (D={D}, n={n}, τ, d={hidden_size}), got {tuple(controls.shape)}"
        )
    tau = controls.shape[2]
    if tau > T:
        raise ValueError(f"controls: horizon τ={tau} exceeds max_new_tokens T={T}")
    return tau


def check_advance_inputs(state: EngineState, hidden_size: int, controls: torch.Tensor | None,
                         uniforms: torch.Tensor) -> int:
    """Check an advance's uniforms (D, n, b) and controls (D, n, b, d) against the state; return b.

    Raises:
        ValueError: naming the shape received and the one expected, or t + b > T.
    """
    D, n = state.num_prompts, state.num_samples
    if uniforms.dim() != 3 or tuple(uniforms.shape[:2]) != (D, n):
        raise ValueError(f"uniforms must have shape (D={D}, n={n}, b), got {tuple(uniforms.shape)}")
    b = uniforms.shape[2]
    if state.position + b > state.max_new_tokens:
        raise ValueError(
            f"cannot advance {b} tokens at t={state.position}: max_new_tokens T={state.max_new_tokens}"
        )
    if controls is not None and tuple(controls.shape) != (D, n, b, hidden_size):
        raise ValueError(
            f"controls must have shape (D, n, b, d) = {(D, n, b, hidden_size)}, got {tuple(controls.shape)}"
        )
    return b


def check_rows(rows: torch.Tensor, num_prompts: int, num_samples: int) -> torch.Tensor:
    """Validate ``rows`` (D, n') of indices in 0..n−1 and return the flat old-row index
    (D·n',) = ``j*n + rows[j, i]``.

    Raises:
        ValueError: naming the shape or the out-of-range index.
    """
    rows = torch.as_tensor(rows)
    if rows.dim() != 2 or rows.shape[0] != num_prompts or rows.shape[1] < 1 or rows.dtype not in (
            torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"rows must be an integer tensor (D={num_prompts}, n' >= 1), got "
                         f"{rows.dtype} {tuple(rows.shape)}")
    if bool(((rows < 0) | (rows >= num_samples)).any()):
        raise ValueError(f"rows must index the n={num_samples} rows of each prompt (0..{num_samples - 1}), "
                         f"got values in [{int(rows.min())}, {int(rows.max())}]")
    offsets = torch.arange(num_prompts, device=rows.device).unsqueeze(1) * num_samples
    return (rows.long() + offsets).flatten()


def eos_list(eos_token_ids: int | Sequence[int] | torch.Tensor | None) -> list[int]:
    """Token ids as a list of ints: one id, several (a sequence or a tensor of any shape), or
    None (none)."""
    if eos_token_ids is None:
        return []
    if isinstance(eos_token_ids, torch.Tensor):
        return [int(e) for e in eos_token_ids.flatten().tolist()]
    if isinstance(eos_token_ids, Iterable):
        return [int(e) for e in eos_token_ids]
    return [int(eos_token_ids)]
