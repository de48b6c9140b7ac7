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
one), left-pads them, and prefills each prompt **once**, keeping the KV cache (D rows) and
:math:`z_1` (D, d) in the context. :meth:`CausalLM.rollout` reuses that context for every
iteration: the engine copies the cache to B = D·n rows (row ``j*n + i`` is sample i of
prompt j) and decodes T = ``max_new_tokens`` tokens following the contract of
:mod:`ctrlalign.dynamics.decoding` (inverse-CDF sampling with per-prompt uniforms (D, n, T)
drawn from ``generators[j]``).

Engines are plain functions (see :data:`ENGINES`, :func:`register_engine`) with the
signature of :func:`eager_decode`; ``CausalLM(..., engine="eager")`` picks one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .._checks import ConfigError, check_int
from .base import Dynamics, Outcomes
from .decoding import DecodeResult, SamplingConfig, sample_with_logprobs

__all__ = [
    "ENGINES",
    "CausalLM",
    "CausalLMContext",
    "OutputHead",
    "Prefix",
    "UnsupportedModelError",
    "eager_decode",
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
# the prefix and the engines


class Prefix(NamedTuple):
    """A prefilled batch of D left-padded prompts, shared by every rollout of a run.

    Attributes:
        cache: the ``transformers`` KV cache of the D prompts (D rows, length L). Engines
            must not modify it (copy before extending).
        hidden: z_1, (D, d): the pre-logit after the last prompt token.
        attention_mask: (D, L) long, 0 on left padding.
        next_position: (D,) long, the position id of the first generated token (= the number
            of real prompt tokens).
    """

    cache: Any
    hidden: torch.Tensor
    attention_mask: torch.Tensor
    next_position: torch.Tensor


#: an engine decodes B = D·n rows from a :class:`Prefix`; see :func:`eager_decode`.
Engine = Callable[..., DecodeResult]


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
    r"""Decode B = D·n rows step by step with a dynamic KV cache (the reference engine).

    At step t = 1..T, from pre-logits z_t (B, d):
    controlled logits :math:`g(W(z_t+v_t)+b)` for t ≤ τ and :math:`g(Wz_t+b)` after; base
    logits :math:`g(Wz_t+b)`. For t ≤ τ the two are computed in one head matmul over the
    stacked rows [z+v; z] (2B, d), so W is read once; with ``base_logprobs=False`` the base
    logits are not computed at all. Only one step's logits (≤ 2B × V) exist at a time.

    Args:
        model: the ``transformers`` causal LM (its ``base_model`` is run).
        head: the :class:`OutputHead`.
        prefix: the prefilled D prompts; not modified.
        controls: (B, τ, d) controls in the model's dtype and device, or None.
        uniforms: (B, T) pre-drawn uniforms in [0, 1), row ``j*n+i`` from prompt j's generator.
        config: :class:`SamplingConfig` (T = ``config.max_new_tokens``).
        num_samples: n; B = D·n.
        eos_token_ids: tokens that end a row (ignored with ``config.ignore_eos``).
        pad_token_id: written after a row's EOS.
        base_logprobs: also return the uncontrolled head's log-probabilities.

    Returns:
        :class:`DecodeResult` with tokens (B, T), lengths (B,), logprobs (B, T) and
        base_logprobs (B, T) or None.
    """
    n = num_samples
    D, L = prefix.attention_mask.shape
    B = D * n
    T = config.max_new_tokens
    device = prefix.hidden.device
    if tuple(uniforms.shape) != (B, T):
        raise ValueError(f"uniforms must have shape (B={B}, T={T}), got {tuple(uniforms.shape)}")
    tau = 0 if controls is None else controls.shape[1]
    if controls is not None and (controls.shape[0] != B or tau > T):
        raise ValueError(f"controls must have shape (B={B}, τ<={T}, d), got {tuple(controls.shape)}")

    backbone = _backbone(model)
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

    for t in range(T):
        if t < tau:
            zv = z + controls[:, t]
            if base_logprobs:
                both = head(torch.cat([zv, z], dim=0))  # (2B, V): W read once
                logits, base = both[:B], both[B:]
            else:
                logits, base = head(zv), None
        else:
            logits = head(z)
            base = logits if base_logprobs else None
        # after the horizon base is logits: sample_with_logprobs reuses lp, no second pass
        tok, lp, blp = sample_with_logprobs(logits, uniforms[:, t], config, base_logits=base)
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
        out = backbone(
            input_ids=tok.unsqueeze(1),
            attention_mask=mask[:, : L + t + 1],
            position_ids=(pos + t).unsqueeze(1),
            past_key_values=cache,
            use_cache=True,
        )
        z = out.last_hidden_state[:, -1]
    return DecodeResult(tokens, lengths, logprobs, base_lp)


#: engine name → decode function with the signature of :func:`eager_decode`.
ENGINES: dict[str, Engine] = {"eager": eager_decode}


def register_engine(name: str, engine: Engine) -> None:
    """Make ``CausalLM(..., engine=name)`` use ``engine`` (signature of :func:`eager_decode`)."""
    ENGINES[name] = engine


# --------------------------------------------------------------------------------------------
# the dynamics


@dataclass
class CausalLMContext:
    """What :meth:`CausalLM.prepare` returns for D prompts; reused by every rollout of a run.

    Attributes:
        prompts: the D prompts as given.
        texts: the D prompt strings fed to the tokenizer (after the chat template).
        input_ids: (D, L) left-padded token ids.
        prompt_lengths: (D,) real (unpadded) prompt lengths.
        prefix: the prefilled :class:`Prefix` (KV cache and z_1).
    """

    prompts: list[Any]
    texts: list[str]
    input_ids: torch.Tensor
    prompt_lengths: torch.Tensor
    prefix: Prefix

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


class CausalLM(Dynamics):
    r"""A ``transformers`` causal LM whose pre-logits z_t (d = ``hidden_size``) receive controls.

    Logits :math:`g(W(z_t+v_t)+b)` for t ≤ τ = ``controls.shape[2]`` and :math:`g(Wz_t+b)`
    after (see the module docstring for g); tokens are sampled per
    :class:`~ctrlalign.dynamics.decoding.SamplingConfig`. ``max_horizon`` = T =
    ``sampling.max_new_tokens``.

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
        engine: name of the decode engine in :data:`ENGINES` ("eager"), ``"static"`` (the
            static-KV-cache engine of :mod:`~ctrlalign.dynamics.static_engine`, with CUDA-graph
            decode steps on a GPU; Llama/Qwen2/Mistral), or a function with the signature of
            :func:`eager_decode`.
        engine_options: for ``engine="static"``: ``max_batch`` (initial capacity in rows,
            grown on demand), ``compile`` ("cudagraph", "cudagraph_eager" or "none"; default
            "cudagraph" on CUDA, "none" elsewhere), ``fuse_weights`` and ``kv_block`` (see
            :class:`~ctrlalign.dynamics.static_engine.StaticEngine`).
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
        self._static: Any = None
        self.engine_options = dict(engine_options or {})
        if engine == "static":
            from .static_engine import SUPPORTED_MODEL_TYPES

            mt = getattr(model.config, "model_type", type(model).__name__)
            if mt not in SUPPORTED_MODEL_TYPES:
                raise ConfigError(
                    f"engine='static' supports model types {SUPPORTED_MODEL_TYPES}, got {mt!r}; "
                    "use engine='eager' for this architecture"
                )
            self._engine = None  # type: ignore[assignment]
            self.engine_name = "static"
        elif isinstance(engine, str):
            if engine not in ENGINES:
                raise ConfigError(f"engine must be one of {sorted(ENGINES) + ['static']}, got {engine!r}")
            self._engine: Engine = ENGINES[engine]
            self.engine_name = engine
        elif callable(engine):
            self._engine = engine
            self.engine_name = getattr(engine, "__name__", "custom")
        else:
            raise ConfigError(f"engine must be a name in {sorted(ENGINES)} or a function, got {engine!r}")
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
            name_or_path: "default" or None for the packaged SmolLM2-135M-Instruct
                (:func:`ctrlalign.models.load_default`), else a Hugging Face id or local path.
            device: where to load the weights.
            dtype: the weights' dtype.
            **kw: :class:`CausalLM` keyword arguments (``sampling``, ``chat_template``, ...);
                anything else goes to ``AutoModelForCausalLM.from_pretrained``.
        """
        own = {"sampling", "chat_template", "base_logprobs", "system_prompt", "engine", "verify", "engine_options"}
        mine = {k: kw.pop(k) for k in list(kw) if k in own}
        if name_or_path is None or name_or_path == "default":
            from ..models import load_default

            if kw:
                raise ConfigError(f"unexpected keyword arguments for the default model: {sorted(kw)}")
            model, tok = load_default(device=device, dtype=dtype)
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

    def _static_engine(self, rows: int, length: int) -> Any:
        """The static engine, (re)built when ``rows`` (D·n) or ``length`` (P + T) exceed it."""
        eng = self._static
        if eng is None or rows > eng.max_batch or length > eng.max_length:
            from .static_engine import StaticEngine

            opts = dict(self.engine_options)
            cap = max(rows, int(opts.pop("max_batch", 64)), 0 if eng is None else eng.max_batch)
            max_len = max(length, 0 if eng is None else eng.max_length)
            max_len = -(-max_len // 64) * 64  # room to grow: round up to a multiple of 64
            compile_mode = opts.pop("compile", "cudagraph" if self.device.type == "cuda" else "none")
            extra = {k: opts.pop(k) for k in ("fuse_weights", "kv_block") if k in opts}
            if opts:
                raise ConfigError(f"unknown engine_options for engine='static': {sorted(opts)}")
            if eng is not None:
                eng.clear()
            eng = StaticEngine(self.model, max_batch=cap, max_length=max_len, dtype=self.dtype,
                               compile=compile_mode, **extra)
            self._static = eng
        return eng

    # ---------------------------------------------------------------- Dynamics API
    def prepare(self, prompts: Sequence[Any]) -> CausalLMContext:
        """Tokenise, left-pad and prefill D prompts once; returns the reusable context."""
        texts, input_ids, mask = self.tokenize(prompts)
        dev = self.device
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        if self.engine_name == "static":
            eng = self._static_engine(input_ids.shape[0], input_ids.shape[1] + self.sampling.max_new_tokens)
            with torch.inference_mode():
                prefix = eng.prefill(input_ids, mask)
            return CausalLMContext(list(prompts), texts, input_ids, mask.sum(-1).cpu(), prefix)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = _backbone(self.model)(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=True,
            )
        lengths = mask.sum(-1)
        prefix = Prefix(
            cache=out.past_key_values,
            hidden=out.last_hidden_state[:, -1].clone(),
            attention_mask=mask,
            next_position=lengths.clone(),
        )
        return CausalLMContext(list(prompts), texts, input_ids, lengths.cpu(), prefix)

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
        uniforms = self.draw_uniforms(generators, n).reshape(D * n, T)
        ctrl = None
        if controls is not None:
            ctrl = controls.to(device=self.device, dtype=self.dtype).reshape(
                D * n, controls.shape[2], self.hidden_size
            )
        if self.engine_name == "static":
            eng = self._static_engine(D * n, context.input_ids.shape[1] + T)
            with torch.inference_mode():
                res = eng.decode(
                    context.prefix,
                    num_samples=n,
                    controls=None if ctrl is None else ctrl.reshape(D, n, -1, self.hidden_size),
                    uniforms=uniforms.reshape(D, n, T),
                    config=self.sampling,
                    eos_token_id=self.eos_token_ids or None,
                    pad_token_id=self.pad_token_id,
                    base_logprobs=self.base_logprobs,
                )
        else:
            res = None
        with torch.inference_mode():
            res = res if res is not None else self._engine(
                self.model,
                self.head,
                context.prefix,
                ctrl,
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
