"""Batch invariance: a prompt's result does not depend on which prompts share its batch.

With ``EagerEngine(batch_invariant=True)`` (``engine_options={"batch_invariant": True}``, the
default) it holds bitwise on the CPU: tokens, lengths, logprobs and base logprobs of prompt j decoded
alone equal, bit for bit, those of prompt j in any batch at any position, for any n. The
batched engine (``batch_invariant=False``) only agrees to rounding; :func:`test_batched_engine_is_not_bitwise`
shows that the bitwise check can tell the two apart (it has power).
"""

from __future__ import annotations

import json

import pytest
import test_reliability
import torch
from conftest import ARCHS, PROMPTS, make_model

import ctrlalign as ca
from ctrlalign import build
from ctrlalign.cli import main
from ctrlalign.config import ModelConfig
from ctrlalign.dynamics import CausalLM, SamplingConfig
from ctrlalign.random import make_generators
from ctrlalign.solve import CandidateRecorder
from ctrlalign.store import read_results

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
    """Power of the check above: the batched engine (left padding, one batch of GEMMs)
    does differ from the lone run somewhere in the last bits, on every architecture."""
    lm = CausalLM(make_model(arch), tokenizer, sampling=SamplingConfig(max_new_tokens=8),
                  engine_options={"batch_invariant": False}, verify=False)
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



def test_causal_lm_default_is_batch_invariant(tokenizer, monkeypatch):
    """One default everywhere: the eager engine (``CausalLM``'s default) decodes prompt by
    prompt unless told otherwise, as ``ctrlalign run``/``align`` and configs do."""
    model = make_model("llama")
    assert CausalLM(model, tokenizer, verify=False).engine.batch_invariant is True
    assert CausalLM(model, tokenizer, verify=False,
                    engine_options={"batch_invariant": False}).engine.batch_invariant is False
    monkeypatch.setattr(build, "load_model", lambda *a, **k: (model, tokenizer))
    for value, expected in ((None, True), (True, True), (False, False)):
        dyn = build.build_dynamics(ModelConfig(name="x", batch_invariant=value))
        assert dyn.engine.batch_invariant is expected, value


#: the tiny random Llama and its chat tokenizer saved as a model folder (test_reliability's fixture)
tiny = test_reliability.tiny


def python_run(folder, prompts, seed, **engine_options):
    """``ca.align`` as a user writes it: (candidate rows, final responses)."""
    lm = ca.CausalLM.from_pretrained(str(folder), sampling=ca.SamplingConfig(max_new_tokens=6),
                                     engine_options=engine_options or None)
    recorder = CandidateRecorder([f"p{j}" for j in range(len(prompts))])
    res = ca.align(lm, ca.LexiconSentiment(), ca.AISP(num_samples=3, num_iterations=2), prompts, seed=seed,
                   callback=recorder)
    return recorder.rows, [r.text for r in res.responses]


def test_python_api_and_command_line_give_the_same_samples(tiny, tmp_path, capsys):
    """The same prompts and seed give the same samples from ``ca.align`` on
    ``CausalLM.from_pretrained`` (all prompts in one batch) and from ``ctrlalign run`` (one
    prompt per batch): texts, and every token's log-probabilities bit for bit. Power: with
    ``batch_invariant=False`` the Python run differs in some bit."""
    prompts = MORE[:4]
    cfg = {"prompts": prompts, "model": {"name": str(tiny), "max_new_tokens": 6},
           "controller": {"name": "aisp", "num_samples": 3, "num_iterations": 2},
           "run": {"output": str(tmp_path / "out.jsonl"), "batch_prompts": 1, "seed": 7, "base": False,
                   "save_candidates": True}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["run", str(tmp_path / "c.json"), "--no-progress", "-q"]) == 0, capsys.readouterr().err
    cli_rows = read_results(tmp_path / "out.candidates.jsonl")
    cli_responses = [r["response"] for r in read_results(tmp_path / "out.jsonl")]

    def key(row):
        return row["id"], row["iteration"], row["sample"]

    def same(rows):
        fields = ("text", "token_logprobs", "base_token_logprobs", "reward")
        return sorted((key(r), [r[f] for f in fields]) for r in rows) == \
            sorted((key(r), [r[f] for f in fields]) for r in cli_rows)

    rows, responses = python_run(tiny, prompts, seed=7)
    assert len(rows) == len(cli_rows) == 4 * 3 * 2
    assert same(rows) and responses == cli_responses
    batched_rows, _ = python_run(tiny, prompts, seed=7, batch_invariant=False)
    assert not same(batched_rows)
