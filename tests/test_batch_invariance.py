"""Batch invariance: a prompt's result does not depend on which prompts share its batch.

With ``EagerEngine(batch_invariant=True)`` (``engine_options={"batch_invariant": True}``) it
holds bitwise on the CPU: tokens, lengths, logprobs and base logprobs of prompt j decoded
alone equal, bit for bit, those of prompt j in any batch at any position, for any n. The
default batched engine only agrees to rounding; :func:`test_batched_engine_is_not_bitwise`
shows that the bitwise check can tell the two apart (it has power).
"""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, PROMPTS, make_model

from ctrlalign.dynamics import CausalLM, SamplingConfig
from ctrlalign.random import make_generators

#: more prompts of different lengths than conftest's four, so batches differ in padding
MORE = PROMPTS + ["hi", "what is a star and why is it not a moon", "tell me about the river"]

#: batches (as indices into MORE) that put prompts at different positions beside others
BATCHES = [list(range(len(MORE))), list(range(len(MORE)))[::-1], [4, 1], [2, 5, 0], [6, 3, 1, 4]]


def gens(prompts, seed=0):
    return [g.rollout for g in make_generators(seed, prompts)]


def controls_for(prompts, n, tau, d, dtype=torch.float32):
    """Each prompt's own (n, τ, d) controls, a function of its text only → (D, n, τ, d)."""
    out = []
    for p in prompts:
        g = torch.Generator().manual_seed(sum(map(ord, p)))
        out.append(0.7 * torch.randn(n, tau, d, generator=g))
    return torch.stack(out).to(dtype)


def rollout(lm, prompts, n, tau, seed=0):
    V = controls_for(prompts, n, tau, lm.hidden_size, lm.dtype)
    return lm.rollout(lm.prepare(prompts), V, gens(prompts, seed), n)


def mismatches(lm, n, tau=4, batches=BATCHES):
    """(prompt, batch) pairs where prompt j's outcome in the batch is not bitwise its lone one."""
    alone = {p: rollout(lm, [p], n, tau) for p in MORE}
    bad = []
    for batch in batches:
        ps = [MORE[i] for i in batch]
        out = rollout(lm, ps, n, tau)
        for k, p in enumerate(ps):
            a = alone[p]
            same = (
                torch.equal(a.tokens[0], out.tokens[k])
                and torch.equal(a.lengths[0], out.lengths[k])
                and torch.equal(a.logprobs[0], out.logprobs[k])
                and torch.equal(a.base_logprobs[0], out.base_logprobs[k])
                and a.texts[0] == out.texts[k]
            )
            if not same:
                bad.append((p, tuple(batch)))
    return bad


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n", [1, 3, 8])
def test_batch_invariant_engine_is_bitwise_float32(arch, n, tokenizer):
    lm = CausalLM(make_model(arch), tokenizer, sampling=SamplingConfig(max_new_tokens=8),
                  engine_options={"batch_invariant": True}, verify=False)
    assert mismatches(lm, n) == []


@pytest.mark.parametrize("threads", [1, 3])
def test_batch_invariant_engine_is_bitwise_at_any_thread_count(threads, tokenizer):
    """Multi-threaded kernels split work by shape (MKL's sgemm rounds a row differently for
    different row counts M with 2+ threads); prompt-by-prompt decoding keeps every shape the
    lone run's, so it stays bitwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        lm = CausalLM(make_model("qwen2"), tokenizer, sampling=SamplingConfig(max_new_tokens=8),
                      engine_options={"batch_invariant": True}, verify=False)
        assert mismatches(lm, 5) == []
    finally:
        torch.set_num_threads(before)


def test_batch_invariant_engine_is_bitwise_bfloat16(tokenizer):
    model = make_model("llama").to(torch.bfloat16)
    lm = CausalLM(model, tokenizer, sampling=SamplingConfig(max_new_tokens=8),
                  engine_options={"batch_invariant": True}, verify=False)
    assert mismatches(lm, 3) == []


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_engine_is_not_bitwise(arch, tokenizer):
    """Power of the check above: the default batched engine (left padding, one batch of GEMMs)
    does differ from the lone run somewhere in the last bits, on every architecture."""
    lm = CausalLM(make_model(arch), tokenizer, sampling=SamplingConfig(max_new_tokens=8), verify=False)
    assert mismatches(lm, 1) != []


def test_batch_invariant_option_is_validated(tokenizer):
    from ctrlalign import ConfigError

    with pytest.raises(ConfigError, match="batch_invariant must be True or False, got 'yes'"):
        CausalLM(make_model("llama"), tokenizer, engine_options={"batch_invariant": "yes"})


@pytest.mark.slow
def test_default_model_bitwise_alone_vs_batched():
    """SmolLM2-135M, float32, CPU: 8 prompts × 8 samples × 16 tokens, each prompt alone vs the
    batch of 8 (and the reversed batch): bitwise identical with batch_invariant=True."""
    prompts = [
        "Write a short poem about the sea.", "Explain photosynthesis to a child.",
        "What are three tips for staying productive when working from home?",
        "Describe your ideal weekend.", "Give me a recipe idea for dinner tonight.",
        "Why is the sky blue?", "Write a friendly email inviting a colleague to lunch.",
        "Summarise the plot of a detective story in two sentences.",
    ]
    lm = CausalLM.from_pretrained("default", sampling=SamplingConfig(max_new_tokens=16),
                                  engine_options={"batch_invariant": True})
    n = 8
    batch = lm.rollout(lm.prepare(prompts), None, gens(prompts), n)
    rev = lm.rollout(lm.prepare(prompts[::-1]), None, gens(prompts[::-1]), n)
    for j, p in enumerate(prompts):
        alone = lm.rollout(lm.prepare([p]), None, gens([p]), n)
        for out, k in ((batch, j), (rev, len(prompts) - 1 - j)):
            assert torch.equal(alone.tokens[0], out.tokens[k]), p
            assert torch.equal(alone.logprobs[0], out.logprobs[k]), p
            assert torch.equal(alone.base_logprobs[0], out.base_logprobs[k]), p
