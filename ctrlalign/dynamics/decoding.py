r"""The decoding contract shared by every rollout engine (eager CPU/GPU and the static GPU one).

A rollout of D prompts × n samples decodes B = D·n rows (row index ``j*n + i`` is sample i of
prompt j). At decode step t = 1..T (T = ``max_new_tokens``), with pre-logit :math:`z_t`:

* controlled logits :math:`\ell_t = W(z_t + v_t) + b` for t ≤ τ, :math:`W z_t + b` after;
* base logits :math:`\ell^0_t = W z_t + b` (b = 0 when the head has no bias);
* the token is drawn by :func:`sample_with_logprobs` (tokens identical to
  :func:`sample_tokens`) from :math:`\ell_t` with the row's pre-drawn uniform :math:`u_{t}`
  by inverse-CDF sampling in vocabulary order, computed as a *blocked two-level* inverse CDF:
  the vocabulary is cut into blocks, the uniform picks a block from the (B, #blocks) prefix
  sums of the block masses, then a token inside that block from the block's own prefix sums.
  No (B, V) cumulative sum is formed, and the token always has positive probability
  (a zero-probability or padded token is never returned, whatever the uniform in [0, 1)).
  The uniforms (D, n, T) are drawn before
  decoding from each prompt's own ``torch.Generator``: this makes a prompt's tokens
  independent of its batch neighbours, needs one random number per token, and lets a
  captured (CUDA-graph) decode step consume them without touching a generator.
* ``logprobs`` and ``base_logprobs`` are the log-softmax at temperature 1 of the controlled
  and base logits, read at the chosen token — independent of any top-k/top-p filter, so that
  their difference is the per-token log-ratio used for KL diagnostics. At temperature 1
  without filters they come from the sampler's own reductions (no extra pass).
* After a row emits EOS, its later tokens are ``pad_token_id`` with log-probabilities 0;
  ``lengths`` counts generated tokens including the EOS. With ``ignore_eos`` every row runs
  all T steps (fixed-length generation, for benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._checks import ConfigError, check_int, check_interval, check_positive

__all__ = ["DecodeResult", "SamplingConfig", "sample_tokens", "sample_with_logprobs"]


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


# --------------------------------------------------------------------------------------------
# the sampler
#
# Everything below is torch.compile(fullgraph=True, dynamic=False) and CUDA-graph friendly:
# Python branches only on config fields and static shapes, no .item(), fixed-shape ops only.

_BLOCK_MIN, _BLOCK_TARGET, _BLOCK_MAX = 64, 1024, 2048


_BLOCK_SIZES: dict[int, int] = {}  # V → bs (the search below is a Python loop; run it once per V)


def _block_size(V: int) -> int:
    """The block size bs of the two-level inverse CDF for a vocabulary of V tokens.

    * V < 64: bs = V (a single block);
    * otherwise the divisor of V in [64, 2048] closest to 1024 (ties: the larger one), e.g.
      1002 for Llama-3's V = 128,256 (128 blocks), 1733 for GPT-2's 50,257, 1031 for V = 1031;
    * if V has no divisor in [64, 2048] (e.g. a prime V > 2048): bs = 1024, and the sampler
      pads the logits with -inf up to the next multiple of 1024.
    """
    bs = _BLOCK_SIZES.get(V)
    if bs is None:
        bs = _BLOCK_SIZES[V] = _search_block_size(V)
    return bs


def _search_block_size(V: int) -> int:
    if V < _BLOCK_MIN:
        return V
    best = None
    for d in range(_BLOCK_MIN, min(V, _BLOCK_MAX) + 1):
        if V % d == 0 and (best is None or abs(d - _BLOCK_TARGET) <= abs(best - _BLOCK_TARGET)):
            best = d
    return _BLOCK_TARGET if best is None else best


def _finite_or_zero(m: torch.Tensor) -> torch.Tensor:
    # a row of -inf only has max -inf; shifting by 0 instead keeps exp(x - m) = 0, not NaN
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\sum_j e^{x_j}` per row: (B, V) float32 → (B,), by one max and one sum-exp
    reduction (the same two the sampler makes). A row of -inf gives -inf."""
    m = _finite_or_zero(x.amax(dim=-1, keepdim=True))
    return (m + torch.log(torch.exp(x - m).sum(dim=-1, keepdim=True))).squeeze(-1)


