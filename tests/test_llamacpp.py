"""The llama.cpp engine: the engine checks of ``test_stepwise.py``, what is bitwise, what is
equal in distribution only, and the refusals.

The tiny random Llama of ``conftest.py`` is written to a float32 GGUF file
(:func:`~ctrlalign.dynamics.engines.to_gguf.write_llama_gguf`) and run by llama.cpp, so the
same weights run in torch and in llama.cpp:

* bitwise (within llama.cpp): blocks == one advance, identity select, finished rows,
  log q = log p uncontrolled; a forked row continues like its source (same tokens,
  log-probabilities equal to llama.cpp's rounding); and a rollout's tokens and
  log-probabilities are the shared sampler applied to llama.cpp's logits plus W·v (power: without
  the offset they differ);
* close (float32 GGUF and KV cache, no flash attention): llama.cpp's logits match the torch model's to 1e-4
  (power: the GGUF written without llama.cpp's RoPE row order fails);
* in distribution (float16 KV cache and flash attention, the defaults; the packaged Q4_1 SmolLM2 in the slow test): the next-token
  distributions of llama.cpp and torch, controlled, are within a small total-variation
  distance (power: dropping the control offset fails it).

Skipped where llama-cpp-python is not installed.
"""

from __future__ import annotations

import gc
import sys

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
OPTS = {"n_threads": 1, "n_ctx": 2048}  # llama.cpp's defaults otherwise: float16 cache, flash attention
EXACT = {**OPTS, "cache_type": "f32", "flash_attn": False}  # the float32 path


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
    """The engine properties of ``test_stepwise.py`` (each with its power check there). All
    bitwise but a fork: a forked row's new cache cells sit elsewhere in llama.cpp's cache than
    its source's would, and llama.cpp's attention sums depend on where (SIMD lanes, and float16
    accumulation in its CPU flash attention), so a fork gives the same tokens and
    log-probabilities within 5e-3 (measured 1.2e-3)."""
    assert type(lms["llamacpp"].engine).__name__ == "LlamaCppEngine"
    stepwise.check_engine(lms, "llamacpp", fork_atol=5e-3)
    stepwise.test_a_consumed_state_is_refused(lms, "llamacpp")


@pytest.mark.parametrize("broken", [False, True])
def test_a_fork_on_the_float32_path_is_equal_to_rounding(tiny, broken):
    """Float32 cache, no flash attention: a fork continues like its source to 1e-5 (measured
    1.2e-6), so the looser tolerance above is float16 rounding, not a wrong row."""
    model, tok, path = tiny
    lm = CausalLM(model, tok, sampling=SamplingConfig(max_new_tokens=T), engine="llamacpp",
                  engine_options={"gguf": path, **EXACT})
    stepwise.test_a_forked_row_continues_like_its_source({"x": lm}, "x", broken, 1e-5)


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
@pytest.mark.parametrize("drop_offset", [False, True])
def test_tokens_are_the_shared_sampler_on_llamacpp_logits(lms, drop_offset, monkeypatch):
    """Each token and log q of a controlled rollout is ``sample_with_logprobs`` applied to
    the logits llama.cpp returned + W·v_t with the row's uniform, and log p to llama.cpp's logits
    alone, bitwise (the eager engine's sampling code on llama.cpp's forward pass). Power: the
    same check without the offset W·v fails."""
    lm = lms["llamacpp"]
    rt = lm.engine.runtime
    D, n = 3, 2
    ctx = lm.prepare(PROMPTS[:D])
    seen = [ctx.prefix.logits.repeat_interleave(n, dim=0)]
    decode = rt.decode
    monkeypatch.setattr(rt, "decode", lambda *a, **k: seen.append(torch.from_numpy(decode(*a, **k))) or seen[-1].numpy())
    V = stepwise._controls(lm, D, n, T)
    out = lm.rollout(ctx, V, stepwise._gens(D), n)
    assert len(seen) == T  # the prefix's logits, then one decode per step but the last
    noise = lm.draw_noise(stepwise._gens(D), n).reshape(D * n, T)
    W = lm.head.weight
    ok = True
    for t in range(T):
        offset = 0.0 if drop_offset else V.reshape(D * n, T, -1)[:, t] @ W.T
        tok, lp, blp = sample_with_logprobs(seen[t] + offset, noise[:, t], lm.sampling, base_logits=seen[t])
        ok &= torch.equal(tok, out.tokens.reshape(D * n, T)[:, t]) \
            and torch.equal(lp, out.logprobs.reshape(D * n, T)[:, t]) \
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


