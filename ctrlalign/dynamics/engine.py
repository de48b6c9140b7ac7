r"""The rollout-engine protocol: what :class:`~ctrlalign.dynamics.causal_lm.CausalLM` calls.

An engine turns D prompts into B = D·n controlled samples of T new tokens, in two calls:

* :meth:`Engine.prefill` — once per run: input ids (D, L) left-padded, attention mask (D, L)
  → an engine-specific *prefix* (its KV cache of the prompts and the pre-logits
  :math:`z_1` (D, d) after each prompt's last token). Only the engine that made a prefix reads
  it; it is never modified, so any number of decodes may reuse it.
* :meth:`Engine.decode` — per rollout: prefix, controls V (D, n, τ, d) or None, uniforms
  U (D, n, T) → :class:`~ctrlalign.dynamics.decoding.DecodeResult` whose rows are
  ``j*n + i`` (sample i of prompt j), following the decoding contract of
  :mod:`ctrlalign.dynamics.decoding`: at step t = 1..T

  .. math::
      y_t = \mathrm{InvCDF}\big(\mathrm{softmax}(g(W(z_t + v_t) + b)),\ u_t\big)\ (t\le\tau),
      \qquad y_t = \mathrm{InvCDF}\big(\mathrm{softmax}(g(W z_t + b)),\ u_t\big)\ (t>\tau).

To write an engine, subclass :class:`Engine` and override exactly :meth:`~Engine.prefill` and
:meth:`~Engine.decode`; :func:`check_decode_inputs` validates the decode arguments the same
way for every engine. The two built in are
:class:`~ctrlalign.dynamics.causal_lm.EagerEngine` (the ``transformers`` module with a
dynamic KV cache; any architecture, CPU or GPU) and
:class:`~ctrlalign.dynamics.static_engine.StaticEngine` (its own static-cache forward pass
with CUDA-graph decode steps; Llama/Qwen2/Mistral).

Shapes: D prompts, n samples, B = D·n rows, L padded prompt length, T new tokens, τ ≤ T horizon,
d hidden size, V vocabulary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from .decoding import DecodeResult, SamplingConfig

__all__ = ["Engine", "check_decode_inputs"]


class Engine(ABC):
    """A rollout engine: prefill D prompts once, then decode D·n samples from them many times.

    Subclasses override :meth:`prefill` and :meth:`decode` (both abstract) and nothing else.
    """

    @abstractmethod
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """Run D prompts once; return the prefix every later :meth:`decode` starts from.

        Args:
            input_ids: (D, L) long token ids, left-padded.
            attention_mask: (D, L), 1 at real tokens and 0 on the left padding; every row has at
                least one real token.

        Returns:
            The engine's prefix object (KV cache of the prompts and z_1 (D, d)); read only by
            this engine, never modified by it.
        """

    @abstractmethod
    def decode(
        self,
        prefix: Any,
        controls: torch.Tensor | None,
        uniforms: torch.Tensor,
        config: SamplingConfig,
        *,
        num_samples: int,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        base_logprobs: bool,
    ) -> DecodeResult:
        r"""Decode n samples of each of the D prompts of ``prefix``.

        Args:
            prefix: what :meth:`prefill` returned (not modified).
            controls: V, (D, n, τ, d) with τ ≤ T, in the model's dtype and device, or None (no
                control). May be a view with stride 0 along τ (a constant control
                ``theta.unsqueeze(2).expand(D, n, τ, d)``); an engine must not need it
                contiguous.
            uniforms: U, (D, n, T) in [0, 1), prompt j's block drawn from prompt j's generator.
            config: :class:`~ctrlalign.dynamics.decoding.SamplingConfig`; T =
                ``config.max_new_tokens``.
            num_samples: n.
            eos_token_ids: tokens that end a row (empty: none; ignored with
                ``config.ignore_eos``).
            pad_token_id: written after a row's EOS.
            base_logprobs: also return the uncontrolled head's log-probabilities
                :math:`\log\mathrm{softmax}(g(Wz_t+b))_{y_t}`.

        Returns:
            :class:`~ctrlalign.dynamics.decoding.DecodeResult` with B = D·n rows (row
            ``j*n + i``): tokens (B, T), lengths (B,), logprobs (B, T), base_logprobs (B, T) or
            None.
        """


def check_decode_inputs(
    num_prompts: int,
    num_samples: int,
    hidden_size: int,
    controls: torch.Tensor | None,
    uniforms: torch.Tensor,
    config: SamplingConfig,
) -> int:
    """Check the shapes of a decode's controls (D, n, τ, d) and uniforms (D, n, T); return τ.

    τ = 0 when ``controls`` is None.

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


def eos_list(eos_token_ids: int | Sequence[int] | None) -> list[int]:
    """EOS ids as a list: one id, several, or None (none)."""
    if eos_token_ids is None:
        return []
    if isinstance(eos_token_ids, int):
        return [int(eos_token_ids)]
    return [int(e) for e in eos_token_ids]
