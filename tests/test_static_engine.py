"""StaticEngine against a reference eager decode through the HF module.

CPU: the engine's eager path (compile="none", float32) must be token-identical to
``reference_decode`` on tiny random Llama / Qwen2 models (GQA, left padding, controls, EOS,
top-k/top-p, llama3 rope scaling). GPU (``-m gpu`` or automatically when CUDA is present): the
CUDA-graph path in float32 must be token-identical too, and bf16 must agree in distribution.
"""

from __future__ import annotations

import pytest
import torch

from ctrlalign.dynamics.decoding import SamplingConfig, sample_tokens
from ctrlalign.dynamics.engines.eager import cache_argument
from ctrlalign.dynamics.engines.static import StaticEngine

transformers = pytest.importorskip("transformers")

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


# ---------------------------------------------------------------------------- reference
@torch.no_grad()
def reference_decode(model, input_ids, attention_mask, *, num_samples, controls, uniforms, config,
                     eos_token_ids, pad_token_id, base_logprobs):
    """Eager decode with the HF module and a DynamicCache, same uniforms, same sample_tokens.

    Rows are the D prompts repeated n times (row j*n+i), i.e. the prefix is recomputed per row.
    """
    from transformers import DynamicCache

    n, T = num_samples, config.max_new_tokens
    D = input_ids.shape[0]
    B = D * n
    ids = input_ids.repeat_interleave(n, 0)
    mask = attention_mask.repeat_interleave(n, 0).long()
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    V = None if controls is None else controls.reshape(B, controls.shape[2], -1)
    tau = 0 if V is None else V.shape[1]
    u = uniforms.reshape(B, T)
    eos = None if (eos_token_ids is None or config.ignore_eos) else torch.tensor(
        [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids), device=ids.device)
    head = model.get_output_embeddings()
    cache = {cache_argument(model.model): DynamicCache()}
    out = model.model(input_ids=ids, attention_mask=mask, position_ids=pos, **cache, use_cache=True)
    z = out.last_hidden_state[:, -1]
    next_pos = pos[:, -1:] + 1
    toks, lps, blps = [], [], []
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)
    lengths = torch.zeros(B, dtype=torch.long, device=ids.device)
    for t in range(T):
        logits = head(z + V[:, t].to(z.dtype)) if t < tau else head(z)
        base = head(z)
        tok = sample_tokens(logits, u[:, t], config)
        lp = torch.log_softmax(logits.float(), -1).gather(-1, tok[:, None]).squeeze(-1)
        blp = torch.log_softmax(base.float(), -1).gather(-1, tok[:, None]).squeeze(-1)
        if eos is not None:
            alive = ~done
            tok = torch.where(alive, tok, torch.full_like(tok, pad_token_id))
            lp, blp = lp * alive, blp * alive
            lengths += alive.long()
            done |= alive & torch.isin(tok, eos)
        else:
            lengths += 1
        toks.append(tok), lps.append(lp), blps.append(blp)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = model.model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos,
                          **cache, use_cache=True)
        z = out.last_hidden_state[:, -1]
        next_pos = next_pos + 1
    return (torch.stack(toks, 1), lengths, torch.stack(lps, 1).float(),
            torch.stack(blps, 1).float() if base_logprobs else None)


# ---------------------------------------------------------------------------- fixtures
def tiny_model(kind="llama", *, device="cpu", dtype=torch.float32, vocab=101, hidden=64, layers=2,
               heads=4, kv_heads=2, rope_scaling=None, head_scale=8.0, seed=0):
    torch.manual_seed(seed)
    common = {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
                  "num_attention_heads": heads, "num_key_value_heads": kv_heads, "max_position_embeddings": 512,
                  "tie_word_embeddings": False}
    if kind == "llama":
        cfg = transformers.LlamaConfig(**common)
        if rope_scaling is not None:
            cfg.rope_parameters = rope_scaling
        cls = transformers.LlamaForCausalLM
    elif kind == "qwen2":
        cfg = transformers.Qwen2Config(**common)
        cls = transformers.Qwen2ForCausalLM
    else:
        raise ValueError(kind)
    cfg._attn_implementation = "eager"
    model = cls(cfg).eval()
    with torch.no_grad():  # a peaky head so sampling is not near-uniform
        model.lm_head.weight.mul_(head_scale)
        for name, p in model.named_parameters():
            if "proj" in name and "bias" in name:
                p.normal_(0, 0.1)
    return model.to(device=device, dtype=dtype)


