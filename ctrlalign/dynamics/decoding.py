r"""The decoding contract shared by every rollout engine (eager CPU/GPU and the static GPU one).

A rollout of D prompts × n samples decodes B = D·n rows (row index ``j*n + i`` is sample i of
prompt j). At decode step t = 1..T (T = ``max_new_tokens``), with pre-logit :math:`z_t`:

* controlled logits :math:`\ell_t = W(z_t + v_t) + b` for t ≤ τ, :math:`W z_t + b` after;
* base logits :math:`\ell^0_t = W z_t + b` (b = 0 when the head has no bias);
* the token is drawn by :func:`sample_tokens` from :math:`\ell_t` with the row's pre-drawn
  uniform :math:`u_{t}` (inverse-CDF sampling). The uniforms (D, n, T) are drawn before
  decoding from each prompt's own ``torch.Generator``: this makes a prompt's tokens
  independent of its batch neighbours, needs one random number per token, and lets a
  captured (CUDA-graph) decode step consume them without touching a generator.
* ``logprobs`` and ``base_logprobs`` are the log-softmax at temperature 1 of the controlled
  and base logits, read at the chosen token — independent of any top-k/top-p filter, so that
  their difference is the per-token log-ratio used for KL diagnostics.
* After a row emits EOS, its later tokens are ``pad_token_id`` with log-probabilities 0;
  ``lengths`` counts generated tokens including the EOS. With ``ignore_eos`` every row runs
  all T steps (fixed-length generation, for benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .._checks import ConfigError, check_int, check_interval, check_positive

__all__ = ["SamplingConfig", "DecodeResult", "sample_tokens"]


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn from the (controlled) logits.

    Attributes:
        max_new_tokens: T >= 1, tokens generated per sample.
        temperature: > 0; 1.0 is the method's dynamics (default).
        top_k: keep only the k most likely tokens (None: all).
        top_p: nucleus sampling mass in (0, 1] (None: all).
        greedy: take the argmax (deterministic; ignores temperature, top_k, top_p).
        ignore_eos: keep generating after EOS (fixed-length generation).
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        check_positive("temperature", self.temperature)
        if self.top_k is not None:
            check_int("top_k", self.top_k, minimum=1)
        if self.top_p is not None:
            p = check_interval("top_p", self.top_p, 0.0, 1.0)
            if p == 0.0:
                raise ConfigError("top_p must be in (0, 1], got 0")


class DecodeResult(NamedTuple):
    """What an engine returns for B = D·n rows.

    Attributes:
        tokens: (B, T) long; ``pad_token_id`` after EOS.
        lengths: (B,) long, generated tokens including EOS.
        logprobs: (B, T) float32, controlled head at temperature 1, 0 after the end.
        base_logprobs: (B, T) float32, uncontrolled head, 0 after the end (None if not asked).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    logprobs: torch.Tensor
    base_logprobs: torch.Tensor | None


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    r"""Draw one token per row by inverse-CDF sampling.

    ``probs = softmax(filter(logits / temperature))`` in float32; the token is the first index
    j with :math:`\sum_{i\le j} p_i > \min(u\cdot\sum_i p_i,\ \text{the float below }\sum_i p_i)`
    (vocabulary order), which always has :math:`p_j > 0`. Greedy decoding returns the argmax.

    Args:
        logits: (B, V) logits of one decode step.
        uniforms: (B,) values in [0, 1).
        config: :class:`SamplingConfig`.

    Returns:
        (B,) long token ids.
    """
    if config.greedy:
        return logits.argmax(dim=-1)
    x = logits.float() / config.temperature
    if config.top_k is not None and config.top_k < x.shape[-1]:
        kth = torch.topk(x, config.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        sp = torch.softmax(sorted_x, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p
        drop_sorted = (sp.cumsum(-1) - sp) >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    cdf = probs.cumsum(dim=-1)
    total = cdf[..., -1:]
    # Keep the target strictly below the total mass: then the first j with cdf_j > target has
    # cdf_j > cdf_{j-1}, i.e. p_j > 0 — a zero-probability token is never returned, without an
    # extra pass over the vocabulary.
    target = torch.minimum(uniforms.to(cdf.dtype).unsqueeze(-1) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)
