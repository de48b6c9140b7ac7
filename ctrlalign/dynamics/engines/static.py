r"""A static-cache rollout engine for Llama-family causal LMs, with CUDA-graph decode steps.

:class:`StaticEngine` runs its own forward pass over the weights of a Hugging Face
``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``MistralForCausalLM`` (RMSNorm, RoPE — any
``rope_scaling`` the HF module implements, llama3 included, since the cos/sin table is taken
from the module's own rotary embedding —, GQA attention, SwiGLU MLP) with preallocated buffers,
so that one decode step can be captured once in a ``torch.cuda.CUDAGraph`` and replayed. The
forward pass itself (the weights, read in place, and the model math) is
:mod:`ctrlalign.dynamics.engines.llama`; this module is the engine around it: the prefix and
decode caches, the per-shape sessions, the CUDA graphs, and start / advance / select.

It implements the stepwise protocol of :mod:`ctrlalign.dynamics.engines.protocol` and the
contract of :mod:`ctrlalign.dynamics.decoding` exactly:

* :meth:`StaticEngine.prefill` runs D left-padded prompts once and returns a :class:`Prefix`
  (per-layer K/V of the prompts, key mask, prompt lengths and the pre-logit of each prompt's
  last token). A prefix is reusable across any number of starts.
* :meth:`StaticEngine.start` sets up B = D·n rows (row ``j*n + i`` is sample i of prompt j) in
  the static buffers of the shape key (D, n, P, T). Rows do **not** copy their prompt's K/V:
  attention is split into a *prefix* part, in which the n·(H/Hkv) queries of prompt j attend to
  prompt j's K/V in one batched matmul, and a *decode* part over a static (B, Hkv, T, hd)
  cache; the two parts share one softmax.
* :meth:`StaticEngine.advance` decodes b tokens; token t (0-based slot s = t−1) consists of a
  *head* (logits of the current pre-logit z — with the control added, g(W(z+v)+b), when the
  advance has controls —, inverse-CDF sampling with the pre-drawn uniform and
  log-probabilities at temperature 1, both by
  :func:`~ctrlalign.dynamics.decoding.sample_with_logprobs`, EOS bookkeeping) and a *body*
  (one transformer step on the sampled token, writing K/V at decode slot s and producing the
  next z). The last of the T tokens runs the head only.
* :meth:`StaticEngine.select` gathers rows within each prompt: their decode-cache slots,
  z, flags and outputs; the prompts' K/V are not copied.
* g is the model's output transform (:class:`~ctrlalign.dynamics.head.OutputHead`), the same
  head the eager engine applies.
* With ``base_logprobs=True`` the controlled and base pre-logits are stacked into one (2B, d)
  matmul for controlled tokens only; uncontrolled, base = controlled and no extra work is done.

* The decode cache is static (T slots per row), but the body at step t attends only to the
  first ⌈(t+1)/kv_block⌉·kv_block slots — the rest are masked anyway —, so the K/V bytes read per
  step grow with t instead of being T every step (about 44% fewer at T = 128, ``kv_block=16``).
* Q/K/V and gate/up are one GEMM each (``fuse_weights``): the module's parameters are re-pointed
  to row blocks of one concatenated matrix, so no weight is stored twice.

Head variants (controlled+base, controlled, uncontrolled) and the body (one per decode-cache
length) are captured as separate CUDA graphs per shape key (D, n, P, T, config, eos); an advance
of b tokens replays them b times with no host synchronisation. ``compile="none"`` runs the same code eagerly (CPU or GPU), which is what
the CPU tests check against a reference decode through the HF module.

Shapes (the letters of the docs' Shapes page): D prompts, n samples, B = D·n, P padded prompt length, T new tokens,
τ horizon, d hidden size, L layers, Hkv key/value heads, hd head dim, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..base import Step
from ..decoding import SamplingConfig
from ..head import OutputHead
from .llama import DecoderWeights, Kernels, check_supported
from .protocol import (
    Decoded,
    Engine,
    EngineState,
    Lease,
    check_advance_inputs,
    check_rows,
    eos_list,
)

__all__ = ["Prefix", "StaticEngine", "StaticState"]


@dataclass
class Prefix:
    """D prefilled prompts (what :meth:`StaticEngine.prefill` returns).

    Attributes:
        k: (L, D, Hkv, P, hd) keys (after RoPE) of the prompt tokens.
        v: (L, D, Hkv, P, hd) values of the prompt tokens.
        key_mask: (D, P) bool, True at real (non-padding) prompt tokens.
        lengths: (D,) long, number of real tokens per prompt (the position of the first new token).
        z: (D, d) pre-logit (final-norm hidden state) at each prompt's last token.
    """

    k: torch.Tensor
    v: torch.Tensor
    key_mask: torch.Tensor
    lengths: torch.Tensor
    z: torch.Tensor

    @property
    def num_prompts(self) -> int:
        """D, prompts whose prefix is cached."""
        return self.k.shape[1]

    @property
    def prompt_len(self) -> int:
        """P, the padded prompt length of the cached prefix."""
        return self.k.shape[3]


@dataclass(frozen=True)
class StaticState(EngineState):
    """:class:`~ctrlalign.dynamics.engines.protocol.EngineState` of the static engine: a handle
    on the session buffers of its shape key (D, n, P, T), which hold the decode cache, the next
    pre-logit and the flags. Only the newest state of a session can be advanced.

    Attributes:
        prefix: the :class:`Prefix` the rows continue.
        session: the static buffers (and CUDA graphs) in use.
    """

    prefix: Any = None
    session: Any = None


class _Session:
    """Static buffers (and CUDA graphs) for one shape key (D, n, P, T)."""

    def __init__(self, eng: StaticEngine, D: int, n: int, P: int, T: int) -> None:
        dev, dt = eng.device, eng.dtype
        B = D * n
        self.D, self.n, self.B, self.P, self.T = D, n, B, P, T
        d = eng.hidden_size
        # prefix: views into the engine's prefix buffer
        self.pk = eng._pfx_k[:, :D, :, :P]
        self.pv = eng._pfx_v[:, :D, :, :P]
        # decode cache: views into the engine's preallocated cache
        self.dk = eng._dec_k[:, :B, :, :T]
        self.dv = eng._dec_v[:, :B, :, :T]
        self.pmask = torch.zeros(B, 1, 1, P, dtype=torch.bool, device=dev)
        self.base_pos = torch.zeros(B, dtype=torch.long, device=dev)
        self.step = torch.zeros((), dtype=torch.long, device=dev)
        self.slots = torch.arange(T, device=dev)
        self.z = torch.zeros(B, d, dtype=dt, device=dev)
        self.tok = torch.zeros(B, dtype=torch.long, device=dev)
        self.uniforms = torch.zeros(B, T, dtype=torch.float32, device=dev)
        self.controls = torch.zeros(B, T, d, dtype=dt, device=dev)
        self.out_tokens = torch.zeros(B, T, dtype=torch.long, device=dev)
        self.out_lp = torch.zeros(B, T, dtype=torch.float32, device=dev)
        self.out_blp = torch.zeros(B, T, dtype=torch.float32, device=dev)
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.lengths = torch.zeros(B, dtype=torch.long, device=dev)
        self.graphs: dict[Any, torch.cuda.CUDAGraph] = {}
        self.eos: dict[Any, torch.Tensor] = {}
        self.owner: Lease | None = None  # the lease of the one state that may use these buffers
        self.loaded: Any = None  # id of the Prefix whose mask/positions are in the buffers


class StaticEngine(Engine):
    """Static-KV-cache, CUDA-graph rollout engine over a HF Llama/Qwen2/Mistral causal LM.

    An :class:`~ctrlalign.dynamics.engines.protocol.Engine`: :meth:`prefill` (D, P) →
    :class:`Prefix`; :meth:`start` → B = D·n rows (:class:`StaticState`); :meth:`advance`
    (controls (D, n, b, d) or None, uniforms (D, n, b)) → b more tokens; :meth:`select`.

    Args:
        model: a ``LlamaForCausalLM``-style module (``model.model.layers``, ``model.model.norm``,
            ``model.model.embed_tokens``, ``model.model.rotary_emb``, ``model.lm_head``). Its
            weights are used in place (no copy); they should already be on the target device in
            ``dtype``.
        max_batch: the largest B = D·n (and the largest D) a decode/prefill may use (initial
            capacity with ``grow``).
        max_length: the largest P + T (prompt length + new tokens) (initial capacity with
            ``grow``).
        dtype: compute dtype (bf16 on GPU; float32 for exactness tests and CPU); None: the
            model's.
        compile: None (``"cudagraph"`` on CUDA, ``"none"`` elsewhere), ``"cudagraph"`` (capture each decode step in a CUDA graph, with its elementwise
            pieces fused by ``torch.compile``; CUDA only; falls back to ``"cudagraph_eager"`` with a
            warning if torch.compile fails), ``"cudagraph_eager"`` (CUDA graphs of the plain
            PyTorch ops) or ``"none"`` (eager; runs on CPU).
        prefill_chunk: prompts per prefill forward (bounds activation memory).
        fuse_weights: concatenate each layer's Q/K/V weights into one matrix and gate/up into
            another, so a step makes 4 GEMMs per layer instead of 7. The model's parameters are
            re-pointed to views of the fused matrices (no extra memory; the HF module computes
            exactly what it did), which is a visible change: ``save_pretrained`` then sees
            tensors sharing storage. Pass ``False`` to leave the model untouched.
        kv_block: decode-cache length granularity. Step t attends to the first
            ⌈(t+1)/kv_block⌉·kv_block decode slots (the others are masked anyway) instead of all
            T, with one captured graph per length; at T = 128 and ``kv_block=16`` this reads
            about 44% fewer K/V bytes per step (the mean length is 72 instead of 128). ``None``:
            always all T slots (one graph).
        grow: when a prefill or decode needs more than ``max_batch`` rows or ``max_length``
            positions, enlarge the buffers (to the need, the length rounded up to a multiple of
            64) and drop the captured graphs, instead of raising ``ValueError``.

    Raises:
        NotImplementedError: the architecture is not one of :data:`~ctrlalign.dynamics.engines.llama.SUPPORTED_MODEL_TYPES`, or it
            uses a feature this forward pass does not reproduce (sliding window, QK-norm, ...).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_batch: int = 64,
        max_length: int = 64,
        dtype: torch.dtype | None = None,
        compile: str | None = None,
        prefill_chunk: int = 64,
        fuse_weights: bool = True,
        kv_block: int | None = 16,
        grow: bool = False,
    ) -> None:
        check_supported(model, max_length)
        inner = model.model
        if dtype is None:
            dtype = inner.embed_tokens.weight.dtype
        if compile is None:
            compile = "cudagraph" if inner.embed_tokens.weight.device.type == "cuda" else "none"
        if compile not in ("cudagraph", "cudagraph_eager", "none"):
            raise ValueError(f"compile must be 'cudagraph', 'cudagraph_eager' or 'none', got {compile!r}")
        if kv_block is not None and (isinstance(kv_block, bool) or not isinstance(kv_block, int) or kv_block < 1):
            raise ValueError(f"kv_block must be a positive int or None (no blocking), got {kv_block!r}")
        if max_batch < 1 or max_length < 2:
            raise ValueError(f"need max_batch >= 1 and max_length >= 2, got max_batch={max_batch}, max_length={max_length}")
        self.model = model
        self.device = inner.embed_tokens.weight.device
        if compile != "none" and self.device.type != "cuda":
            raise ValueError(f"compile={compile!r} (CUDA graphs) needs the model on a CUDA device; use compile='none'")
        self.kernels = Kernels(compiled=compile == "cudagraph")
        for p in model.parameters():
            if p.dtype != dtype:
                raise ValueError(f"model parameters are {p.dtype}; convert the model to {dtype} first")
            break
        self.dtype = dtype
        self.compile = compile
        self.max_batch = int(max_batch)
        self.max_length = int(max_length)
        self.prefill_chunk = int(prefill_chunk)
        self.kv_block = kv_block
        self.grow = bool(grow)
        self.fuse_weights = bool(fuse_weights)
        self.weights = weights = DecoderWeights(model, fuse=bool(fuse_weights), max_length=max_length)
        self.num_layers, self.hidden_size = weights.num_layers, weights.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = weights.num_heads, weights.num_kv_heads, weights.head_dim
        self.scale, self.group = weights.scale, weights.group
        self.head = OutputHead.from_model(model)
        self.vocab_size = self.head.vocab_size
        self._sessions: dict[tuple[int, int, int, int], _Session] = {}
        self._allocate()
        self._pfx_k = torch.zeros(self.num_layers, 0, self.num_kv_heads, 0, self.head_dim, dtype=dtype, device=self.device)
        self._pfx_v = self._pfx_k
        self._pfx_loaded: Any = None
        self._pool = None

    def _allocate(self) -> None:
        """(Re)build the buffers sized by the capacity: the cos/sin table (max_length, hd), from
        the module's own rotary embedding, and the decode cache (L, max_batch, Hkv,
        max_length, hd) ×2. Drops the sessions and their graphs (they point into the old
        buffers)."""
        self.cos, self.sin = self.weights.rope_table(self.max_length, self.dtype, self.device)  # (max_length, hd)
        L, Hkv, hd = self.num_layers, self.num_kv_heads, self.head_dim
        self._sessions = {}
        self._dec_k = self._dec_v = None  # free the old cache before allocating the new one
        self._dec_k = torch.zeros(L, self.max_batch, Hkv, self.max_length, hd, dtype=self.dtype, device=self.device)
        self._dec_v = torch.zeros_like(self._dec_k)

    def _reserve(self, rows: int, length: int) -> None:
        """Make room for ``rows`` decode rows and ``length`` = P + T positions: grow the buffers
        (``grow=True``) or raise ``ValueError`` naming the capacity exceeded."""
        if rows <= self.max_batch and length <= self.max_length:
            return
        if not self.grow:
            if rows > self.max_batch:
                raise ValueError(f"{rows} rows (D·n, or D prompts) exceed max_batch={self.max_batch}")
            raise ValueError(f"prompt length + max_new_tokens = {length} exceeds max_length={self.max_length}")
        self.max_batch = max(rows, self.max_batch)
        self.max_length = -(-max(length, self.max_length) // 64) * 64
        self._allocate()

    # ------------------------------------------------------------------ prefill
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Prefix:
        """Run D left-padded prompts once.

        Args:
            input_ids: (D, P) long, left-padded.
            attention_mask: (D, P), 1 at real tokens (None: all real). Must be left padding,
                with at least one real token per prompt.

        Returns:
            :class:`Prefix` on the engine's device.
        """
        ids = input_ids.to(self.device)
        D, P = ids.shape
        mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(self.device).bool()
        if P + 1 > self.max_length and not self.grow:
            raise ValueError(f"prompt length {P} leaves no room under max_length={self.max_length}")
        self._reserve(D, P + 1)
        lengths = mask.long().sum(-1)
        if bool((lengths == 0).any()):
            raise ValueError("every prompt needs at least one real token")
        # left padding: real tokens are exactly the last `lengths` positions
        expect = torch.arange(P, device=self.device)[None] >= (P - lengths)[:, None]
        if not torch.equal(expect, mask):
            raise ValueError("attention_mask must be left padding (real tokens at the end of each row)")
        K, Vv, z = self.weights.prefill(ids, mask, self.cos, self.sin, self.prefill_chunk, self.dtype)
        return Prefix(k=K, v=Vv, key_mask=mask, lengths=lengths, z=z)

    # ------------------------------------------------------------------ decode pieces
    def _body(self, s: _Session, Tb: int) -> None:
        """One transformer step on s.tok at decode slot s.step → s.z; then step += 1.

        Attention reads only the first ``Tb`` decode slots (Tb > s.step; later slots are masked).
        """
        B, P = s.B, s.P
        pos = s.base_pos + s.step
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # (B,1,hd)
        dmask = (s.slots[:Tb] <= s.step).view(1, 1, 1, Tb)
        amask = torch.cat([s.pmask.expand(B, 1, 1, P), dmask.expand(B, 1, 1, Tb)], dim=-1)
        h = self.weights.decode_step(self.kernels, s.tok, cos, sin, amask, s.step.view(1), s.pk, s.pv, s.dk, s.dv,
                                     s.D, s.n, Tb, self.dtype)
        s.z.copy_(h)
        s.step.add_(1)

    def _kv_length(self, t: int, T: int) -> int:
        """Decode slots the body at step t (writing slot t) attends to: ⌈(t+1)/kv_block⌉·kv_block ∧ T."""
        if self.kv_block is None:
            return T
        return min(T, -(-(t + 1) // self.kv_block) * self.kv_block)

    def _head(self, s: _Session, variant: str, config: SamplingConfig, eos: torch.Tensor | None, pad_id: int) -> None:
        """Logits of s.z at slot s.step → sampled token in s.tok and the outputs at that slot.

        variant: "cb" controlled+base (stacked matmul), "c" controlled, "u" uncontrolled
        (base = controlled)."""
        B = s.B
        slot = s.step.view(1)
        z = s.z
        if variant == "u":
            logits = self.head(z)
            base = None
        else:
            v = s.controls.index_select(1, slot).squeeze(1)  # (B,d)
            zc = z + v
            if variant == "cb":
                both = self.head(torch.cat([zc, z], 0))
                logits, base = both[:B], both[B:]
            else:
                logits = self.head(zc)
                base = None
        u = s.uniforms.index_select(1, slot).squeeze(1)
        tok, lp, blp = self.kernels.sample(logits, u, config, base)
        if blp is None:  # no base head computed: base = controlled
            blp = lp
        if eos is not None:
            alive = ~s.done
            tok = torch.where(alive, tok, torch.full_like(tok, pad_id))
            zero = torch.zeros_like(lp)
            lp = torch.where(alive, lp, zero)
            blp = torch.where(alive, blp, zero)
            s.lengths.add_(alive.long())
            s.done.logical_or_(alive & (tok[:, None] == eos[None]).any(-1))
        else:
            s.lengths.add_(1)
        s.tok.copy_(tok)
        s.out_tokens.index_copy_(1, slot, tok[:, None])
        s.out_lp.index_copy_(1, slot, lp[:, None])
        s.out_blp.index_copy_(1, slot, blp[:, None])

    # ------------------------------------------------------------------ decode
    def _session(self, prefix: Prefix, n: int, T: int) -> _Session:
        D, P = prefix.num_prompts, prefix.prompt_len
        self._reserve(D * n, P + T)
        # load the prefix into the static prefix buffer (graphs read from fixed addresses)
        if self._pfx_k.shape[1] < D or self._pfx_k.shape[3] < P:
            shape = list(self._pfx_k.shape)
            shape[1], shape[3] = max(shape[1], D), max(shape[3], P)
            self._sessions.clear()  # their views point to the old buffer
            self._pfx_k = self._pfx_v = None
            self._pfx_k = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self._pfx_v = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self._pfx_loaded = None
        key = (D, n, P, T)
        s = self._sessions.get(key)
        if s is None:
            s = self._sessions[key] = _Session(self, D, n, P, T)
        if self._pfx_loaded is not prefix:
            s.pk.copy_(prefix.k)
            s.pv.copy_(prefix.v)
            self._pfx_loaded = prefix
        if s.loaded is not prefix:
            s.pmask.copy_(prefix.key_mask.repeat_interleave(n, 0).view(s.B, 1, 1, P))
            s.base_pos.copy_(prefix.lengths.repeat_interleave(n, 0))
            s.loaded = prefix
        return s

    @torch.no_grad()
    def start(
        self,
        prefix: Prefix,
        num_samples: int,
        config: SamplingConfig,
        *,
        eos_token_ids: int | Sequence[int] | None,
        pad_token_id: int,
        base_logprobs: bool = False,
    ) -> StaticState:
        """B = D·n rows at t = 0 in the static buffers of shape key (D, n, P, T). The rows do
        not copy their prompt's K/V (see the module docstring). Starting again on the same
        shape key supersedes an earlier state of that key."""
        D, n, T = prefix.num_prompts, int(num_samples), config.max_new_tokens
        s = self._session(prefix, n, T)
        s.z.copy_(prefix.z.repeat_interleave(n, 0))
        s.step.zero_()
        s.done.zero_()
        s.lengths.zero_()
        ids = tuple(eos_list(eos_token_ids))
        state = StaticState(
            num_prompts=D, num_samples=n, config=config, eos_token_ids=ids, pad_token_id=int(pad_token_id),
            base_logprobs=bool(base_logprobs), decoded=Decoded.empty(D * n, bool(base_logprobs), self.device),
            prefix=prefix, session=s,
        )
        s.owner = state.lease
        return state

    def _eos(self, s: _Session, state: StaticState) -> tuple[torch.Tensor | None, Any]:
        """The EOS tensor (cached on the session) and its graph key, or (None, None)."""
        if not state.use_eos:
            return None, None
        ekey = (state.eos_token_ids, state.pad_token_id)
        eos = s.eos.get(ekey)
        if eos is None:
            eos = s.eos[ekey] = torch.tensor(state.eos_token_ids, dtype=torch.long, device=self.device)
        return eos, ekey

    def _session_of(self, state: StaticState) -> _Session:
        s = state.session
        if s.owner is not state.lease or self._sessions.get((s.D, s.n, s.P, s.T)) is not s:
            raise RuntimeError("this StaticEngine state was superseded: a later start or select on the same "
                               "shape reused its buffers (or the engine grew them)")
        return s

    @torch.no_grad()
    def advance(self, state: StaticState, controls: torch.Tensor | None,
                uniforms: torch.Tensor) -> tuple[StaticState, Step]:
        """b more tokens: the controls (D, n, b, d) and uniforms (D, n, b) are copied into slots
        t..t+b−1 of the session's static (B, T, d) and (B, T) buffers (CUDA graphs read fixed
        addresses); then, per token, the head (controlled+base, controlled, or uncontrolled
        when ``controls`` is None) and, before the last of T, the body."""
        b = check_advance_inputs(state, self.hidden_size, controls, uniforms)
        s = self._session_of(state)
        config, T, t0, B = state.config, state.max_new_tokens, state.position, s.B
        if controls is not None and b > 0:
            s.controls[:, t0:t0 + b].copy_(controls.reshape(B, b, self.hidden_size))
        s.uniforms[:, t0:t0 + b].copy_(uniforms.reshape(B, b))
        eos, ekey = self._eos(s, state)
        hv = ("cb" if state.base_logprobs else "c") if controls is not None else "u"
        pad = state.pad_token_id
        for t in range(t0, t0 + b):
            self._run(s, ("head", hv, config, ekey), lambda: self._head(s, hv, config, eos, pad))
            if t < T - 1:
                Tb = self._kv_length(t, T)
                self._run(s, ("body", Tb), lambda Tb=Tb: self._body(s, Tb))
        slots = slice(t0, t0 + b)
        alive = torch.arange(t0, t0 + b, device=self.device).unsqueeze(0) < s.lengths.unsqueeze(1)
        step = Step(tokens=s.out_tokens[:, slots].clone(), logprobs=s.out_lp[:, slots].clone(),
                    base_logprobs=s.out_blp[:, slots].clone() if state.base_logprobs else None, alive=alive)
        decoded = state.decoded.extend(step, s.lengths.clone(), s.done.clone())
        new = state.successor(decoded=decoded)
        s.owner = new.lease
        return new, step

    @torch.no_grad()
    def select(self, state: StaticState, rows: torch.Tensor) -> StaticState:
        """Gather the rows' decode-cache slots, next pre-logit, last token, flags and outputs
        into the buffers of shape key (D, n', P, T). The prompts' K/V (the prefix buffer, one
        copy per prompt) are not copied: rows stay within their prompt."""
        s = self._session_of(state)
        flat = check_rows(rows, state.num_prompts, state.num_samples).to(self.device)
        n2 = rows.shape[1]
        names = ("z", "tok", "done", "lengths", "out_tokens", "out_lp", "out_blp")
        picked = {k: getattr(s, k)[flat] for k in names}
        dk, dv = s.dk[:, flat], s.dv[:, flat]
        step = s.step.clone()
        s2 = self._session(state.prefix, n2, s.T)
        for k in names:
            getattr(s2, k).copy_(picked[k])
        s2.dk.copy_(dk)
        s2.dv.copy_(dv)
        s2.step.copy_(step)
        new = state.successor(num_samples=n2, decoded=state.decoded.gather(flat), session=s2)
        s2.owner = new.lease
        return new

    def _run(self, s: _Session, key: Any, fn) -> None:
        if self.compile == "none":
            fn()
            return
        g = s.graphs.get(key)
        if g is None:
            try:
                g = self._capture(s, fn)
            except Exception as e:  # torch.compile unavailable/failing: plain ops in the graph
                if not self.kernels.compiled:
                    raise
                import warnings

                warnings.warn(f"StaticEngine: torch.compile failed ({type(e).__name__}: {e}); "
                              "falling back to compile='cudagraph_eager'")
                torch.cuda.synchronize()
                self.kernels = Kernels(compiled=False)
                self.compile = "cudagraph_eager"
                for ss in self._sessions.values():
                    ss.graphs.clear()
                g = self._capture(s, fn)
            s.graphs[key] = g
        g.replay()

    def _capture(self, s: _Session, fn) -> torch.cuda.CUDAGraph:
        # The pieces mutate state (step counter, KV slot, done flags): save and restore it
        # around warm-up and capture so that capturing has no visible effect, then replay.
        state = [s.step, s.z, s.tok, s.done, s.lengths, s.out_tokens, s.out_lp, s.out_blp]
        saved = [x.clone() for x in state]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            try:
                for _ in range(2):
                    fn()
                    for x, y in zip(state, saved):
                        x.copy_(y)
            except Exception:
                for x, y in zip(state, saved):
                    x.copy_(y)
                torch.cuda.current_stream().wait_stream(stream)
                raise
        torch.cuda.current_stream().wait_stream(stream)
        g = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(g, pool=self._pool):
            fn()
        for x, y in zip(state, saved):
            x.copy_(y)
        return g

    def clear(self) -> None:
        """Drop all captured graphs and per-shape buffers (frees their memory)."""
        self._sessions.clear()
        self._pfx_k = torch.zeros(self.num_layers, 0, self.num_kv_heads, 0, self.head_dim, dtype=self.dtype, device=self.device)
        self._pfx_v = self._pfx_k
        self._pfx_loaded = None
        self._pool = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
