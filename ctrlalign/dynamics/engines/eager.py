r"""The eager engine: the ``transformers`` module itself, with its dynamic KV cache.

Implements the stepwise protocol of :mod:`ctrlalign.dynamics.engines.protocol`; see
:class:`EagerEngine`.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..._checks import ConfigError
from ..base import Step
from ..decoding import SamplingConfig
from ..head import OutputHead, backbone_of
from .protocol import (
    Decoded,
    Engine,
    EngineState,
    StepRecorder,
    check_advance_inputs,
    check_rows,
    eos_list,
)

__all__ = ["EagerBlock", "EagerEngine", "EagerState", "Prefix", "cache_argument"]


def cache_argument(module: Any) -> str:
    """The keyword under which ``module.forward`` takes (and its output returns) the KV cache:
    ``"cache"`` (transformers ≥ 5.24, where ``past_key_values`` is deprecated) or
    ``"past_key_values"`` (earlier versions)."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class Prefix(NamedTuple):
    """A block of D' prompts prefilled together by :class:`EagerEngine` (left-padded to L).

    Attributes:
        cache: the ``transformers`` KV cache of the D' prompts (D' rows, length L). Never
            modified (:meth:`EagerEngine.start` extends a copy).
        hidden: z_1, (D', d): the pre-logit after the last prompt token.
        attention_mask: (D', L) long, 0 on left padding.
        next_position: (D',) long, the position id of the first generated token (= the number
            of real prompt tokens).
    """

    cache: Any
    hidden: torch.Tensor
    attention_mask: torch.Tensor
    next_position: torch.Tensor

    @property
    def num_prompts(self) -> int:
        """D', prompts in this block."""
        return self.hidden.shape[0]


@dataclass(frozen=True)
class EagerBlock:
    """The decode state of one prefix block's B' = D'·n rows.

    Attributes:
        num_prompts: D'.
        cache: the rows' KV cache (prompt and decoded tokens); extended in place by advance.
        hidden: z_{t+1}, (B', d), the pre-logit the next token is drawn from.
        attention_mask: (B', L + T) long: the prompt's mask, then ones.
        next_position: (B',) long, the position id of token t = 0.
        prompt_length: L, this block's padded prompt length.
    """

    num_prompts: int
    cache: Any
    hidden: torch.Tensor
    attention_mask: torch.Tensor
    next_position: torch.Tensor
    prompt_length: int


@dataclass(frozen=True)
class EagerState(EngineState):
    """:class:`~ctrlalign.dynamics.engines.protocol.EngineState` plus the blocks' caches.

    Attributes:
        blocks: one :class:`EagerBlock` per prefix block (one, or D with ``batch_invariant``).
    """

    blocks: tuple[EagerBlock, ...] = ()