def test_float32_gguf_matches_the_torch_model(tiny, tmp_path, monkeypatch):
    model, tok, path = tiny
    lm = CausalLM(model, tok, sampling=SamplingConfig(max_new_tokens=T), engine="llamacpp",
                  engine_options={"gguf": path, **EXACT})
    ours, ref = _next_token_logits(lm, PROMPTS)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    # power: a GGUF without the RoPE row reordering gives other logits
    monkeypatch.setattr(to_gguf, "rope_interleave", lambda w, heads: w)
    bad = write_llama_gguf(model, tmp_path / "no-rope-order.gguf")
    lm = CausalLM(model, tok, sampling=SamplingConfig(max_new_tokens=T), engine="llamacpp",
                  engine_options={"gguf": bad, **EXACT})
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
                  engine_options={"gguf": path, **OPTS})
    v = 2.0 * torch.randn(len(PROMPTS), lm.hidden_size, generator=torch.Generator().manual_seed(3))
    tv = controlled_distance(lm, PROMPTS, v, drop_offset=drop_offset)
    assert (tv < 0.01) != drop_offset, tv


@pytest.mark.slow
@pytest.mark.parametrize("drop_offset", [False, True])
def test_packaged_smollm2_q4_is_equal_in_distribution(drop_offset):
    """The packaged SmolLM2-135M: its Q4_1 GGUF in llama.cpp (float16 cache) against the float32
    torch conversion of the same file. Next-token distributions after chat prompts, under a
    control v ~ N(0, 0.5² I) (‖v‖ ≈ 12, the benchmarks' scale): TV < 0.1 at every prompt (measured
    max 0.072; 0.069 uncontrolled: llama.cpp quantises the activations for its Q4_1 dot products;
    the same weights as a float32 GGUF agree to TV 3e-6). Power: dropping the offset gives 0.41."""
    lm = CausalLM.from_pretrained("default", engine="llamacpp", engine_options={"n_threads": 2},
                                  sampling=SamplingConfig(max_new_tokens=4))
    prompts = ["Write a short poem about the sea.", "What is the capital of France?",
               "Tell me a joke about cats.", "Explain photosynthesis in one sentence."]
    g = torch.Generator().manual_seed(0)
    v = 0.5 * torch.randn(len(prompts), lm.hidden_size, generator=g)
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


@pytest.mark.parametrize("weights, atol", [("f16", 2e-2), ("q8_0", 0.2)])
def test_gguf_weights_f16_and_q8_0_stay_close(tiny, tmp_path, weights, atol):
    """write_llama_gguf's smaller weight types: llama.cpp's logits within ``atol`` of the float32
    torch model's (logits up to ~12 here), further than the float32 file (1e-4) but close."""
    model, tok, _ = tiny
    path = write_llama_gguf(model, tmp_path / f"tiny-{weights}.gguf", weights=weights)
    lm = CausalLM(model, tok, sampling=SamplingConfig(max_new_tokens=T), engine="llamacpp",
                  engine_options={"gguf": path, **EXACT})
    ours, ref = _next_token_logits(lm, PROMPTS)
    err = float((ours - ref).abs().max())
    assert 1e-4 < err < atol, err
    with pytest.raises(ConfigError, match="weights must be one of"):
        write_llama_gguf(model, tmp_path / "x.gguf", weights="q4_0")
