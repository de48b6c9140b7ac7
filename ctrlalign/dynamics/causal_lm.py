r"""A ``transformers`` causal language model as a system controlled on its pre-logits.

For a prompt x the model's pre-logit :math:`z_t\in\mathbb R^d` is the final hidden state after
the final norm — the input of the output head :math:`W\in\mathbb R^{V\times d}` (bias b, 0 when
the head has none). With controls :math:`V=[v_1..v_\tau]` (D, n, τ, d):

.. math::
    \ell_t = g\big(W(z_t + v_t) + b\big) \ (t\le\tau), \qquad
    \ell_t = g(W z_t + b) \ (t>\tau), \qquad y_t \sim \mathrm{softmax}(\ell_t)

where g is the model's own logit transform (identity for most models; Gemma-2/3's final
soft-capping :math:`g(\ell)=c\tanh(\ell/c)`, Cohere's ``logit_scale``, Granite's
``logits_scaling``). Before control the logits therefore equal the model's own logits, and
the control enters exactly where the paper puts it: :math:`W(z+v)+b = Wz+b+Wv`.
Every :class:`CausalLM` checks this at construction: the backbone's ``last_hidden_state``
pushed through :math:`g(W\cdot+b)` must reproduce the full model's logits; an architecture that
does anything else between the two (an unknown transform, a rescaled hidden state) is refused
with an error naming it, rather than silently controlled in the wrong place.

Work per run: :meth:`CausalLM.prepare` tokenises D prompts (chat template when the tokenizer has
one) into left-padded ids (D, L) and hands them to the engine's
:meth:`~ctrlalign.dynamics.engine.Engine.prefill` **once**; the prefix it returns (KV cache,
:math:`z_1` (D, d)) lives in the context. :meth:`CausalLM.rollout` draws uniforms
U (D, n, T) from ``generators[j]`` (prompt j's block) and calls the engine's
:meth:`~ctrlalign.dynamics.engine.Engine.decode` with the controls V (D, n, τ, d) or None,
which decodes B = D·n rows (row ``j*n + i`` is sample i of prompt j), T =
``max_new_tokens`` tokens each, following the contract of :mod:`ctrlalign.dynamics.decoding`
(inverse-CDF sampling with the pre-drawn uniforms).

Engines implement one protocol, :class:`~ctrlalign.dynamics.engine.Engine` (``prefill`` and
``decode``): :class:`EagerEngine` (this module) and
:class:`~ctrlalign.dynamics.static_engine.StaticEngine`; ``CausalLM(engine=...)`` takes a name
in :data:`ENGINES` (see :func:`register_engine`) or an engine instance, and holds that one
object.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .._checks import ConfigError, check_int
from ..models import is_packaged, load_packaged
from .base import Dynamics, Outcomes
from .decoding import DecodeResult, SamplingConfig, sample_with_logprobs
from .engine import Engine, check_decode_inputs, eos_list
from .static_engine import StaticEngine

__all__ = [
    "ENGINES",
    "CausalLM",
    "CausalLMContext",
    "EagerEngine",
    "Engine",
    "OutputHead",
    "Prefix",
    "UnsupportedModelError",
    "eager_decode",
    "make_engine",
    "register_engine",
]


class UnsupportedModelError(ValueError):
    """The model's logits are not ``g(W z + b)`` of its backbone's last hidden state z."""


# --------------------------------------------------------------------------------------------
# the output head


# config attributes that transform the head's output, and what we do with each
_SOFTCAP_ATTRS = ("final_logit_softcapping",)
_MULTIPLY_ATTRS = ("logit_scale",)  # Cohere: logits * logit_scale
_DIVIDE_ATTRS = ("logits_scaling",)  # Granite: logits / logits_scaling


class OutputHead:
    r"""The output head :math:`\ell = g(W x + b)` applied to pre-logits x.

    Args:
        weight: W, (V, d).
        bias: b, (V,), or None (b = 0).
        scale: multiply the logits by this (None: 1). Cohere's ``logit_scale``, Granite's
            ``1/logits_scaling``.
        softcap: c for :math:`g(\ell) = c\tanh(\ell/c)` (Gemma-2/3's
            ``final_logit_softcapping``), applied after ``scale``; None: no capping.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        scale: float | None = None,
        softcap: float | None = None,
    ) -> None:
        if weight.dim() != 2:
            raise ValueError(f"head weight must be (vocab, hidden_size), got {tuple(weight.shape)}")
        self.weight = weight
        self.bias = bias
        self.scale = None if scale is None or float(scale) == 1.0 else float(scale)
        self.softcap = None if softcap is None else float(softcap)

    @property
    def vocab_size(self) -> int:
        """Rows of W (the vocabulary size)."""
        return self.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        """Columns of W: d, the pre-logit dimension."""
        return self.weight.shape[1]

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """W x + b for x of shape (..., d) → (..., V), before the transform g."""
        return F.linear(x, self.weight, self.bias)

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        """g: the model's own post-head transform (scale, then soft-cap)."""
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """g(W x + b) for x of shape (..., d) → (..., V)."""
        return self.transform(self.linear(x))

    @classmethod
    def from_model(cls, model: Any) -> OutputHead:
        """The head of a ``transformers`` causal LM, with the transform named by its config."""
        emb = model.get_output_embeddings()
        if emb is None or not hasattr(emb, "weight"):
            raise UnsupportedModelError(
                f"{type(model).__name__}.get_output_embeddings() returned {emb!r}; a causal LM "
                "with a linear output head is required"
            )
        cfg = model.config
        cfgs = [cfg] + [c for c in (getattr(cfg, "text_config", None),) if c is not None]

        def find(names: tuple[str, ...]) -> float | None:
            for c in cfgs:
                for name in names:
                    val = getattr(c, name, None)
                    if val is not None and not isinstance(val, bool):
                        return float(val)
            return None

        softcap = find(_SOFTCAP_ATTRS)
        mult = find(_MULTIPLY_ATTRS)
        div = find(_DIVIDE_ATTRS)
        scale = None
        if mult is not None:
            scale = mult
        if div is not None:
            scale = (scale or 1.0) / div
        return cls(emb.weight, getattr(emb, "bias", None), scale=scale, softcap=softcap)

    def describe(self) -> str:
        """The head as a formula, e.g. ``W z + b`` or ``30·tanh(W z/30)``."""
        parts = ["W z + b" if self.bias is not None else "W z"]
        s = parts[0]
        if self.scale is not None:
            s = f"{self.scale:g}·({s})"
        if self.softcap is not None:
            s = f"{self.softcap:g}·tanh({s}/{self.softcap:g})"
        return s