def prompts(D=3, P=7, vocab=101, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (D, P), generator=g)
    lens = torch.tensor([P, max(1, P - 3), max(1, P - 5)] * D)[:D]
    mask = torch.arange(P)[None] >= (P - lens)[:, None]
    ids = ids.masked_fill(~mask, 0)
    return ids.to(device), mask.long().to(device)


def draws(D, n, T, tau, d, seed=2, device="cpu", scale=1.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(D, n, T, generator=g)
    v = None if tau is None else scale * torch.randn(D, n, tau, d, generator=g)
    return u.to(device), (None if v is None else v.to(device))


def run_both(model, engine, *, D=3, n=4, T=10, tau=4, config=None, eos=(3, 7, 11), pad=0, base=True,
             device="cpu", seed=2):
    config = config or SamplingConfig(max_new_tokens=T)
    ids, mask = prompts(D, device=device)
    u, v = draws(D, n, T, tau, model.config.hidden_size, seed=seed, device=device)
    kw = {"num_samples": n, "controls": v, "uniforms": u, "config": config, "eos_token_ids": eos, "pad_token_id": pad,
              "base_logprobs": base}
    ref = reference_decode(model, ids, mask, **kw)
    pre = engine.prefill(ids, mask)
    got = engine.decode(pre, **kw)
    return ref, got


def assert_same(ref, got, atol=1e-4):
    assert torch.equal(ref[0], got.tokens)
    assert torch.equal(ref[1], got.lengths)
    torch.testing.assert_close(got.logprobs, ref[2], atol=atol, rtol=1e-4)
    if ref[3] is None:
        assert got.base_logprobs is None
    else:
        torch.testing.assert_close(got.base_logprobs, ref[3], atol=atol, rtol=1e-4)


# ---------------------------------------------------------------------------- CPU (eager path)
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize(
    "tau,base,eos,cfg",
    [
        (4, True, (3, 7, 11), SamplingConfig(max_new_tokens=10)),
        (None, False, 5, SamplingConfig(max_new_tokens=10)),
        (10, True, None, SamplingConfig(max_new_tokens=10, ignore_eos=True)),
        (3, True, (3, 7), SamplingConfig(max_new_tokens=10, temperature=0.7, top_k=20, top_p=0.9)),
        (2, False, (3,), SamplingConfig(max_new_tokens=6, greedy=True)),
    ],
)
@pytest.mark.parametrize("opts", [{}, {"fuse_weights": False, "kv_block": None}, {"kv_block": 3}, {"kv_block": 1}],
                         ids=["default", "unfused-unblocked", "kv3", "kv1"])
def test_eager_matches_reference(kind, tau, base, eos, cfg, opts):
    model = tiny_model(kind)
    eng = StaticEngine(model, max_batch=16, max_length=32, dtype=torch.float32, compile="none", **opts)
    ref, got = run_both(model, eng, T=cfg.max_new_tokens, tau=tau, config=cfg, eos=eos, base=base)
    assert_same(ref, got)


def test_eos_padding_and_lengths():
    model = tiny_model()
    eng = StaticEngine(model, max_batch=16, max_length=32, dtype=torch.float32, compile="none")
    eos = tuple(range(0, 101, 4))  # frequent EOS
    ref, got = run_both(model, eng, T=12, tau=3, eos=eos, pad=99)
    assert_same(ref, got)
    L = got.lengths
    assert (L < 12).any(), "test needs some rows to stop early"
    for b in range(got.tokens.shape[0]):
        assert (got.tokens[b, L[b]:] == 99).all()
        assert (got.logprobs[b, L[b]:] == 0).all()
        if L[b] < 12:
            assert int(got.tokens[b, L[b] - 1]) in eos


def test_kv_length_blocks():
    """Step t writes slot t and attends to ⌈(t+1)/kv_block⌉·kv_block ∧ T slots — always > t."""
    model = tiny_model()
    for kb, T in [(16, 128), (16, 10), (3, 10), (1, 7), (None, 9)]:
        eng = StaticEngine(model, max_batch=4, max_length=140, dtype=torch.float32, compile="none", kv_block=kb)
        got = [eng._kv_length(t, T) for t in range(T - 1)]
        assert all(t < L <= T for t, L in enumerate(got))
        assert got == sorted(got)
        if kb is None:
            assert set(got) == {T}
        else:
            assert all(L % kb == 0 or L == T for L in got)
            assert all(L - (t + 1) < kb for t, L in enumerate(got))
    eng = StaticEngine(model, max_batch=4, max_length=140, dtype=torch.float32, compile="none", kv_block=16)
    mean = sum(eng._kv_length(t, 128) for t in range(127)) / 127
    assert 70 < mean < 73  # vs 128 unblocked: the "about 44% fewer K/V bytes" in the docstring


def test_fused_weights_leave_the_model_unchanged():
    """Fusing re-points Q/K/V and gate/up to views of one matrix each: the HF module's outputs
    are unchanged, no parameter is copied twice, and a second engine reuses the fusion."""
    model = tiny_model("qwen2")  # q/k/v biases
    ids, mask = prompts(3)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    params_before = {k: v.detach().clone() for k, v in model.named_parameters()}
    StaticEngine(model, max_batch=8, max_length=32, dtype=torch.float32, compile="none")
    a = model.model.layers[0].self_attn
    W, b = a._ctrlalign_qkv
    assert W.shape[0] == a.q_proj.weight.shape[0] + 2 * a.k_proj.weight.shape[0]
    assert a.q_proj.weight.data_ptr() == W.data_ptr() and a.k_proj.bias.data_ptr() == b[a.q_proj.weight.shape[0]:].data_ptr()
    for k, v in model.named_parameters():
        assert torch.equal(v, params_before[k]), k
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    StaticEngine(model, max_batch=8, max_length=32, dtype=torch.float32, compile="none")
    assert model.model.layers[0].self_attn._ctrlalign_qkv[0] is W  # reused, not re-fused
    # parameters replaced behind the engine's back: the next engine fuses the new values
    with torch.no_grad():
        a.q_proj.weight.data = a.q_proj.weight.detach().clone() * 2
    eng = StaticEngine(model, max_batch=16, max_length=32, dtype=torch.float32, compile="none")
    W2 = model.model.layers[0].self_attn._ctrlalign_qkv[0]
    assert W2 is not W and torch.equal(W2[: a.q_proj.weight.shape[0]], a.q_proj.weight)
    ref, got = run_both(model, eng, T=6, tau=2)
    assert_same(ref, got)


def test_llama3_rope_scaling():
    rs = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    model = tiny_model(rope_scaling=rs, heads=4, kv_heads=1)
    eng = StaticEngine(model, max_batch=16, max_length=40, dtype=torch.float32, compile="none")
    ref, got = run_both(model, eng, T=20, tau=5)
    assert_same(ref, got)


def test_prefix_reused_across_decodes_and_prefixes():
    model = tiny_model()
    eng = StaticEngine(model, max_batch=16, max_length=32, dtype=torch.float32, compile="none")
    ids, mask = prompts(3)
    ids2, mask2 = prompts(2, seed=5)
    pre, pre2 = eng.prefill(ids, mask), eng.prefill(ids2, mask2)
    cfg = SamplingConfig(max_new_tokens=8)
    res = []
    for k, (p, i, m) in enumerate([(pre, ids, mask), (pre2, ids2, mask2), (pre, ids, mask), (pre, ids, mask)]):
        u, v = draws(p.num_prompts, 4, 8, 4, 64, seed=10 + k)
        kw = {"num_samples": 4, "controls": v, "uniforms": u, "config": cfg, "eos_token_ids": 3, "pad_token_id": 0,
                  "base_logprobs": True}
        got = eng.decode(p, **kw)
        ref = reference_decode(model, i, m, **kw)
        assert_same(ref, got)
        res.append(got)
    # different n with the same prefix
    u, v = draws(3, 2, 8, 4, 64, seed=99)
    kw = {"num_samples": 2, "controls": v, "uniforms": u, "config": cfg, "eos_token_ids": 3, "pad_token_id": 0, "base_logprobs": False}
    assert_same(reference_decode(model, ids, mask, **kw), eng.decode(pre, **kw))


def test_prompt_independent_of_batch_neighbours():
    model = tiny_model()
    eng = StaticEngine(model, max_batch=16, max_length=32, dtype=torch.float32, compile="none")
    ids, mask = prompts(3)
    u, v = draws(3, 4, 8, 4, 64)
    cfg = SamplingConfig(max_new_tokens=8)
    full = eng.decode(eng.prefill(ids, mask), num_samples=4, controls=v, uniforms=u, config=cfg,
                      eos_token_ids=3, pad_token_id=0)
    # prompt 2 alone: strip its left padding entirely
    m2 = mask[2].bool()
    alone = eng.decode(eng.prefill(ids[2:3, m2], None), num_samples=4, controls=v[2:3], uniforms=u[2:3],
                       config=cfg, eos_token_ids=3, pad_token_id=0)
    assert torch.equal(full.tokens[8:12], alone.tokens)
    torch.testing.assert_close(full.logprobs[8:12], alone.logprobs, atol=1e-4, rtol=1e-4)


def test_validation_errors():
    model = tiny_model()
    eng = StaticEngine(model, max_batch=8, max_length=16, dtype=torch.float32, compile="none")
    ids, mask = prompts(3)
    pre = eng.prefill(ids, mask)
    cfg = SamplingConfig(max_new_tokens=4)
    with pytest.raises(ValueError, match="max_batch"):
        eng.decode(pre, num_samples=4, controls=None, uniforms=torch.rand(3, 4, 4), config=cfg,
                   eos_token_ids=None, pad_token_id=0)
    with pytest.raises(ValueError, match="uniforms"):
        eng.decode(pre, num_samples=2, controls=None, uniforms=torch.rand(3, 2, 5), config=cfg,
                   eos_token_ids=None, pad_token_id=0)
    with pytest.raises(ValueError, match="controls"):
        eng.decode(pre, num_samples=2, controls=torch.zeros(3, 2, 2, 5), uniforms=torch.rand(3, 2, 4),
                   config=cfg, eos_token_ids=None, pad_token_id=0)
    with pytest.raises(ValueError, match="max_length"):
        eng.decode(pre, num_samples=2, controls=None, uniforms=torch.rand(3, 2, 12),
                   config=SamplingConfig(max_new_tokens=12), eos_token_ids=None, pad_token_id=0)
    with pytest.raises(ValueError, match="left padding"):
        eng.prefill(ids, mask.flip(-1))
    with pytest.raises(ValueError, match="cudagraph"):
        StaticEngine(model, max_batch=8, max_length=16, dtype=torch.float32, compile="cudagraph")
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match=f"kv_block must be a positive int or None.*{bad!r}"):
            StaticEngine(model, max_batch=8, max_length=16, dtype=torch.float32, compile="none", kv_block=bad)


