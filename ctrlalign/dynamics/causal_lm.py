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
:meth:`~ctrlalign.dynamics.engines.protocol.Engine.prefill` **once**; the prefix it returns
(KV cache, :math:`z_1` (D, d)) lives in the context. A CausalLM is a
:class:`~ctrlalign.dynamics.base.StepwiseDynamics`: :meth:`CausalLM.start` makes B = D·n rows
(row ``j*n + i`` is sample i of prompt j), :meth:`CausalLM.advance` decodes b more tokens of
every row under controls (D, n, b, d) or None with uniforms (D, n, b), :meth:`CausalLM.select`
resamples/forks rows, and :meth:`CausalLM.rollout` is ``start`` + ``advance`` to T with the
uniforms U (D, n, T) drawn from ``generators[j]`` (prompt j's block), following the contract
of :mod:`ctrlalign.dynamics.decoding` (inverse-CDF sampling with the pre-drawn uniforms).

Engines implement one protocol, :class:`~ctrlalign.dynamics.engines.protocol.Engine`:
:class:`~ctrlalign.dynamics.engines.eager.EagerEngine` and
:class:`~ctrlalign.dynamics.engines.static.StaticEngine`; ``CausalLM(engine=...)`` takes a name
in :data:`~ctrlalign.dynamics.engines.registry.ENGINES` (see
:func:`~ctrlalign.dynamics.engines.registry.register_engine`) or an engine instance, and holds
that one object. The output head is :mod:`ctrlalign.dynamics.head`; model loading is
:func:`ctrlalign.models.load_model`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import ConfigError, check_int
from ..data import check_prompt, check_text
from ..models import load_model
from .base import Outcomes, Step, StepwiseDynamics
from .decoding import SamplingConfig
from .engines.protocol import Engine, EngineState, eos_list
from .engines.registry import make_engine
from .head import OutputHead, verify_head

__all__ = ["CausalLM", "CausalLMContext", "CausalLMState", "count_sentence_ends"]

#: a sentence end: terminal punctuation (with closing quotes or brackets) before white space or
#: the end of the text, or a run of line breaks
SENTENCE_END = re.compile(r"[.!?…。！？]+[\"'”’)\]]*(?:\s+|$)|\n+")


def count_sentence_ends(text: str) -> int:
    """Sentence ends in ``text``: runs of ``. ! ? …`` (and the CJK ones), with any closing quotes
    or brackets, followed by white space or the end of the text; and runs of line breaks. A
    period inside a number ("3.5") is not one; an abbreviation's ("e.g. ") is (a heuristic)."""
    return len(SENTENCE_END.findall(text))


@dataclass
class CausalLMContext:
    """What :meth:`CausalLM.prepare` returns for D prompts; reused by every rollout of a run.

    Attributes:
        prompts: the D prompts as given.
        texts: the D prompt strings fed to the tokenizer (after the chat template).
        input_ids: (D, L) left-padded token ids (on the CPU).
        attention_mask: (D, L) long, 0 on the left padding (on the CPU).
        prompt_lengths: (D,) real (unpadded) prompt lengths.
        prefix: what the engine's :meth:`~ctrlalign.dynamics.engines.protocol.Engine.prefill` returned
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


@dataclass(frozen=True)
class CausalLMState:
    """B = D·n partially decoded responses (what :meth:`CausalLM.start`, ``advance`` and
    ``select`` return).

    Attributes:
        context: the :class:`CausalLMContext` the rows continue.
        engine_state: the engine's :class:`~ctrlalign.dynamics.engines.protocol.EngineState`.
    """

    context: CausalLMContext
    engine_state: EngineState

    @property
    def num_prompts(self) -> int:
        """D."""
        return self.engine_state.num_prompts

    @property
    def num_samples(self) -> int:
        """n, rows per prompt."""
        return self.engine_state.num_samples

    @property
    def position(self) -> int:
        """t, tokens decoded so far."""
        return self.engine_state.position

    @property
    def finished(self) -> torch.Tensor:
        """(D, n) bool: the row emitted EOS or has T tokens."""
        return self.engine_state.finished.reshape(self.num_prompts, self.num_samples)

    @property
    def lengths(self) -> torch.Tensor:
        """(D, n) long, generated tokens (EOS included)."""
        return self.engine_state.decoded.lengths.reshape(self.num_prompts, self.num_samples)

    @property
    def tokens(self) -> torch.Tensor:
        """(D, n, t) long, the tokens so far (pad after a row's end)."""
        dec = self.engine_state.decoded
        return dec.tokens.reshape(self.num_prompts, self.num_samples, -1)


class CausalLM(StepwiseDynamics):
    r"""A ``transformers`` causal LM whose pre-logits z_t (d = ``hidden_size``) receive controls.

    Logits :math:`g(W(z_t+v_t)+b)` for t ≤ τ = ``controls.shape[2]`` and :math:`g(Wz_t+b)`
    after (see the module docstring for g); tokens are sampled per
    :class:`~ctrlalign.dynamics.decoding.SamplingConfig`. ``max_horizon`` = T =
    ``sampling.max_new_tokens``.

    **What a prompt's result depends on.** Prompt j's samples are a function of its text, its
    controls V_j (n, τ, d) and its uniforms U_j (n, T) from ``generators[j]`` — never of the
    other prompts' randomness. How exactly that holds depends on the engine:

    * ``engine="eager"`` (default; ``engine_options={"batch_invariant": True}`` is the
      eager engine's default, as for the command line and configs): **bitwise**. Each prompt
      is prefilled without padding and decoded on its own n rows, so its tokens, logprobs and
      base logprobs are identical, bit for bit, whether it is decoded alone or in any batch at
      any position, for any n, in any dtype and with any number of threads, as long as the
      kernels are deterministic for equal inputs and shapes: tested on the CPU in float32
      (four architectures, and SmolLM2-135M at 8 prompts × 8 samples × 16 tokens) and
      bfloat16. On a GPU the same argument holds where cuBLAS/SDPA are deterministic for a
      fixed shape (not tested here). So the same prompts and seed give the same samples from
      :func:`ctrlalign.align`, ``ctrlalign align`` and ``ctrlalign run``, whatever the batch.
      Its cost on CPU is measured in :class:`~ctrlalign.dynamics.engines.eager.EagerEngine`.
    * ``engine_options={"batch_invariant": False}`` and ``engine="static"``: **in
      distribution**. All D·n rows
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
        engine: the :class:`~ctrlalign.dynamics.engines.protocol.Engine` that prefills and
            decodes: a name in :data:`~ctrlalign.dynamics.engines.registry.ENGINES` —
            ``"eager"`` (:class:`~ctrlalign.dynamics.engines.eager.EagerEngine`, the
            ``transformers`` module, any architecture), ``"static"``
            (:class:`~ctrlalign.dynamics.engines.static.StaticEngine`: static KV cache and
            CUDA-graph decode steps on a GPU; Llama/Qwen2/Mistral) or one added with
            :func:`~ctrlalign.dynamics.engines.registry.register_engine` — or an
            :class:`~ctrlalign.dynamics.engines.protocol.Engine` instance.
        engine_options: keyword arguments for the named engine's factory. ``"eager"``:
            ``batch_invariant`` (above and :class:`~ctrlalign.dynamics.engines.eager.EagerEngine`). ``"static"``: ``max_batch`` and ``max_length``
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
        self.system_prompt = None if system_prompt is None else check_text("system_prompt", system_prompt)
        head = getattr(self.engine, "head", None)  # the engine's own head, not a second one
        self.head = head if isinstance(head, OutputHead) else OutputHead.from_model(model)
        self.hidden_size = self.head.hidden_size
        self.max_horizon = sampling.max_new_tokens
        if verify:
            verify_head(model, self.head)

        gen_cfg = getattr(model, "generation_config", None)
        eos = eos_list(getattr(tokenizer, "eos_token_id", None))
        for e in eos_list(getattr(gen_cfg, "eos_token_id", None)) + eos_list(
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
        dtype: torch.dtype | str = torch.float32,
        **kw: Any,
    ) -> CausalLM:
        """Load a model and wrap it.

        Args:
            name_or_path: "default" or None for the packaged SmolLM2-135M-Instruct, another
                packaged model's name (:data:`ctrlalign.models.PACKAGED_MODELS`, e.g.
                "gemma3-270m"), else a Hugging Face id or local path; loaded by
                :func:`ctrlalign.models.load_model`.
            device: where to load the weights.
            dtype: the weights' dtype, or its name; ``"auto"``: bfloat16 where the device computes
                it natively, float32 elsewhere (:func:`ctrlalign.models.resolve_dtype`).
            **kw: :class:`CausalLM` keyword arguments (``sampling``, ``chat_template``, ...);
                anything else goes to ``AutoModelForCausalLM.from_pretrained``.
        """
        own = {"sampling", "chat_template", "base_logprobs", "system_prompt", "engine", "verify", "engine_options"}
        mine = {k: kw.pop(k) for k in list(kw) if k in own}
        model, tok = load_model(name_or_path, device=device, dtype=dtype, **kw)
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

        Raises:
            ConfigError: naming prompt j: empty, whitespace-only, a lone surrogate
                (:func:`ctrlalign.data.check_prompt`), not a string or chat, or no tokens.
        """
        if isinstance(prompts, (str, dict)) or len(prompts) == 0:
            raise ConfigError(
                f"prompts must be a non-empty sequence of prompts, got {type(prompts).__name__}"
            )
        texts, rows = [], []
        for j, p in enumerate(prompts):
            text, special = self.format_prompt(check_prompt(j, p))
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

    def draw_noise(self, generators: Sequence[Any], num_samples: int, steps: int | None = None) -> torch.Tensor:
        """Uniforms U (D, n, steps) (default steps = T), prompt j's (n, steps) block from
        ``torch.rand(generator=generators[j])`` (a :class:`~ctrlalign.random.PromptGenerators`
        gives its ``rollout`` stream)."""
        T = self.sampling.max_new_tokens if steps is None else check_int("steps", steps, minimum=0)
        blocks = []
        for g in generators:
            g = getattr(g, "rollout", g)  # accept ctrlalign.random.PromptGenerators
            blocks.append(torch.rand((num_samples, T), generator=g, device=g.device).to(self.device))
        return torch.stack(blocks)

    def start(self, context: CausalLMContext, num_samples: int) -> CausalLMState:
        """B = D·n rows at t = 0 (row ``j*n + i`` is sample i of prompt j), each continuing its
        prompt's prefilled prefix (the context is not modified and serves any number of starts).
        """
        if not isinstance(context, CausalLMContext):
            raise TypeError(
                f"context must be what CausalLM.prepare returned, got {type(context).__name__}"
            )
        n = check_int("num_samples", num_samples, minimum=1, symbol="n")
        with torch.inference_mode():
            engine_state = self.engine.start(
                context.prefix, n, self.sampling, eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id, base_logprobs=self.base_logprobs,
            )
        return CausalLMState(context, engine_state)

    def advance(
        self, state: CausalLMState, controls: torch.Tensor | None, noise: torch.Tensor
    ) -> tuple[CausalLMState, Step]:
        r"""Decode b = ``noise.shape[2]`` more tokens of every row (consumes ``state``).

        Token s = t+1..t+b of row (j, i) is drawn from :math:`\mathrm{softmax}(g(W(z_s+v_s)+b))`
        with ``controls[j, i, s-t-1]`` = :math:`v_s` (or :math:`g(Wz_s+b)` when ``controls`` is
        None) by inverse CDF with the uniform ``noise[j, i, s-t-1]``.

        Args:
            state: at t, with t + b ≤ T.
            controls: (D, n, b, d) or None; moved to the model's device and dtype (no copy when
                they match).
            noise: uniforms (D, n, b) in [0, 1) (a slice of :meth:`draw_noise`).

        Returns:
            ``(state at t + b, step)``: the :class:`~ctrlalign.dynamics.base.Step` with tokens,
            logprobs (log q), base_logprobs (log p, or None without ``base_logprobs``) and
            alive, each (B, b), on the model's device.
        """
        if controls is not None:  # no copy when dtype and device already match
            controls = controls.to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            engine_state, step = self.engine.advance(state.engine_state, controls, noise.to(self.device))
        return CausalLMState(state.context, engine_state), step

    def select(self, state: CausalLMState, rows: torch.Tensor) -> CausalLMState:
        """New row (j, i) continues old row (j, rows[j, i]); rows (D, n') long in 0..n−1
        (consumes ``state``). The engine gathers the KV cache (the static engine without
        copying the prompts' part)."""
        with torch.inference_mode():
            return CausalLMState(state.context, self.engine.select(state.engine_state, torch.as_tensor(rows)))

    def texts(self, state: CausalLMState) -> list[list[str]]:
        """D lists of n decoded responses so far (special tokens skipped)."""
        dec = state.engine_state.decoded
        tokens, lengths = dec.tokens.cpu(), dec.lengths.cpu()
        D, n = state.num_prompts, state.num_samples
        flat = self.tokenizer.batch_decode(
            [tokens[b, : int(lengths[b])].tolist() for b in range(D * n)], skip_special_tokens=True
        )
        return [flat[j * n : (j + 1) * n] for j in range(D)]

    def sentence_ends(self, state: CausalLMState) -> torch.Tensor:
        """(D, n) long: :func:`count_sentence_ends` of each row's decoded text so far."""
        return torch.tensor([[count_sentence_ends(t) for t in row] for row in self.texts(state)], dtype=torch.long)

    def outcomes(self, state: CausalLMState) -> Outcomes:
        """The rows so far as :class:`Outcomes`: tokens, logprobs and base_logprobs
        (D, n, t), lengths (D, n), texts; on the CPU."""
        dec = state.engine_state.decoded
        D, n, t = state.num_prompts, state.num_samples, state.position
        return Outcomes(
            num_prompts=D,
            num_samples=n,
            tokens=dec.tokens.cpu().reshape(D, n, t),
            lengths=dec.lengths.cpu().reshape(D, n),
            texts=self.texts(state),
            logprobs=dec.logprobs.cpu().reshape(D, n, t),
            base_logprobs=None if dec.base_logprobs is None else dec.base_logprobs.cpu().reshape(D, n, t),
            extras={"prompt_lengths": state.context.prompt_lengths.clone()},
        )