def _backbone(model: Any) -> Any:
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no separate backbone (model.base_model); cannot read "
            "its pre-logits"
        )
    return base


def verify_head(model: Any, head: OutputHead, *, num_tokens: int = 6) -> float:
    """Check that ``head(backbone(ids).last_hidden_state)`` equals ``model(ids).logits``.

    Runs the model on a short fixed input. Returns the max absolute difference.

    Raises:
        UnsupportedModelError: naming the architecture and the size of the mismatch.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    vocab = head.vocab_size
    ids = (torch.arange(num_tokens, device=device) * 7 + 3) % vocab
    ids = ids.unsqueeze(0)
    with torch.inference_mode():
        full = model(input_ids=ids, use_cache=False).logits.float()
        z = _backbone(model)(input_ids=ids, use_cache=False).last_hidden_state
        ours = head(z).float()
    if full.shape != ours.shape:
        raise UnsupportedModelError(
            f"{type(model).__name__}: logits have shape {tuple(full.shape)} but the head applied "
            f"to the backbone's last hidden state gives {tuple(ours.shape)}"
        )
    err = float((full - ours).abs().max())
    tol = (1e-3 if dtype == torch.float32 else 5e-2) * (1.0 + float(full.abs().max()))
    if not math.isfinite(err) or err > tol:
        raise UnsupportedModelError(
            f"{type(model).__name__} ({model.config.model_type}): its logits differ from "
            f"{head.describe()} of the backbone's last hidden state by up to {err:.3g} (allowed "
            f"{tol:.3g}). The model transforms its logits or hidden states in a way ctrlalign "
            "does not know (known: final_logit_softcapping, logit_scale, logits_scaling), so "
            "the control would not act on the true pre-logit. Supported: Llama-family, GPT-2, "
            "Qwen2, Gemma-2/3 and others whose head is a plain linear layer."
        )
    return err


# --------------------------------------------------------------------------------------------
# the eager engine


class Prefix(NamedTuple):
    """A block of D' prompts prefilled together by :class:`EagerEngine` (left-padded to L).

    Attributes:
        cache: the ``transformers`` KV cache of the D' prompts (D' rows, length L). Never
            modified (a decode extends a copy).
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