def test_is_an_engine_and_grows_on_demand():
    """StaticEngine implements the Engine protocol (positional controls, uniforms, config) and,
    with grow=True, enlarges its buffers past max_batch / max_length instead of raising."""
    from ctrlalign.dynamics.engines.protocol import Engine

    model = tiny_model()
    eng = StaticEngine(model, max_batch=2, max_length=4, dtype=torch.float32, compile="none", grow=True)
    assert isinstance(eng, Engine)
    ids, mask = prompts(3)  # P = 7 > max_length: the prefill grows too
    pre = eng.prefill(ids, mask)
    u, v = draws(3, 4, 10, 4, 64)
    kw = {"num_samples": 4, "eos_token_ids": (3, 7), "pad_token_id": 0, "base_logprobs": True}
    got = eng.decode(pre, v, u, SamplingConfig(max_new_tokens=10), **kw)
    assert eng.max_batch == 12 and eng.max_length == 64  # P + T = 17, rounded up to 64
    ref = reference_decode(model, ids, mask, controls=v, uniforms=u, config=SamplingConfig(max_new_tokens=10), **kw)
    assert_same(ref, got)


def test_unsupported_architecture_raises():
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50)
    model = transformers.GPT2LMHeadModel(cfg)
    with pytest.raises(NotImplementedError, match="gpt2"):
        StaticEngine(model, max_batch=4, max_length=16, dtype=torch.float32, compile="none")


