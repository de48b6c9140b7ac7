"""The llama.cpp engine: the engine checks of ``test_stepwise.py``, what is bitwise, what is
equal in distribution only, and the refusals.

The tiny random Llama of ``conftest.py`` is written to a float32 GGUF file
(:func:`~ctrlalign.dynamics.engines.to_gguf.write_llama_gguf`) and run by llama.cpp, so the
same weights run in torch and in llama.cpp:

* bitwise (within llama.cpp): blocks == one advance, identity select, a forked row continues
  like its source, finished rows, log q = log p uncontrolled; and a rollout's tokens and
  log-probabilities are the shared sampler applied to llama.cpp's logits plus W·v (power: without
  the offset they differ);
* close (float32 GGUF and KV cache): llama.cpp's logits match the torch model's to 1e-4
  (power: the GGUF written without llama.cpp's RoPE row order fails);
* in distribution (float16 KV cache; the packaged Q4_1 SmolLM2 in the slow test): the next-token
  distributions of llama.cpp and torch, controlled, are within a small total-variation
  distance (power: dropping the control offset fails it).

Skipped where llama-cpp-python is not installed.
"""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

import test_stepwise as stepwise
from conftest import PROMPTS, make_model, make_tokenizer

from ctrlalign._checks import ConfigError
from ctrlalign.dynamics import CausalLM, SamplingConfig
from ctrlalign.dynamics.decoding import sample_with_logprobs
from ctrlalign.dynamics.engines import to_gguf
from ctrlalign.dynamics.engines.llamacpp import LlamaCppEngine, check_offset_head
from ctrlalign.dynamics.engines.to_gguf import write_llama_gguf
from ctrlalign.dynamics.head import OutputHead