class EagerEngine(Engine):
    r"""The reference engine: the ``transformers`` module itself with a dynamic KV cache.

    Any architecture :class:`CausalLM` accepts, on any device. :meth:`prefill` returns a tuple
    of :class:`Prefix` blocks; :meth:`decode` copies a block's cache to D'·n rows and decodes
    T tokens step by step: from pre-logits z_t (B', d) it forms the controlled logits
    :math:`g(W(z_t+v_t)+b)` for t ≤ τ and :math:`g(Wz_t+b)` after, and the base logits
    :math:`g(Wz_t+b)`. For t ≤ τ the two are one head matmul over the stacked rows
    [z+v; z] (2B', d), so W is read once; with ``base_logprobs=False`` the base logits are not
    computed. Only one step's logits (≤ 2B' × V) exist at a time. A control that is constant
    in time may be a stride-0 view (D, n, τ, d): rows are taken as (B', τ, d) views and one
    (B', d) slice per step, never a copy of the whole tensor.

    Batching, and what it costs (``batch_invariant``):

    * ``False`` (default): one block of all D prompts, left-padded to the longest, decoded as
      B = D·n rows at once. Fast, but a prompt's floating-point results depend on its batch:
      the padding changes the attention reductions' length and order, and the row count M of
      every GEMM can change the BLAS kernel (one-threaded MKL sgemm on AVX-512 rounds a row
      differently for M ≤ 3 than for M ≥ 4). Tokens agree with the prompt decoded alone *in distribution* and almost
      always exactly; logprobs agree to rounding.
    * ``True``: D blocks of one prompt each, unpadded, prefilled and decoded one after the
      other with n rows. Prompt j's computation is then the very same sequence of kernels on
      the same shapes and values whether it is decoded alone or in any batch at any position,
      so its tokens, logprobs and base logprobs are **bitwise** identical, for any n, dtype
      and thread count, wherever kernels are deterministic for equal inputs and shapes (the
      CPU). It costs about 2× at n = 8: the weights are read once per prompt and step instead
      of once per step (SmolLM2-135M, float32, one thread, D = 4, n = 8, T = 32: 131.5 →
      70.0 tok/s, ``benchmarks/cpu_batch_invariance.py speed``); the gap should shrink as n grows and
      each prompt's GEMMs get taller (not measured).

    A cheaper exact scheme was measured and not adopted: batched GEMMs with attention run per
    prompt on its unpadded keys cost 13% at the setting above and are bitwise with one thread,
    but not with two — MKL's sgemm rounds a row differently depending on the row count M when
    multi-threaded (with 2 threads, M ∈ {1, 2, 3, 5, 6, 7, 9, 10, 11} differ from larger M),
    so it would promise less than this one.

    Args:
        model: the ``transformers`` causal LM (its ``base_model`` is run).
        batch_invariant: decode prompt by prompt (see above).
    """

    def __init__(self, model: Any, *, batch_invariant: bool = False) -> None:
        if not isinstance(batch_invariant, bool):
            raise ConfigError(f"batch_invariant must be True or False, got {batch_invariant!r}")
        self.model = model
        self.backbone = _backbone(model)
        self.head = OutputHead.from_model(model)
        self.batch_invariant = batch_invariant

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
            cache=out.past_key_values,
            hidden=out.last_hidden_state[:, -1].clone(),
            attention_mask=attention_mask,
            next_position=attention_mask.sum(-1),
        )

    # ---------------------------------------------------------------- decode
    def decode(
        self,
        prefix: Sequence[Prefix],
        controls: torch.Tensor | None,
        uniforms: torch.Tensor,
        config: SamplingConfig,
        *,
        num_samples: int,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        base_logprobs: bool = True,
    ) -> DecodeResult:
        """Decode each prefix block in turn; see :meth:`Engine.decode` for the arguments.

        Block b of D_b prompts starting at prompt j0 decodes rows j0·n … (j0+D_b)·n − 1 with
        controls[j0:j0+D_b] and uniforms[j0:j0+D_b] (views, not copies)."""
        D = sum(block.num_prompts for block in prefix)
        n = int(num_samples)
        check_decode_inputs(D, n, self.head.hidden_size, controls, uniforms, config)
        eos = eos_list(eos_token_ids)
        parts, j0 = [], 0
        for block in prefix:
            j1 = j0 + block.num_prompts
            parts.append(
                self._decode_block(
                    block,
                    None if controls is None else controls[j0:j1],
                    uniforms[j0:j1],
                    config,
                    num_samples=n,
                    eos_token_ids=eos,
                    pad_token_id=pad_token_id,
                    base_logprobs=base_logprobs,
                )
            )
            j0 = j1
        if len(parts) == 1:
            return parts[0]
        return DecodeResult(
            tokens=torch.cat([p.tokens for p in parts]),
            lengths=torch.cat([p.lengths for p in parts]),
            logprobs=torch.cat([p.logprobs for p in parts]),
            base_logprobs=None if not base_logprobs else torch.cat([p.base_logprobs for p in parts]),
        )

    @staticmethod
    def row_controls(controls: torch.Tensor | None) -> torch.Tensor | None:
        """Controls (D', n, τ, d) as rows (D'·n, τ, d): a view (no copy) whenever the (D', n)
        dims merge, which includes the contiguous case and the stride-0-in-τ expanded one."""
        if controls is None:
            return None
        D, n, tau, d = controls.shape
        return controls.reshape(D * n, tau, d)

    @torch.inference_mode()
    def _decode_block(
        self,
        prefix: Prefix,
        controls: torch.Tensor | None,
        uniforms: torch.Tensor,
        config: SamplingConfig,
        *,
        num_samples: int,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        base_logprobs: bool,
    ) -> DecodeResult:
        """Decode B' = D'·n rows of one block, controls (D', n, τ, d) or None, uniforms
        (D', n, T) → :class:`DecodeResult` of B' rows."""
        n = num_samples
        D, L = prefix.attention_mask.shape
        B = D * n
        T = config.max_new_tokens
        device = prefix.hidden.device
        ctrl = self.row_controls(controls)  # (B, τ, d) view
        tau = 0 if ctrl is None else ctrl.shape[1]
        u = uniforms.reshape(B, T)

        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(n)
        z = prefix.hidden.repeat_interleave(n, dim=0)  # (B, d)
        mask = torch.ones(B, L + T, dtype=prefix.attention_mask.dtype, device=device)
        mask[:, :L] = prefix.attention_mask.repeat_interleave(n, dim=0)
        pos = prefix.next_position.repeat_interleave(n, dim=0)  # (B,)
        eos = torch.as_tensor(list(eos_token_ids), dtype=torch.long, device=device)
        use_eos = not config.ignore_eos and eos.numel() > 0

        tokens = torch.full((B, T), pad_token_id, dtype=torch.long, device=device)
        logprobs = torch.zeros(B, T, dtype=torch.float32, device=device)
        base_lp = torch.zeros(B, T, dtype=torch.float32, device=device) if base_logprobs else None
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        head = self.head

        for t in range(T):
            if t < tau:
                zv = z + ctrl[:, t]
                if base_logprobs:
                    both = head(torch.cat([zv, z], dim=0))  # (2B, V): W read once
                    logits, base = both[:B], both[B:]
                else:
                    logits, base = head(zv), None
            else:
                logits = head(z)
                base = logits if base_logprobs else None
            # after the horizon base is logits: sample_with_logprobs reuses lp, no second pass
            tok, lp, blp = sample_with_logprobs(logits, u[:, t], config, base_logits=base)
            alive = ~finished
            if use_eos:
                tok = torch.where(alive, tok, pad_token_id)
                lp = torch.where(alive, lp, 0.0)
                if blp is not None:
                    blp = torch.where(alive, blp, 0.0)
            tokens[:, t] = tok
            logprobs[:, t] = lp
            if base_lp is not None:
                base_lp[:, t] = blp
            lengths += alive.long()
            if use_eos:
                finished |= torch.isin(tok, eos)
                if bool(finished.all()):
                    break
            if t == T - 1:
                break
            out = self.backbone(
                input_ids=tok.unsqueeze(1),
                attention_mask=mask[:, : L + t + 1],
                position_ids=(pos + t).unsqueeze(1),
                past_key_values=cache,
                use_cache=True,
            )
            z = out.last_hidden_state[:, -1]
        return DecodeResult(tokens, lengths, logprobs, base_lp)