class EagerEngine(Engine):
    r"""The reference engine: the ``transformers`` module itself with a dynamic KV cache.

    Any architecture :class:`~ctrlalign.dynamics.causal_lm.CausalLM` accepts, on any device.
    :meth:`prefill` returns a tuple of :class:`Prefix` blocks; :meth:`start` copies each block's
    cache to D'·n rows (:class:`EagerState`); :meth:`advance` decodes token by token: from
    pre-logits z_t (B', d) it forms the controlled logits :math:`g(W(z_t+v_t)+b)` when controls
    are given and :math:`g(Wz_t+b)` otherwise, and the base logits
    :math:`g(Wz_t+b)`. For t ≤ τ the two are one head matmul over the stacked rows
    [z+v; z] (2B', d), so W is read once; with ``base_logprobs=False`` the base logits are not
    computed. Only one step's logits (≤ 2B' × V) exist at a time. A control that is constant
    in time may be a stride-0 view (D, n, b, d): rows are taken as (B', b, d) views and one
    (B', d) slice per step, never a copy of the whole tensor. The row's KV cache holds its
    prompt too (``transformers`` caches are one tensor per layer), so :meth:`select` gathers
    the prompt part with the rest; the static engine avoids that copy.

    Batching, and what it costs (``batch_invariant``):

    * ``False``: one block of all D prompts, left-padded to the longest, decoded as
      B = D·n rows at once. Fast, but a prompt's floating-point results depend on its batch:
      the padding changes the attention reductions' length and order, and the row count M of
      every GEMM can change the BLAS kernel (one-threaded MKL sgemm on AVX-512 rounds a row
      differently for M ≤ 3 than for M ≥ 4). Tokens agree with the prompt decoded alone *in distribution* and almost
      always exactly; logprobs agree to rounding.
    * ``True`` (default): D blocks of one prompt each, unpadded, prefilled and decoded one after the
      other with n rows (each advance runs the blocks in turn). Prompt j's computation is then the very same sequence of kernels on
      the same shapes and values whether it is decoded alone or in any batch at any position,
      so its tokens, logprobs and base logprobs are **bitwise** identical, for any n, dtype
      and thread count, wherever kernels are deterministic for equal inputs and shapes (the
      CPU). It costs ×0.54 tokens/s at n = 8 and ×0.86 at n = 32: the weights are read once
      per prompt and step instead of once per step, by GEMMs of n rows (SmolLM2-135M, float32,
      one thread, D = 4, T = 32: 141.4 → 76.1 and 154.2 → 131.8 tok/s,
      ``benchmarks/cpu_batch_invariance.py speed``, loaded machine; BENCHMARKS.md).

    A cheaper exact scheme was measured and not adopted: batched GEMMs with attention run per
    prompt on its unpadded keys cost 13% at the setting above and are bitwise with one thread,
    but not with two — MKL's sgemm rounds a row differently depending on the row count M when
    multi-threaded (with 2 threads, M ∈ {1, 2, 3, 5, 6, 7, 9, 10, 11} differ from larger M),
    so it would promise less than this one. Running the prompts' passes interleaved module by
    module (each pass unchanged, so still bitwise) to share weight reads was not measurably faster
    end to end on a loaded 2-core CPU (BENCHMARKS.md).

    Args:
        model: the ``transformers`` causal LM (its ``base_model`` is run).
        batch_invariant: decode prompt by prompt (see above); the default, as for the command
            line and configs, so that the same prompts and seed give the same samples everywhere.
    """

    def __init__(self, model: Any, *, batch_invariant: bool = True) -> None:
        if not isinstance(batch_invariant, bool):
            raise ConfigError(f"batch_invariant must be True or False, got {batch_invariant!r}")
        self.model = model
        self.backbone = backbone_of(model)
        self.head = OutputHead.from_model(model)
        self.hidden_size = self.head.hidden_size
        self.batch_invariant = batch_invariant
        self.cache_argument = cache_argument(self.backbone)

    def __repr__(self) -> str:
        return f"EagerEngine(batch_invariant={self.batch_invariant})"

    # ---------------------------------------------------------------- prefill
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[Prefix, ...]:
        """Prefill D left-padded prompts (D, L): one block, or one unpadded block per prompt
        when ``batch_invariant``. Returns the tuple of :class:`Prefix` blocks."""
        if not self.batch_invariant:
            return (self._prefill_block(input_ids, attention_mask),)
        blocks = []
        for ids, mask in zip(input_ids, attention_mask):
            real = mask.bool()
            blocks.append(self._prefill_block(ids[real][None], mask[real][None]))
        return tuple(blocks)

    def _prefill_block(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Prefix:
        """One forward pass over D' left-padded prompts (D', L) → their :class:`Prefix`."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
            )
        return Prefix(
            cache=getattr(out, self.cache_argument),
            hidden=out.last_hidden_state[:, -1].clone(),
            attention_mask=attention_mask,
            next_position=attention_mask.sum(-1),
        )

    # ---------------------------------------------------------------- stepwise decoding
    def start(
        self,
        prefix: Sequence[Prefix],
        num_samples: int,
        config: SamplingConfig,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        base_logprobs: bool,
    ) -> EagerState:
        """Copy each block's prompt cache to D'·n rows (``prefix`` is not modified)."""
        n = int(num_samples)
        T = config.max_new_tokens
        blocks = []
        with torch.inference_mode():
            for p in prefix:
                D, L = p.attention_mask.shape
                cache = copy.deepcopy(p.cache)
                cache.batch_repeat_interleave(n)
                mask = torch.ones(D * n, L + T, dtype=p.attention_mask.dtype, device=p.hidden.device)
                mask[:, :L] = p.attention_mask.repeat_interleave(n, dim=0)
                blocks.append(EagerBlock(D, cache, p.hidden.repeat_interleave(n, dim=0), mask,
                                         p.next_position.repeat_interleave(n, dim=0), L))
        D = sum(b.num_prompts for b in blocks)
        return EagerState(
            num_prompts=D, num_samples=n, config=config, eos_token_ids=tuple(eos_list(eos_token_ids)),
            pad_token_id=int(pad_token_id), base_logprobs=bool(base_logprobs),
            decoded=Decoded.empty(D * n, bool(base_logprobs), blocks[0].hidden.device), blocks=tuple(blocks),
        )

    def advance(self, state: EagerState, controls: torch.Tensor | None,
                uniforms: torch.Tensor) -> tuple[EagerState, Step]:
        """Decode b tokens of every block in turn; block of prompts j0..j1 uses
        ``controls[j0:j1]`` and ``uniforms[j0:j1]`` (views)."""
        b = check_advance_inputs(state, self.hidden_size, controls, uniforms)
        n = state.num_samples
        steps, blocks, finished, j0 = [], [], [], 0
        with torch.inference_mode():
            for block in state.blocks:
                j1 = j0 + block.num_prompts
                ctrl = None if controls is None else controls[j0:j1]
                done = state.decoded.finished[j0 * n: j1 * n]
                step, block, done = self._advance_block(state, block, done, ctrl, uniforms[j0:j1], b)
                steps.append(step)
                blocks.append(block)
                finished.append(done)
                j0 = j1
        step = steps[0] if len(steps) == 1 else Step(
            tokens=torch.cat([s.tokens for s in steps]),
            logprobs=torch.cat([s.logprobs for s in steps]),
            base_logprobs=None if not state.base_logprobs else torch.cat([s.base_logprobs for s in steps]),
            alive=torch.cat([s.alive for s in steps]),
        )
        lengths = state.decoded.lengths + step.alive.long().sum(1)
        decoded = state.decoded.extend(step, lengths, torch.cat(finished))
        return state.successor(decoded=decoded, blocks=tuple(blocks)), step

    @staticmethod
    def row_controls(controls: torch.Tensor | None) -> torch.Tensor | None:
        """Controls (D', n, b, d) as rows (D'·n, b, d): a view (no copy) whenever the (D', n)
        dims merge, which includes the contiguous case and the stride-0-in-b expanded one."""
        if controls is None:
            return None
        D, n, b, d = controls.shape
        return controls.reshape(D * n, b, d)

    def _advance_block(self, state: EagerState, block: EagerBlock, finished: torch.Tensor,
                       controls: torch.Tensor | None, uniforms: torch.Tensor,
                       b: int) -> tuple[Step, EagerBlock, torch.Tensor]:
        """b tokens of one block's B' rows; finished (B',) before them, controls (D', n, b, d)
        or None, uniforms (D', n, b) → (step, block, finished after)."""
        B = block.hidden.shape[0]
        T, L, t0 = state.config.max_new_tokens, block.prompt_length, state.position
        ctrl = self.row_controls(controls)  # (B', b, d) view
        u = uniforms.reshape(B, b)
        want_base = state.base_logprobs
        rec = StepRecorder(state, finished, b)
        z, cache, head = block.hidden, block.cache, self.head

        for s in range(b):
            t = t0 + s
            if rec.all_finished():
                break  # every row has ended: the rest is padding
            if ctrl is not None:
                zv = z + ctrl[:, s]
                if want_base:
                    both = head(torch.cat([zv, z], dim=0))  # (2B, V): W read once
                    logits, base = both[:B], both[B:]
                else:
                    logits, base = head(zv), None
            else:
                logits = head(z)
                base = logits if want_base else None
            # uncontrolled, base is logits: sample_with_logprobs reuses lp, no second pass
            tok = rec.draw(s, logits, base, u[:, s])
            if rec.all_finished() or t == T - 1:
                continue
            out = self.backbone(
                input_ids=tok.unsqueeze(1),
                attention_mask=block.attention_mask[:, : L + t + 1],
                position_ids=(block.next_position + t).unsqueeze(1),
                use_cache=True,
                **{self.cache_argument: cache},
            )
            z = out.last_hidden_state[:, -1]
        return rec.step(), dataclasses.replace(block, hidden=z), rec.finished

    def select(self, state: EagerState, rows: torch.Tensor) -> EagerState:
        """Gather every block's rows: KV cache (prompt part included), z, masks and the decoded
        tokens; n becomes n' = ``rows.shape[1]``."""
        n = state.num_samples
        flat = check_rows(rows, state.num_prompts, n).to(state.decoded.tokens.device)
        n2 = rows.shape[1]
        blocks, j0 = [], 0
        with torch.inference_mode():
            for block in state.blocks:
                j1 = j0 + block.num_prompts
                local = flat[j0 * n2: j1 * n2] - j0 * n
                block.cache.reorder_cache(local.to(block.hidden.device))
                blocks.append(dataclasses.replace(
                    block, hidden=block.hidden[local], attention_mask=block.attention_mask[local],
                    next_position=block.next_position[local]))
                j0 = j1
        return state.successor(num_samples=n2, decoded=state.decoded.gather(flat), blocks=tuple(blocks))