# ---------------------------------------------------------------------------- GPU
def chi2_two_sample(a: torch.Tensor, b: torch.Tensor, min_expected=5.0) -> float:
    """p-value of the two-sample chi-square test of equal categorical distributions."""
    ca = torch.bincount(a).double()
    cb = torch.bincount(b, minlength=ca.numel()).double()
    ca = torch.nn.functional.pad(ca, (0, cb.numel() - ca.numel()))
    na, nb = ca.sum(), cb.sum()
    tot = ca + cb
    order = torch.argsort(tot, descending=True)
    ca, cb, tot = ca[order], cb[order], tot[order]
    keep = (tot * min(na, nb) / (na + nb)) >= min_expected
    ca = torch.cat([ca[keep], ca[~keep].sum()[None]])
    cb = torch.cat([cb[keep], cb[~keep].sum()[None]])
    tot = ca + cb
    nz = tot > 0
    ca, cb, tot = ca[nz], cb[nz], tot[nz]
    ea, eb = tot * na / (na + nb), tot * nb / (na + nb)
    stat = (((ca - ea) ** 2) / ea + ((cb - eb) ** 2) / eb).sum()
    df = ca.numel() - 1
    if df < 1:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), stat / 2))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_cudagraph_fp32_matches_reference(kind):
    model = tiny_model(kind, device="cuda")
    # kv_block=4: four body graphs per shape (decode-cache lengths 4, 8, 12, 16)
    eng = StaticEngine(model, max_batch=64, max_length=48, dtype=torch.float32, compile="cudagraph", kv_block=4)
    for tau, base, cfg in [(4, True, SamplingConfig(max_new_tokens=16)),
                           (None, False, SamplingConfig(max_new_tokens=16, top_k=30, top_p=0.95))]:
        ref, got = run_both(model, eng, n=8, T=16, tau=tau, config=cfg, base=base, device="cuda")
        assert_same(ref, got, atol=1e-3)
        # replay again with new draws (graphs reused)
        ref, got = run_both(model, eng, n=8, T=16, tau=tau, config=cfg, base=base, device="cuda", seed=7)
        assert_same(ref, got, atol=1e-3)