def _scale_and_filter(x: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """x / temperature (skipped at temperature 1), then the top-k and top-p filters
    (filtered tokens get -inf). x: (B, V) float32."""
    if config.temperature != 1.0:
        x = x / config.temperature
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
    return x


def _is_plain(config: SamplingConfig, V: int) -> bool:
    """True when the sampled distribution is softmax(logits) itself (temperature 1, no
    active filter), so the sampler's reductions give the temperature-1 log-probabilities."""
    return (
        config.temperature == 1.0
        and (config.top_k is None or config.top_k >= V)
        and (config.top_p is None or config.top_p >= 1.0)
    )


def _below(x: torch.Tensor) -> torch.Tensor:
    """The largest float32 strictly below x (x > 0); 0 for x = 0."""
    return torch.nextafter(x, torch.zeros_like(x))


def _inverse_cdf(
    x: torch.Tensor, uniforms: torch.Tensor, block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Blocked two-level inverse-CDF sampling from softmax(x), and log softmax(x) at the token.

    x: (B, V) float32, every row with at least one finite entry; uniforms: (B,) in [0, 1);
    block: the block size bs (default :func:`_block_size` (V)); if bs does not divide V, x is
    padded with -inf to :math:`V_p = \lceil V/bs\rceil\,bs`. With nb = V_p / bs blocks and
    :math:`m = \max_j x_j` (B,):

    .. math::
        S_b = \sum_{j\in\text{block } b} e^{x_j - m}\ \ (B, nb), \qquad
        C_b = \sum_{b'\le b} S_{b'}, \qquad Z = C_{nb-1}, \qquad
        t = \min(u Z,\ Z^-)

    (:math:`Z^-` the float below Z). Level 1: :math:`b^* = \#\{b : C_b\le t\}` (the first
    block with :math:`C_b > t`, i.e. ``searchsorted(C, t, right=True)``). Level 2, inside
    block b* only (B, bs): :math:`e_i = e^{x_{b^*bs+i}-m}`, :math:`c = \mathrm{cumsum}(e)`,
    :math:`t' = \max(t - C_{b^*-1}, 0)` (:math:`C_{-1} = 0`),
    :math:`t'' = \min(t', c_{bs-1}^-)`, :math:`j = \#\{i : c_i \le t''\}`; the token is
    :math:`b^* bs + j`. The log-probability is :math:`(x_{tok} - m) - \log Z`.

    The (B, V) work is two reductions (max, block sums of exp); C is (B, nb), c is (B, bs).

    **Never a zero-probability token.** Float addition of non-negative numbers is monotone,
    so C and c are non-decreasing, and counting entries ≤ t equals ``searchsorted(right=True)``.
    Z ≥ e⁰ = 1 > 0, so 0 ≤ t < Z = C_{nb-1}: b* ≤ nb − 1 and
    :math:`C_{b^*} > t \ge C_{b^*-1}` (or :math:`\ge 0` for b* = 0); hence
    :math:`C_{b^*} > C_{b^*-1}`, which is impossible when :math:`S_{b^*} = 0`
    (:math:`\mathrm{fl}(C + 0) = C`): block b* holds a token with :math:`e^{x-m} > 0`, so
    :math:`c_{bs-1} > 0`. Then likewise :math:`0 \le t'' < c_{bs-1}` gives j ≤ bs − 1 and
    :math:`c_j > t'' \ge c_{j-1}`, so :math:`e_j > 0`: the token's logit is finite, and it is
    not a padded (-inf) position. If the recomputed block exps ever disagreed with the
    reduction's about underflow (c all 0 although S_b* > 0 — possible only with a
    flush-to-zero exp in a fused kernel), j falls back to the block's argmax, which is finite.

    Returns:
        ``(tokens (B,) long, log softmax(x) at the token (B,) float32)``.
    """
    B, V = x.shape
    bs = _block_size(V) if block is None else block
    nb = -(-V // bs)
    if nb * bs != V:
        x = F.pad(x, (0, nb * bs - V), value=float("-inf"))
    xv = x.view(B, nb, bs)
    m = _finite_or_zero(x.amax(dim=-1, keepdim=True))  # (B, 1)
    S = torch.exp(xv - m.unsqueeze(-1)).sum(dim=-1)  # (B, nb) block masses
    C = S.cumsum(dim=-1)  # (B, nb), small
    Z = C[:, -1:]  # (B, 1)
    t = torch.minimum(uniforms.to(torch.float32).unsqueeze(-1) * Z, _below(Z))
    b = (C <= t).sum(dim=-1, keepdim=True).clamp(max=nb - 1)  # (B, 1)
    c_before = torch.where(b > 0, C.gather(-1, (b - 1).clamp(min=0)), torch.zeros_like(t))
    t1 = (t - c_before).clamp(min=0.0)
    xb = xv.gather(1, b.unsqueeze(-1).expand(B, 1, bs)).squeeze(1)  # (B, bs)
    c = torch.exp(xb - m).cumsum(dim=-1)  # (B, bs)
    t2 = torch.minimum(t1, _below(c[:, -1:]))
    j = (c <= t2).sum(dim=-1, keepdim=True)  # (B, 1)
    j = torch.where(j < bs, j, xb.argmax(dim=-1, keepdim=True))
    tok = b * bs + j
    lp = (xb.gather(-1, j) - m) - torch.log(Z)
    return tok.squeeze(-1), lp.squeeze(-1)


def _token_logprob(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(x)[token] per row: (B, V) float32, (B,) → (B,) float32."""
    return x.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - _logsumexp_rows(x)


def sample_with_logprobs(
    logits: torch.Tensor,
    uniforms: torch.Tensor,
    config: SamplingConfig,
    base_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    r"""Draw one token per row, and read the temperature-1 log-probabilities at it.

    With :math:`x = \mathrm{filter}(\mathrm{float32}(\ell)/\text{temperature})` (top-k keeps
    entries ≥ the k-th largest; top-p drops a token when the sorted mass strictly before it
    reaches p), the token is the inverse-CDF draw from softmax(x) with the row's uniform u,
    in vocabulary order: the first j with :math:`\sum_{i\le j} p_i > u` up to float32
    rounding, computed blockwise without a (B, V) cumsum (see :func:`_inverse_cdf`); it always
    has :math:`p_j > 0`. Greedy decoding takes the argmax.

    ``logprobs`` is :math:`\log\mathrm{softmax}(\ell)_{tok}` at temperature 1 and unfiltered,
    whatever the config: when the config is temperature 1 without active filters it comes
    from the sampler's own max and sum-exp reductions, otherwise from one more max/sum-exp
    pass over float32(ℓ). ``base_logprobs`` is the same for ``base_logits`` (reusing
    ``logprobs`` when ``base_logits is logits``).

    Compiles with ``torch.compile(fullgraph=True, dynamic=False)`` and is CUDA-graph safe.

    Args:
        logits: (B, V) logits ℓ of one decode step, any float dtype; each row needs at least
            one finite entry.
        uniforms: (B,) values in [0, 1).
        config: :class:`SamplingConfig`.
        base_logits: (B, V) base logits or None.

    Returns:
        ``(tokens (B,) long, logprobs (B,) float32, base_logprobs (B,) float32 or None)``.
    """
    xf = logits.float()
    if config.greedy:
        tok = logits.argmax(dim=-1)
        lp = _token_logprob(xf, tok)
    else:
        tok, lp_x = _inverse_cdf(_scale_and_filter(xf, config), uniforms)
        lp = lp_x if _is_plain(config, xf.shape[-1]) else _token_logprob(xf, tok)
    if base_logits is None:
        blp = None
    elif base_logits is logits:
        blp = lp
    else:
        blp = _token_logprob(base_logits.float(), tok)
    return tok, lp, blp


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    r"""Draw one token per row by inverse-CDF sampling: the tokens of
    :func:`sample_with_logprobs`, without the log-probabilities.

    The token is the first index j (vocabulary order) whose cumulative probability under
    ``softmax(filter(logits / temperature))`` exceeds :math:`u` times the total, computed in
    float32 by the blocked two-level inverse CDF; it always has :math:`p_j > 0`. Greedy
    decoding returns the argmax.

    Args:
        logits: (B, V) logits of one decode step.
        uniforms: (B,) values in [0, 1).
        config: :class:`SamplingConfig`.

    Returns:
        (B,) long token ids.
    """
    if config.greedy:
        return logits.argmax(dim=-1)
    return _inverse_cdf(_scale_and_filter(logits.float(), config), uniforms)[0]