pytestmark = pytest.mark.usefixtures("one_thread")
T = stepwise.T
OPTS = {"n_threads": 1, "n_ctx": 2048, "cache_type": "f32"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tok = make_model("llama"), make_tokenizer()
    path = write_llama_gguf(model, tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf")
    return model, tok, path


@pytest.fixture(scope="module")
def lms(tiny):
    model, tok, path = tiny
    cfg = SamplingConfig(max_new_tokens=T)
    return {"llamacpp": CausalLM(model, tok, sampling=cfg, engine="llamacpp", engine_options={"gguf": path, **OPTS}),
            "eager": CausalLM(model, tok, sampling=cfg, engine="eager")}


# ------------------------------------------------------------------------------ the engine checks
def test_llamacpp_passes_the_engine_checks(lms):
    """The engine properties of ``test_stepwise.py`` (each with its power check there)."""
    assert type(lms["llamacpp"].engine).__name__ == "LlamaCppEngine"
    stepwise.check_engine(lms, "llamacpp")
    stepwise.test_a_consumed_state_is_refused(lms, "llamacpp")


def test_select_changes_n_and_frees_sequences(lms):
    lm = lms["llamacpp"]
    rt = lm.engine.runtime
    gc.collect()
    free_before = len(rt.free)
    D, n = 2, 3
    ctx = lm.prepare(PROMPTS[:D])
    state = lm.start(ctx, n)
    state, _ = lm.advance(state, None, torch.rand(D, n, 2, generator=torch.Generator().manual_seed(0)))
    state = lm.select(state, torch.tensor([[0, 0, 1, 2, 2], [1, 1, 1, 1, 0]]))
    assert len(rt.free) == free_before - D - D * 5  # prompts + the 10 rows
    state, step = lm.advance(state, None, torch.rand(D, 5, T - 2))
    assert step.tokens.shape == (D * 5, T - 2) and lm.outcomes(state).tokens.shape == (D, 5, T)
    with pytest.raises(ValueError, match="rows must"):
        lm.select(lm.start(ctx, n), torch.tensor([[0, 3], [0, 0]]))
    del state, ctx
    gc.collect()
    assert len(rt.free) == free_before  # every sequence came back with its state


def test_too_many_rows_is_a_clear_error(lms):
    lm = lms["llamacpp"]
    ctx = lm.prepare(PROMPTS[:1])
    with pytest.raises(ConfigError, match="n_seq_max=256"):
        lm.start(ctx, 300)


# ------------------------------------------------------------------------------ bitwise: the shared sampler
def _teacher_forced_logits(engine, ctx, tokens):
    """llama.cpp's base logits (B, T, V) before each of the given tokens (B, T), the rows decoded
    together exactly as in a rollout (same B, same order)."""
    rt = engine.runtime
    D = ctx.num_prompts
    B = tokens.shape[0]
    n = B // D
    state = engine.start(ctx.prefix, n, SamplingConfig(max_new_tokens=T), eos_token_ids=[], pad_token_id=0,
                         base_logprobs=False)
    out = [state.logits]
    for t in range(T - 1):
        logits = rt.decode(tokens[:, t].numpy().astype(np.int32), state.lengths + t, state.sequences.ids)
        out.append(torch.from_numpy(logits))
    return torch.stack(out, 1)


@pytest.mark.parametrize("drop_offset", [False, True])
def test_tokens_are_the_shared_sampler_on_llamacpp_logits(lms, drop_offset):
    """Each token and log q of a controlled rollout is ``sample_with_logprobs`` applied to
    llama.cpp's logits + W·v_t with the row's uniform, and log p to llama.cpp's logits alone,
    bitwise. Power: the same check without the offset W·v fails."""
    lm = lms["llamacpp"]
    D, n = 3, 2
    ctx = lm.prepare(PROMPTS[:D])
    V = stepwise._controls(lm, D, n, T)
    out = lm.rollout(ctx, V, stepwise._gens(D), n)
    noise = lm.draw_noise(stepwise._gens(D), n).reshape(D * n, T)
    tokens = out.tokens.reshape(D * n, T)
    base = _teacher_forced_logits(lm.engine, ctx, tokens)
    W = lm.head.weight
    ok = True
    for t in range(T):
        offset = 0.0 if drop_offset else V.reshape(D * n, T, -1)[:, t] @ W.T
        tok, lp, blp = sample_with_logprobs(base[:, t] + offset, noise[:, t], lm.sampling, base_logits=base[:, t])
        ok &= torch.equal(tok, tokens[:, t]) and torch.equal(lp, out.logprobs.reshape(D * n, T)[:, t]) \
            and torch.equal(blp, out.base_logprobs.reshape(D * n, T)[:, t])
    assert ok != drop_offset


def test_a_shared_control_is_one_offset(lms):
    """A control constant in time (stride 0 over τ, as the shared space gives) gives the same
    rollout as the same control materialised per token, bitwise."""
    lm = lms["llamacpp"]
    D, n = 2, 3
    ctx = lm.prepare(PROMPTS[:D])
    v = stepwise._controls(lm, D, n, 1)
    shared = lm.rollout(ctx, v.expand(D, n, T, lm.hidden_size), stepwise._gens(D), n)
    per_token = lm.rollout(ctx, v.expand(D, n, T, lm.hidden_size).contiguous(), stepwise._gens(D), n)
    assert stepwise._same(shared, per_token)


# ------------------------------------------------------------------------------ close: float32 GGUF vs torch
def _next_token_logits(lm, prompts):
    """llama.cpp's logits after each prompt (D, V) and the torch model's (D, V)."""
    ctx = lm.prepare(prompts)
    ours = ctx.prefix.logits
    with torch.inference_mode():
        ids, mask = ctx.input_ids, ctx.attention_mask
        ref = lm.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    return ours, ref


def test_float32_gguf_matches_the_torch_model(lms, tiny, tmp_path, monkeypatch):
    ours, ref = _next_token_logits(lms["llamacpp"], PROMPTS)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    # power: a GGUF without the RoPE row reordering gives other logits
    model, tok, _ = tiny
    monkeypatch.setattr(to_gguf, "rope_interleave", lambda w, heads: w)
    bad = write_llama_gguf(model, tmp_path / "no-rope-order.gguf")
    lm = CausalLM(model, tok, sampling=SamplingConfig(max_new_tokens=T), engine="llamacpp",
                  engine_options={"gguf": bad, **OPTS})
    wrong, _ = _next_token_logits(lm, PROMPTS)
    assert not torch.allclose(wrong, ref, atol=1e-2)


# ------------------------------------------------------------------------------ in distribution
def total_variation(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Total-variation distance between softmax rows: (B, V), (B, V) → (B,)."""
    return 0.5 * (torch.softmax(logits_a.double(), -1) - torch.softmax(logits_b.double(), -1)).abs().sum(-1)


def controlled_distance(lm, prompts, v, *, drop_offset=False):
    """max over prompts of TV(llama.cpp softmax(Wz + Wv), torch softmax(W(z + v))) for the next
    token after each prompt; v (D, d)."""
    ours, _ = _next_token_logits(lm, prompts)
    ctx = lm.prepare(prompts)
    with torch.inference_mode():
        ids, mask = ctx.input_ids, ctx.attention_mask
        z = lm.model.base_model(input_ids=ids, attention_mask=mask,
                                position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state[:, -1]
        ref = lm.head(z + v)
        offset = 0.0 if drop_offset else lm.head.linear(v)
    return float(total_variation(ours + offset, ref).max())


@pytest.mark.parametrize("drop_offset", [False, True])
def test_float16_cache_is_equal_in_distribution(tiny, drop_offset):
    """llama.cpp's default float16 KV cache: next-token distributions under control within TV
    0.01 of the float32 torch model's. Power: without the control offset the distance is large."""
    model, tok, path = tiny
    lm = CausalLM(model, tok, sampling=SamplingConfig(max_new_tokens=T), engine="llamacpp",
                  engine_options={"gguf": path, "n_threads": 1, "n_ctx": 1024})
    v = 2.0 * torch.randn(len(PROMPTS), lm.hidden_size, generator=torch.Generator().manual_seed(3))
    tv = controlled_distance(lm, PROMPTS, v, drop_offset=drop_offset)
    assert (tv < 0.01) != drop_offset, tv


@pytest.mark.slow
@pytest.mark.parametrize("drop_offset", [False, True])
def test_packaged_smollm2_q4_is_equal_in_distribution(drop_offset):
    """The packaged SmolLM2-135M: its Q4_1 GGUF in llama.cpp (float16 cache) against the float32
    torch conversion. Next-token distributions after chat prompts, under a control of the size the
    controllers use: TV < 0.1 at every prompt. Power: dropping the control offset exceeds it."""
    lm = CausalLM.from_pretrained("default", engine="llamacpp", engine_options={"n_threads": 2},
                                  sampling=SamplingConfig(max_new_tokens=4))
    prompts = ["Write a short poem about the sea.", "What is the capital of France?",
               "Tell me a joke about cats.", "Explain photosynthesis in one sentence."]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(len(prompts), lm.hidden_size, generator=g)
    v = 4.0 * v / v.norm(dim=-1, keepdim=True) * lm.hidden_size ** 0.5 / 24
    tv = controlled_distance(lm, prompts, v, drop_offset=drop_offset)
    assert (tv < 0.1) != drop_offset, tv


# ------------------------------------------------------------------------------ refusals and selection
def test_check_offset_head_refuses_transformed_heads():
    W = torch.zeros(5, 3)
    check_offset_head(OutputHead(W), {"llama.context_length": "8"})
    for head in (OutputHead(W, torch.zeros(5)), OutputHead(W, softcap=30.0), OutputHead(W, scale=0.5)):
        with pytest.raises(ConfigError, match="logit offset W·v"):
            check_offset_head(head, {})
    with pytest.raises(ConfigError, match="final_logit_softcapping"):
        check_offset_head(OutputHead(W), {"gemma2.final_logit_softcapping": "30.000000"})
    check_offset_head(OutputHead(W), {"gemma3.final_logit_softcapping": "0.000000", "granite.logit_scale": "1.0"})


def test_engine_refuses_a_softcapped_head_and_a_missing_or_foreign_gguf(tiny, tmp_path):
    model, tok, path = tiny
    capped = stepwise._softcapped_llama()
    with pytest.raises(ConfigError, match=r"2·tanh\(W z/2\)"):
        CausalLM(capped, tok, verify=False, engine="llamacpp", engine_options={"gguf": path, **OPTS})
    with pytest.raises(ConfigError, match="needs the model as a GGUF file"):
        CausalLM(model, tok, engine="llamacpp", engine_options=OPTS)
    with pytest.raises(ConfigError, match="does not exist"):
        CausalLM(model, tok, engine="llamacpp", engine_options={"gguf": tmp_path / "none.gguf", **OPTS})
    other = make_model("llama")
    other.resize_token_embeddings(90)
    with pytest.raises(ConfigError, match="vocabulary 77"):
        LlamaCppEngine(other, gguf=path, **OPTS)


def test_without_llama_cpp_the_engine_says_how_to_install(tiny, monkeypatch):
    model, tok, path = tiny
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(ConfigError, match="pip install 'llama-cpp-python"):
        CausalLM(model, tok, engine="llamacpp", engine_options={"gguf": path, **OPTS})