@pytest.mark.gpu
@gpu
def test_cudagraph_equals_eager_bf16():
    model = tiny_model(device="cuda", dtype=torch.bfloat16, hidden=128, heads=8, kv_heads=2, layers=3)
    ids, mask = prompts(4, device="cuda")
    u, v = draws(4, 16, 24, 6, 128, device="cuda")
    kw = {"num_samples": 16, "controls": v, "uniforms": u, "config": SamplingConfig(max_new_tokens=24),
              "eos_token_ids": (3, 7), "pad_token_id": 0, "base_logprobs": True}
    outs = []
    for mode in ("none", "cudagraph_eager"):
        eng = StaticEngine(model, max_batch=64, max_length=64, dtype=torch.bfloat16, compile=mode)
        outs.append(eng.decode(eng.prefill(ids, mask), **kw))
    a, b = outs
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(a.logprobs, b.logprobs)


@pytest.mark.gpu
@gpu
def test_compiled_cudagraph_close_to_plain_bf16():
    """torch.compile-fused pieces change bf16 rounding only: most tokens agree, logprobs close."""
    model = tiny_model(device="cuda", dtype=torch.bfloat16, hidden=128, heads=8, kv_heads=2, layers=3)
    ids, mask = prompts(4, device="cuda")
    u, v = draws(4, 16, 8, 6, 128, device="cuda")
    kw = {"num_samples": 16, "controls": v, "uniforms": u, "config": SamplingConfig(max_new_tokens=8, ignore_eos=True),
              "eos_token_ids": None, "pad_token_id": 0, "base_logprobs": True}
    outs = []
    for mode in ("cudagraph_eager", "cudagraph"):
        eng = StaticEngine(model, max_batch=64, max_length=64, dtype=torch.bfloat16, compile=mode)
        outs.append(eng.decode(eng.prefill(ids, mask), **kw))
        assert eng.compile == mode, "torch.compile fell back"
    a, b = outs
    print("token agreement", (a.tokens == b.tokens).float().mean(0).tolist())
    assert torch.equal(a.tokens[:, 0], b.tokens[:, 0])  # first token: identical prefill, same head
    torch.testing.assert_close(a.logprobs[:, 0], b.logprobs[:, 0])
    assert (a.tokens[:, 1] == b.tokens[:, 1]).float().mean() > 0.75  # one fused step: rounding only