def eager_decode(
    model: Any,
    head: OutputHead,
    prefix: Prefix,
    controls: torch.Tensor | None,
    uniforms: torch.Tensor,
    config: SamplingConfig,
    *,
    num_samples: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    base_logprobs: bool = True,
) -> DecodeResult:
    """The former function form of :class:`EagerEngine` (kept for old callers): decode one
    :class:`Prefix` block with controls (B, τ, d) or None and uniforms (B, T), B = D'·n.
    ``head`` must be ``OutputHead.from_model(model)``."""
    n = int(num_samples)
    D = prefix.num_prompts
    T = config.max_new_tokens
    ctrl = None if controls is None else controls.reshape(D, n, controls.shape[1], controls.shape[2])
    return EagerEngine(model).decode(
        (prefix,), ctrl, uniforms.reshape(D, n, T), config, num_samples=n,
        eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, base_logprobs=base_logprobs,
    )


#: a function or class that builds an :class:`Engine`: ``factory(model, **engine_options)``.
EngineFactory = Callable[..., Engine]

#: engine name → factory, called as ``factory(model, **engine_options)``.
ENGINES: dict[str, EngineFactory] = {
    "eager": EagerEngine,
    "static": functools.partial(StaticEngine, grow=True),
}


def register_engine(name: str, factory: EngineFactory) -> None:
    """Make ``CausalLM(..., engine=name, engine_options=opts)`` use ``factory(model, **opts)``,
    an :class:`Engine` subclass or any callable returning an :class:`Engine`."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"engine name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise ConfigError(f"engine factory must be an Engine class or a callable, got {factory!r}")
    ENGINES[name] = factory


# --------------------------------------------------------------------------------------------
# the dynamics


@dataclass
class CausalLMContext:
    """What :meth:`CausalLM.prepare` returns for D prompts; reused by every rollout of a run.

    Attributes:
        prompts: the D prompts as given.
        texts: the D prompt strings fed to the tokenizer (after the chat template).
        input_ids: (D, L) left-padded token ids (on the CPU).
        attention_mask: (D, L) long, 0 on the left padding (on the CPU).
        prompt_lengths: (D,) real (unpadded) prompt lengths.
        prefix: what the engine's :meth:`~ctrlalign.dynamics.engine.Engine.prefill` returned
            (its KV cache of the prompts and z_1 (D, d)); only that engine reads it.
    """

    prompts: list[Any]
    texts: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_lengths: torch.Tensor
    prefix: Any

    @property
    def num_prompts(self) -> int:
        """D, prompts in this context."""
        return self.input_ids.shape[0]


def _as_list(x: Any) -> list[int]:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return [int(v) for v in x]
    if isinstance(x, torch.Tensor):
        return [int(v) for v in x.flatten().tolist()]
    return [int(x)]


def make_engine(engine: str | Engine, model: Any, options: dict[str, Any]) -> tuple[Engine, str]:
    """The engine object and its name for ``CausalLM(engine=..., engine_options=...)``.

    ``engine`` is a name in :data:`ENGINES` (built by ``ENGINES[name](model, **options)``) or
    an :class:`Engine` instance (then ``options`` must be empty).

    Raises:
        ConfigError: an unknown name, a non-engine, options the factory does not accept, or
            a model the engine cannot run (naming the engine and the reason).
    """
    if isinstance(engine, Engine):
        if options:
            raise ConfigError(
                f"engine_options {sorted(options)} apply only to an engine given by name; "
                f"configure the {type(engine).__name__} instance itself"
            )
        return engine, type(engine).__name__
    if not isinstance(engine, str):
        raise ConfigError(f"engine must be a name in {sorted(ENGINES)} or an Engine instance, got {engine!r}")
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {sorted(ENGINES)} or an Engine instance, got {engine!r}")
    factory = ENGINES[engine]
    try:
        built = factory(model, **options)
    except TypeError as e:  # an option the factory has no parameter for
        raise ConfigError(f"engine={engine!r} does not accept engine_options {sorted(options)}: {e}") from e
    except NotImplementedError as e:  # an architecture the engine does not implement
        raise ConfigError(f"engine={engine!r}: {e}") from e
    if not isinstance(built, Engine):
        raise ConfigError(f"ENGINES[{engine!r}] returned {type(built).__name__}, not an Engine")
    return built, engine


class CausalLM(Dynamics):
    r"""A ``transformers`` causal LM whose pre-logits z_t (d = ``hidden_size``) receive controls.

    Logits :math:`g(W(z_t+v_t)+b)` for t ≤ τ = ``controls.shape[2]`` and :math:`g(Wz_t+b)`
    after (see the module docstring for g); tokens are sampled per
    :class:`~ctrlalign.dynamics.decoding.SamplingConfig`. ``max_horizon`` = T =
    ``sampling.max_new_tokens``.

    **What a prompt's result depends on.** Prompt j's samples are a function of its text, its
    controls V_j (n, τ, d) and its uniforms U_j (n, T) from ``generators[j]`` — never of the
    other prompts' randomness. How exactly that holds depends on the engine:

    * ``engine="eager", engine_options={"batch_invariant": True}``: **bitwise**. Each prompt
      is prefilled without padding and decoded on its own n rows, so its tokens, logprobs and
      base logprobs are identical, bit for bit, whether it is decoded alone or in any batch at
      any position, for any n, in any dtype and with any number of threads, as long as the
      kernels are deterministic for equal inputs and shapes: tested on the CPU in float32
      (four architectures, and SmolLM2-135M at 8 prompts × 8 samples × 16 tokens) and
      bfloat16. On a GPU the same argument holds where cuBLAS/SDPA are deterministic for a
      fixed shape (not tested here). It costs about 2× on CPU at n = 8 (see
      :class:`EagerEngine`), which is why it is not the default.
    * ``engine="eager"`` (default) and ``engine="static"``: **in distribution**. All D·n rows
      share left-padded attention and GEMMs whose rounding depends on the batch (padding
      length, GEMM row count and kernel choice), so prompt j's logits differ from its lone
      run by rounding (float32 ~1e-6 relative, bfloat16 ~1e-2). With the same uniforms the
      sampled token is the same unless rounding moves a cumulative probability across u_t:
      SmolLM2-135M, float32, CPU, 8 prompts × 8 samples × 16 tokens, alone vs batched, 3 of
      64 samples differ in some token and all 64 in some logprob bit
      (``benchmarks/cpu_batch_invariance.py invariance``); issue #12 measured 58 of 64 in
      bfloat16. Each sample is still an exact inverse-CDF draw from the model's distribution
      as computed in its batch, so a prompt's results agree with its lone run in
      distribution, up to that rounding of the probabilities.

    Args:
        model: an ``AutoModelForCausalLM`` (any device and dtype; put in eval mode).
        tokenizer: its tokenizer.
        sampling: how tokens are drawn (T, temperature, top-k/p, greedy, ignore_eos).
        chat_template: apply the tokenizer's chat template to prompts; None: when it has one.
            Prompts are strings (one user message) or lists of ``{"role", "content"}``
            messages (which need a template).
        base_logprobs: also report the uncontrolled head's per-token log-probabilities (one
            extra (B, d)×(d, V) of head work per controlled step, fused with the controlled
            one).
        system_prompt: a system message put before string prompts when templating.
        engine: the :class:`~ctrlalign.dynamics.engine.Engine` that prefills and decodes: a
            name in :data:`ENGINES` — ``"eager"`` (:class:`EagerEngine`, the ``transformers``
            module, any architecture), ``"static"``
            (:class:`~ctrlalign.dynamics.static_engine.StaticEngine`: static KV cache and
            CUDA-graph decode steps on a GPU; Llama/Qwen2/Mistral) or one added with
            :func:`register_engine` — or an :class:`~ctrlalign.dynamics.engine.Engine`
            instance.
        engine_options: keyword arguments for the named engine's factory. ``"eager"``:
            ``batch_invariant`` (above and :class:`EagerEngine`). ``"static"``: ``max_batch`` and ``max_length``
            (initial capacity, grown on demand), ``compile`` ("cudagraph", "cudagraph_eager"
            or "none"; default "cudagraph" on CUDA, "none" elsewhere), ``fuse_weights`` and
            ``kv_block``.
        verify: check at construction that the backbone's last hidden state through the head
            reproduces the model's logits (one tiny forward pass); refuses the model if not.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        sampling: SamplingConfig = SamplingConfig(),  # noqa: B008 (frozen, immutable)
        chat_template: bool | None = None,
        base_logprobs: bool = True,
        system_prompt: str | None = None,
        engine: str | Engine = "eager",
        verify: bool = True,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(sampling, SamplingConfig):
            raise ConfigError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
        self.engine_options = dict(engine_options or {})
        self.engine, self.engine_name = make_engine(engine, model, self.engine_options)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template and not has_template:
            raise ConfigError(
                "chat_template=True but the tokenizer has no chat template; pass "
                "chat_template=None (auto) or False"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.chat_template = has_template if chat_template is None else bool(chat_template)
        self.base_logprobs = bool(base_logprobs)
        self.system_prompt = system_prompt
        self.head = OutputHead.from_model(model)
        self.hidden_size = self.head.hidden_size
        self.max_horizon = sampling.max_new_tokens
        if verify:
            verify_head(model, self.head)

        gen_cfg = getattr(model, "generation_config", None)
        eos = _as_list(getattr(tokenizer, "eos_token_id", None))
        for e in _as_list(getattr(gen_cfg, "eos_token_id", None)) + _as_list(
            getattr(model.config, "eos_token_id", None)
        ):
            if e not in eos:
                eos.append(e)
        self.eos_token_ids: list[int] = eos
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(gen_cfg, "pad_token_id", None)
        if pad is None:
            pad = eos[0] if eos else 0
        self.pad_token_id = int(pad)

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | None = "default",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **kw: Any,
    ) -> CausalLM:
        """Load a model and wrap it.

        Args:
            name_or_path: "default" or None for the packaged SmolLM2-135M-Instruct, another
                packaged model's name (:data:`ctrlalign.models.PACKAGED_MODELS`, e.g.
                "gemma3-270m"; :func:`ctrlalign.models.load_packaged`), else a Hugging Face id or
                local path.
            device: where to load the weights.
            dtype: the weights' dtype.
            **kw: :class:`CausalLM` keyword arguments (``sampling``, ``chat_template``, ...);
                anything else goes to ``AutoModelForCausalLM.from_pretrained``.
        """
        own = {"sampling", "chat_template", "base_logprobs", "system_prompt", "engine", "verify", "engine_options"}
        mine = {k: kw.pop(k) for k in list(kw) if k in own}
        if name_or_path is None or is_packaged(name_or_path):
            if kw:
                raise ConfigError(f"unexpected keyword arguments for a packaged model: {sorted(kw)}")
            model, tok = load_packaged(name_or_path or "default", device=device, dtype=dtype)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kw)
            tok = AutoTokenizer.from_pretrained(name_or_path)
            model.to(device)
        return cls(model, tok, **mine)

    @property
    def device(self) -> torch.device:
        """The model's device (controls are created there)."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The model's dtype (controls use it)."""
        return next(self.model.parameters()).dtype

    def with_sampling(self, **changes: Any) -> CausalLM:
        """A CausalLM on the same model, tokenizer and engine whose :class:`SamplingConfig` has
        ``changes`` (e.g. ``greedy=True``: the response becomes a function of the controls).
        Contexts from :meth:`prepare` are shared between the two."""
        other = copy.copy(self)
        other.sampling = dataclasses.replace(self.sampling, **changes)
        other.max_horizon = other.sampling.max_new_tokens
        return other

    def head_weight(self) -> torch.Tensor:
        """The output head's W (V, d)."""
        return self.head.weight

    @property
    def vocab_size(self) -> int:
        """The output head's vocabulary size."""
        return self.head.vocab_size

    def __repr__(self) -> str:
        return (
            f"CausalLM({type(self.model).__name__}, d={self.hidden_size}, "
            f"vocab={self.vocab_size}, head={self.head.describe()}, T={self.max_horizon}, "
            f"engine={self.engine_name!r})"
        )

    # ---------------------------------------------------------------- prompts
    def format_prompt(self, prompt: Any) -> tuple[str, bool]:
        """The string fed to the tokenizer for one prompt, and whether to add special tokens."""
        if isinstance(prompt, str):
            if not self.chat_template:
                return prompt, True
            messages = [{"role": "user", "content": prompt}]
            if self.system_prompt is not None:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
        elif isinstance(prompt, (list, tuple)) and all(
            isinstance(m, dict) and "role" in m and "content" in m for m in prompt
        ):
            if not self.chat_template:
                raise ConfigError(
                    "a prompt given as chat messages needs a chat template, but "
                    + (
                        "chat_template=False"
                        if getattr(self.tokenizer, "chat_template", None)
                        else "the tokenizer has none"
                    )
                    + "; pass a string prompt instead"
                )
            messages = list(prompt)
        else:
            raise ConfigError(
                "each prompt must be a string or a list of {'role', 'content'} messages, "
                f"got {type(prompt).__name__}: {prompt!r:.80}"
            )
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return text, False

    def tokenize(self, prompts: Sequence[Any]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Left-padded token ids of D prompts.

        Returns:
            ``(texts, input_ids (D, L), attention_mask (D, L))``.
        """
        if isinstance(prompts, (str, dict)) or len(prompts) == 0:
            raise ConfigError(
                f"prompts must be a non-empty sequence of prompts, got {type(prompts).__name__}"
            )
        texts, rows = [], []
        for j, p in enumerate(prompts):
            text, special = self.format_prompt(p)
            ids = self.tokenizer(text, add_special_tokens=special)["input_ids"]
            if len(ids) == 0:
                raise ConfigError(f"prompt {j} ({p!r:.60}) is empty after tokenisation")
            texts.append(text)
            rows.append(list(ids))
        L = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), L), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, L - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[j, L - len(r) :] = 1
        return texts, input_ids, mask

    # ---------------------------------------------------------------- Dynamics API
    def prepare(self, prompts: Sequence[Any]) -> CausalLMContext:
        """Tokenise and left-pad D prompts (D, L), and prefill them once with the engine;
        returns the context every rollout of the run reuses."""
        texts, input_ids, mask = self.tokenize(prompts)
        dev = self.device
        with torch.inference_mode():
            prefix = self.engine.prefill(input_ids.to(dev), mask.to(dev))
        return CausalLMContext(list(prompts), texts, input_ids, mask, mask.sum(-1), prefix)

    def draw_uniforms(
        self, generators: Sequence[Any], num_samples: int
    ) -> torch.Tensor:
        """(D, n, T) uniforms: prompt j's (n, T) block from ``torch.rand(generator=generators[j])``."""
        T = self.sampling.max_new_tokens
        blocks = []
        for g in generators:
            g = getattr(g, "rollout", g)  # accept ctrlalign.random.PromptGenerators
            blocks.append(torch.rand((num_samples, T), generator=g, device=g.device).to(self.device))
        return torch.stack(blocks)

    def rollout(
        self,
        context: CausalLMContext,
        controls: torch.Tensor | None,
        generators: Sequence[torch.Generator],
        num_samples: int,
    ) -> Outcomes:
        """Decode n samples for each of D prompts under controls V (D, n, τ, d) or None.

        ``generators[j]`` (a ``torch.Generator``, or a
        :class:`~ctrlalign.random.PromptGenerators` whose ``rollout`` stream is used) supplies
        prompt j's uniforms (n, T). Returns :class:`Outcomes` with tokens, lengths, texts,
        logprobs and (if ``base_logprobs``) base_logprobs, each (D, n, ...).
        """
        if not isinstance(context, CausalLMContext):
            raise TypeError(
                f"context must be what CausalLM.prepare returned, got {type(context).__name__}"
            )
        D = context.num_prompts
        n = check_int("num_samples", num_samples, minimum=1, symbol="n")
        if len(generators) != D:
            raise ConfigError(f"need one generator per prompt: {D} prompts, got {len(generators)}")
        self.check_controls(controls, D, n)
        T = self.sampling.max_new_tokens
        uniforms = self.draw_uniforms(generators, n)  # (D, n, T)
        if controls is not None:  # no copy when dtype and device already match
            controls = controls.to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            res = self.engine.decode(
                context.prefix,
                controls,
                uniforms,
                self.sampling,
                num_samples=n,
                eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id,
                base_logprobs=self.base_logprobs,
            )
        tokens = res.tokens.cpu()
        lengths = res.lengths.cpu()
        texts_flat = self.tokenizer.batch_decode(
            [tokens[b, : int(lengths[b])].tolist() for b in range(D * n)],
            skip_special_tokens=True,
        )
        texts = [texts_flat[j * n : (j + 1) * n] for j in range(D)]
        return Outcomes(
            num_prompts=D,
            num_samples=n,
            tokens=tokens.reshape(D, n, T),
            lengths=lengths.reshape(D, n),
            texts=texts,
            logprobs=res.logprobs.cpu().reshape(D, n, T),
            base_logprobs=None
            if res.base_logprobs is None
            else res.base_logprobs.cpu().reshape(D, n, T),
            extras={"prompt_lengths": context.prompt_lengths.clone()},
        )
