r"""The llama.cpp engine: the transformer forward pass in llama.cpp (CPU, quantised GGUF
weights), sampling and control in ctrlalign.

Implements the stepwise protocol of :mod:`ctrlalign.dynamics.engines.protocol`; see
:class:`LlamaCppEngine`. The llama.cpp side (model, context, batch, KV-cache sequences) is
:mod:`ctrlalign.dynamics.engines.llamacpp_runtime`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..._checks import ConfigError, check_int
from ...models import packaged_gguf_for
from ..base import Step
from ..decoding import SamplingConfig
from ..head import OutputHead
from .llamacpp_runtime import LlamaCppRuntime, Sequences
from .protocol import (
    Decoded,
    Engine,
    EngineState,
    Lease,
    StepRecorder,
    check_advance_inputs,
    check_rows,
    eos_list,
)

__all__ = ["LlamaCppEngine", "LlamaCppPrefix", "LlamaCppState", "check_offset_head"]


def check_offset_head(head: OutputHead, metadata: dict[str, str]) -> None:
    r"""Refuse a head for which a control cannot enter as a logit offset.

    The engine computes :math:`\ell = Wz` in llama.cpp and adds :math:`Wv` in torch; that
    equals the contract's :math:`g(W(z+v)+b)` exactly when the head is linear without a bias
    (b = 0) and g is the identity (no soft-capping, no logit scale). Checked on the
    ``transformers`` head and on the GGUF file's metadata (``*.final_logit_softcapping``,
    ``*.logit_scale``).

    Raises:
        ConfigError: naming the head (``W z + b``, ``30·tanh(W z/30)``, ...) or the GGUF key.
    """
    if head.bias is not None or head.softcap is not None or head.scale is not None:
        raise ConfigError(
            f"engine='llamacpp' adds the control as a logit offset W·v, which is exact only for a head "
            f"ℓ = W z (no bias, no soft-capping, no logit scale); this model's head is {head.describe()}. "
            "Use engine='eager'"
        )
    for key, value in metadata.items():
        if key.endswith((".final_logit_softcapping", ".logit_scale")):
            try:
                v = float(value)
            except ValueError:
                v = None
            neutral = 1.0 if key.endswith(".logit_scale") else 0.0
            if v != neutral:
                raise ConfigError(
                    f"engine='llamacpp': the GGUF file sets {key} = {value}, a transform after the head, so a "
                    "control would not enter as the logit offset W·v; use engine='eager'"
                )


@dataclass(frozen=True)
class LlamaCppPrefix:
    """D prompts prefilled in llama.cpp (never modified; every start copies its sequences).

    Attributes:
        sequences: the D prompts' KV-cache sequences.
        lengths: (D,) int32, real prompt tokens (the position of the first generated token).
        logits: (D, V) float32, :math:`Wz_1`, llama.cpp's logits after the last prompt token.
    """

    sequences: Sequences
    lengths: np.ndarray = dataclasses.field(compare=False)
    logits: torch.Tensor = dataclasses.field(compare=False)

    @property
    def num_prompts(self) -> int:
        """D."""
        return len(self.lengths)


@dataclass(frozen=True)
class LlamaCppState(EngineState):
    """:class:`~ctrlalign.dynamics.engines.protocol.EngineState` plus the rows' llama.cpp side.

    Attributes:
        sequences: the B rows' KV-cache sequences (prompt cells shared with the prefix).
        lengths: (B,) int32, the row's prompt length; token t of the row sits at position
            ``lengths + t``.
        logits: (B, V) float32, :math:`Wz_{t+1}`, the base logits of the next token.
    """

    sequences: Sequences | None = None
    lengths: np.ndarray | None = dataclasses.field(default=None, compare=False)
    logits: torch.Tensor | None = dataclasses.field(default=None, compare=False)


class LlamaCppEngine(Engine):
    r"""Rollouts with llama.cpp's forward pass on a GGUF file (CPU), ctrlalign's sampling.

    Per decode step, one ``llama_decode`` call runs all B rows (one token each, every row its
    own KV-cache sequence) and returns the base logits :math:`\ell^0 = Wz` (B, V) as one
    array; ctrlalign then forms the controlled logits :math:`\ell^0 + Wv` and draws the token by
    :class:`~ctrlalign.dynamics.engines.protocol.StepRecorder` (the eager engine's code:
    inverse CDF from the pre-drawn uniforms, log q, log p = log softmax(ℓ⁰), EOS/pad).

    **The control as a logit offset.** :math:`W(z+v) = Wz + Wv`, so a control adds
    :math:`Wv` (B, V) to llama.cpp's logits, with W the ``transformers`` head (float32, the
    dequantised GGUF weights). Exact only for heads :math:`\ell = Wz` (no bias, soft-capping or
    logit scale): others are refused (:func:`check_offset_head`). A control constant over the
    advance's b tokens (a stride-0 view, as the shared and subspace spaces give, or b = 1) costs
    one (B, d)×(d, V) product per advance; a per-token control one per step.

    **Rows and forks.** The prefix holds one KV-cache sequence per prompt; :meth:`start` gives
    each row its own sequence sharing the prompt's cells (``seq_cp``, no copy); :meth:`select`
    keeps a row's sequence for its first continuation and shares it with a fresh sequence for
    each further one, and removes unselected rows (``seq_rm``). D prompts of live prefixes plus
    the rows of live states must stay within ``n_seq_max`` (256), and their tokens within
    ``n_ctx`` cells.

    **What is exact.** Within llama.cpp, for a fixed GGUF, thread count and row count: the
    tokens and log-probabilities are the eager engine's sampling code on the logits llama.cpp
    returned; advancing in blocks equals one advance; identity select changes nothing (bitwise,
    tested). A forked row continues like its source to float rounding only (same tokens,
    log-probabilities within ~1e-3): its new cells sit elsewhere in the cache, and llama.cpp's
    attention sums depend on cell placement (SIMD lanes, float16 accumulation in flash
    attention). Against the ``transformers`` model it is equal *in distribution* only: the
    packaged GGUFs are quantised and llama.cpp quantises activations for its dot products, so
    the logits differ from the float32 torch model's; next-token distributions agree to a
    total-variation distance of ~0.07 for the packaged Q4_1 SmolLM2 (tested < 0.1), and to
    3e-6 for the same weights as a float32 GGUF (:func:`~ctrlalign.dynamics.engines.to_gguf.write_llama_gguf`).

    Args:
        model: the ``transformers`` causal LM (its head W gives the control offsets; its
            tokenizer, in :class:`~ctrlalign.dynamics.causal_lm.CausalLM`, the token ids).
        gguf: the GGUF file of the same model; None: the packaged GGUF the model was
            converted from (``CausalLM.from_pretrained("default")``/``"gemma3-270m"``).
        n_threads: llama.cpp's CPU threads (None: ``torch.get_num_threads()``).
        n_ctx: KV-cache cells for all live prompts and rows (prompt tokens + D·n·T).
        n_batch: the most tokens per ``llama_decode`` call (≥ the rows B).
        cache_type: ``"f16"`` (default) or ``"f32"`` KV cache.
        flash_attn: llama.cpp's flash attention (default True; its CPU kernel works in float16,
            so a float32 cache with ``flash_attn=False`` is the closest to the torch model).
    """

    def __init__(self, model: Any, *, gguf: str | Path | None = None, n_threads: int | None = None,
                 n_ctx: int = 16384, n_batch: int = 512, cache_type: str = "f16",
                 flash_attn: bool = True) -> None:
        check_int("n_ctx", n_ctx, minimum=1)
        check_int("n_batch", n_batch, minimum=1)
        if n_threads is not None:
            check_int("n_threads", n_threads, minimum=1)
        self.head = OutputHead.from_model(model)
        check_offset_head(self.head, {})
        path = Path(gguf) if gguf is not None else packaged_gguf_for(model)
        if path is None:
            raise ConfigError(
                "engine='llamacpp' needs the model as a GGUF file: pass engine_options={'gguf': path} (the packaged "
                "models are found by themselves; ctrlalign.dynamics.engines.to_gguf.write_llama_gguf writes a "
                "transformers Llama)"
            )
        self.runtime = LlamaCppRuntime(path, n_threads=n_threads or torch.get_num_threads(), n_ctx=n_ctx,
                                       n_batch=n_batch, cache_type=cache_type, flash_attn=flash_attn)
        check_offset_head(self.head, self.runtime.metadata)
        rt = self.runtime
        if (rt.vocab_size, rt.hidden_size) != (self.head.vocab_size, self.head.hidden_size):
            raise ConfigError(
                f"engine='llamacpp': {path.name} has vocabulary {rt.vocab_size} and hidden size {rt.hidden_size}, the "
                f"model's head (V, d) = ({self.head.vocab_size}, {self.head.hidden_size}); give the GGUF file of "
                "the same model"
            )
        self.hidden_size = self.head.hidden_size

    def __repr__(self) -> str:
        return f"LlamaCppEngine({self.runtime!r})"

    # ---------------------------------------------------------------- prefill
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> LlamaCppPrefix:
        """Run the D prompts' real tokens (left padding dropped), each in its own sequence at
        positions 0..L_j−1, in ``llama_decode`` calls of at most n_batch tokens; keep the logits
        of each prompt's last token."""
        rt = self.runtime
        mask = attention_mask.bool().cpu()
        ids = input_ids.cpu()
        rows = [ids[j][mask[j]].numpy().astype(np.int32) for j in range(ids.shape[0])]
        lengths = np.array([len(r) for r in rows], dtype=np.int32)
        seqs = Sequences(rt, rt.acquire(len(rows)))
        tokens = np.concatenate(rows)
        positions = np.concatenate([np.arange(L, dtype=np.int32) for L in lengths])
        owner = np.repeat(seqs.ids, lengths)
        want = np.zeros(len(tokens), dtype=bool)
        want[np.cumsum(lengths) - 1] = True
        out = []
        for a in range(0, len(tokens), rt.n_batch):
            z = slice(a, a + rt.n_batch)
            if want[z].any():
                out.append(rt.decode(tokens[z], positions[z], owner[z], want[z]))
            else:
                rt.decode(tokens[z], positions[z], owner[z], want[z])
        logits = torch.from_numpy(np.concatenate(out)).to(self.head.weight.device)
        return LlamaCppPrefix(seqs, lengths, logits)

    # ---------------------------------------------------------------- stepwise decoding
    def start(
        self,
        prefix: LlamaCppPrefix,
        num_samples: int,
        config: SamplingConfig,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        base_logprobs: bool,
    ) -> LlamaCppState:
        """B = D·n rows, row ``j*n + i`` a new sequence sharing prompt j's cells."""
        n = int(num_samples)
        D = prefix.num_prompts
        rt = self.runtime
        rows = Sequences(rt, rt.acquire(D * n))
        for r, dst in enumerate(rows.ids.tolist()):  # B seq_cp calls, once per start
            rt.copy(int(prefix.sequences.ids[r // n]), dst)
        return LlamaCppState(
            num_prompts=D, num_samples=n, config=config, eos_token_ids=tuple(eos_list(eos_token_ids)),
            pad_token_id=int(pad_token_id), base_logprobs=bool(base_logprobs),
            decoded=Decoded.empty(D * n, bool(base_logprobs), prefix.logits.device),
            sequences=rows, lengths=np.repeat(prefix.lengths, n), logits=prefix.logits.repeat_interleave(n, dim=0),
        )

    def offsets(self, controls: torch.Tensor | None, s: int, constant: torch.Tensor | None) -> torch.Tensor | None:
        """Wv for step s: ``constant`` (B, V) when the control does not change over the advance,
        else W ``controls[:, s]`` for rows (B, b, d); None without controls."""
        if controls is None:
            return None
        if constant is not None:
            return constant
        return self.head.linear(controls[:, s]).float()

    def advance(self, state: LlamaCppState, controls: torch.Tensor | None,
                uniforms: torch.Tensor) -> tuple[LlamaCppState, Step]:
        """b tokens of all B rows: per step, sample from llama.cpp's logits (+ Wv), then one
        ``llama_decode`` of the B new tokens (skipped after the last step and once every row has
        ended)."""
        b = check_advance_inputs(state, self.hidden_size, controls, uniforms)
        state.lease.consume()
        D, n = state.num_prompts, state.num_samples
        B, t0, T = D * n, state.position, state.max_new_tokens
        ctrl = None if controls is None else controls.reshape(B, b, self.hidden_size)
        constant = None
        if ctrl is not None and (b == 1 or ctrl.stride(1) == 0):
            constant = self.head.linear(ctrl[:, 0]).float()  # (B, V), once per advance
        u = uniforms.reshape(B, b)
        want_base = state.base_logprobs
        rec = StepRecorder(state, state.decoded.finished, b)
        logits, seqs, rt = state.logits, state.sequences.ids, self.runtime
        for s in range(b):
            t = t0 + s
            if rec.all_finished():
                break  # every row has ended: the rest is padding
            offset = self.offsets(ctrl, s, constant)
            q = logits if offset is None else logits + offset
            tok = rec.draw(s, q, logits if want_base else None, u[:, s])
            if rec.all_finished() or t == T - 1:
                continue
            out = rt.decode(tok.numpy().astype(np.int32), state.lengths + t, seqs)
            logits = torch.from_numpy(out).to(q.device)
        step = rec.step()
        lengths = state.decoded.lengths + step.alive.long().sum(1)
        decoded = state.decoded.extend(step, lengths, rec.finished)
        return dataclasses.replace(state, lease=Lease(), decoded=decoded, logits=logits), step

    def select(self, state: LlamaCppState, rows: torch.Tensor) -> LlamaCppState:
        """New row (j, i) continues old row (j, rows[j, i]): its sequence (kept for the first
        continuation, shared by ``seq_cp`` for the others; unselected rows' sequences removed),
        logits, prompt length and decoded tokens."""
        flat = check_rows(rows, state.num_prompts, state.num_samples)
        state.lease.consume()
        index = flat.cpu().numpy()
        state.sequences.gather(index)
        return dataclasses.replace(
            state, lease=Lease(), num_samples=int(rows.shape[1]), decoded=state.decoded.gather(flat.to(state.logits.device)),
            lengths=state.lengths[index], logits=state.logits[flat.to(state.logits.device)],
        )