@pytest.mark.gpu
@gpu
def test_bf16_agrees_in_distribution_with_fp32_reference():
    """Two-sample chi-square on the token at steps 1..3 (prompt 0, controlled), bf16 engine vs
    fp32 reference, independent uniforms; Bonferroni over 3 steps × 2 prompts at α = 1e-3."""
    N = 2048
    m32 = tiny_model(device="cuda", vocab=64, hidden=128, heads=8, kv_heads=2, layers=3, head_scale=3.0)
    m16 = tiny_model(device="cuda", vocab=64, hidden=128, heads=8, kv_heads=2, layers=3, head_scale=3.0,
                     dtype=torch.bfloat16)
    ids, mask = prompts(2, vocab=64, device="cuda")
    cfg = SamplingConfig(max_new_tokens=3, ignore_eos=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    v = 0.5 * torch.randn(2, 1, 3, 128, device="cuda", generator=g).expand(2, N, 3, 128)
    u_ref = torch.rand(2, N, 3, device="cuda", generator=g)
    u_eng = torch.rand(2, N, 3, device="cuda", generator=g)
    ref = reference_decode(m32, ids, mask, num_samples=N, controls=v, uniforms=u_ref, config=cfg,
                           eos_token_ids=None, pad_token_id=0, base_logprobs=False)[0]
    eng = StaticEngine(m16, max_batch=2 * N, max_length=32, dtype=torch.bfloat16)
    got = eng.decode(eng.prefill(ids, mask), num_samples=N, controls=v.to(torch.bfloat16), uniforms=u_eng,
                     config=cfg, eos_token_ids=None, pad_token_id=0).tokens
    alpha = 1e-3 / 6
    for j in range(2):
        for t in range(3):
            p = chi2_two_sample(ref.view(2, N, 3)[j, :, t].cpu(), got.view(2, N, 3)[j, :, t].cpu())
            assert p > alpha, (j, t, p)
    # sanity: the test has power — a shifted distribution is rejected
    shifted = (ref.view(2, N, 3)[0, :, 0] + 1) % 64
    assert chi2_two_sample(ref.view(2, N, 3)[0, :, 0].cpu(), shifted.cpu()) < alpha


@pytest.mark.slow
def test_compiled_kernels_match_eager_on_cpu():
    """The torch.compile'd step pieces (what compile="cudagraph" fuses on a GPU) compile with
    fullgraph=True — no graph break, no silent fallback — and compute what the plain ones do.
    Inductor's CPU backend stands in for the GPU one here."""
    from ctrlalign.dynamics.engines.llama import Kernels

    model = tiny_model()
    eng = StaticEngine(model, max_batch=16, max_length=32, dtype=torch.float32, compile="none", kv_block=2)
    ref, plain = run_both(model, eng, T=5, tau=2)
    eng.kernels = Kernels(compiled=True)
    _, comp = run_both(model, eng, T=5, tau=2)
    assert_same(ref, plain)
    assert_same(ref, comp)


def test_gpu_benchmark_script_smoke_on_cpu(tmp_path):
    """benchmarks/gpu_rollout.py runs end to end (engine, AISP/BoN timing, ablation, JSON) in its
    CPU smoke mode, so the script a lent GPU will run is not broken by an untested edit."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_rollout.py"
    spec = importlib.util.spec_from_file_location("gpu_rollout", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.json"
    assert mod.main(["--device", "cpu", "--models", "tiny", "--batches", "8", "--new-tokens", "4",
                     "--prompt-len", "6", "--reps", "1", "--ablation", "--kv-block", "2", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["engine_options"] == {"kv_block": 2, "fuse_weights": True, "compile": "none"}
    e = rep["models"]["tiny"]["batches"]["8"]
    assert e["engine"]["tokens_per_s"] > 0 and e["engine"]["D"] * e["engine"]["n"] == 8
    assert set(e["ablation"]) == {"default", "no fuse_weights", "no kv_block", "neither"}  # no CUDA graphs on CPU
    assert e["ablation"]["neither"]["options"] == {"kv_block": None, "fuse_weights": False, "compile": "none"}
    assert "| tiny | 8 |" in rep["table_markdown"]
