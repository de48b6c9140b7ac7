"""SMC with checkpoints at sentence ends (``checkpoint_at="sentences"``): each prompt's own
checkpoints, decided from its rows' past, keep the target p·exp(r/λ) and Ẑ unbiased on the
enumerable token chain (with a power check: forgetting a prompt's pending p/q ratio when another
prompt fires is caught); with no sentence ever ended the rule is the token rule bit for bit; the
rule fires where it says; bad settings are refused; sentence ends of language-model text."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PROMPTS, make_model, make_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from test_smc import exact_log_z, tv, weighted_law

import ctrlalign as ca
from ctrlalign._checks import ConfigError
from ctrlalign.closedloop import SMC
from ctrlalign.closedloop.checkpoints import sentence_checkpoints_due
from ctrlalign.dynamics import CausalLM, SamplingConfig
from ctrlalign.dynamics.causal_lm import count_sentence_ends
from ctrlalign.dynamics.toy import SoftmaxHead, tilted_distribution
from ctrlalign.testing import make_token_chain

SENTENCE = 1  # the chain's token that ends a sentence


def mild_control() -> torch.Tensor:
    """A pre-logit control V (2, τ, d) that moves the chain's token law away from p (q ≠ p), mild
    enough for 300 seeds to estimate E[Ẑ] to a few percent."""
    g = torch.Generator().manual_seed(9)
    return 0.7 * torch.randn(2, 3, 2, generator=g, dtype=torch.float64)


def z_ratio(smc: SMC, seeds: int = 300, controls=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and standard error of Ẑ/Z per prompt over seeds, and the runs in which the two
    prompts had checkpoints at different positions."""
    dyn, reward, prompts, base = make_token_chain(0, sentence_token=SENTENCE)
    logz = torch.tensor([exact_log_z(b, reward.table, smc.temperature) for b in base], dtype=torch.float64)
    ratios, apart = [], 0
    for s in range(seeds):
        res = smc.run(dyn, reward, prompts, seed=s, controls=controls)
        apart += any(c.fired is not None for c in res.trace)
        ratios.append((res.log_normalizer - logz).exp())
    r = torch.stack(ratios)
    return r.mean(0), r.std(0) / math.sqrt(seeds), apart


def unbiased(smc: SMC, controls=None) -> bool:
    mean, se, apart = z_ratio(smc, controls=controls)
    assert apart > 100  # the prompts' checkpoints differ in most runs: the per-prompt path is exercised
    return bool(((mean - 1).abs() <= 4 * se + 1e-3).all())


class ForgetsPending(SMC):
    """Bug: when some prompts have a checkpoint, the others' p/q ratio since their last one is
    dropped (as if every prompt had had one)."""

    @staticmethod
    def settle(pending, fired):
        return torch.zeros_like(pending)


def sentences(cls=SMC, **kw) -> SMC:
    return cls(**{"num_particles": 8, "block_size": 3, "temperature": 1.0, "resample_threshold": 1.0,
                  "checkpoint_at": "sentences", **kw})


@pytest.mark.parametrize("scheme", ["multinomial", "systematic", "residual", "stratified"])
@given(quorum=st.sampled_from([0.5, 1.0]), kappa=st.sampled_from([0.5, 1.0]))
@settings(max_examples=2, deadline=None)
def test_log_normalizer_is_unbiased_with_sentence_checkpoints(scheme, quorum, kappa):
    """E[Ẑ]/Z = 1 within 4 standard errors over 300 seeds (Z enumerated): checkpoint times chosen
    per prompt from its rows' past are stopping times, which keeps Ẑ unbiased."""
    assert unbiased(sentences(scheme=scheme, sentence_quorum=quorum, resample_threshold=kappa))


def test_log_normalizer_is_unbiased_under_a_control_proposal_and_the_check_has_power():
    """Under q ≠ p the prompt that has no checkpoint while another has one keeps accumulating its
    p/q ratio; dropping it (:class:`ForgetsPending`) biases Ẑ (measured 1.20 ± 0.03 for prompt 0
    against 1.03 ± 0.03)."""
    assert unbiased(sentences(sentence_quorum=1.0), controls=mild_control())
    assert not unbiased(sentences(ForgetsPending, sentence_quorum=1.0), controls=mild_control())


@pytest.mark.parametrize("controls", [None, mild_control()], ids=["base-proposal", "control-proposal"])
def test_particles_converge_to_the_tilted_law(controls):
    """4000 particles with sentence checkpoints are within 0.12 in total variation of
    π* ∝ p·exp(r/λ) (enumerated), and had an intermediate checkpoint."""
    dyn, reward, prompts, base = make_token_chain(1, sentence_token=SENTENCE)
    res = SMC(num_particles=4000, block_size=3, temperature=1.0, checkpoint_at="sentences",
              sentence_quorum=0.3).run(dyn, reward, prompts, seed=0, controls=controls)
    assert all(len(res.trace_of(d)) >= 2 for d in range(2))
    laws = weighted_law(res, 1.0)
    distances = [tv(law, tilted_distribution(base[j], reward.table, 1.0)) for j, law in enumerate(laws)]
    assert max(distances) < 0.12, distances


class NoSentences(SoftmaxHead):
    """The chain with sentences that never end."""

    def sentence_ends(self, state):
        return torch.zeros(state.num_prompts, state.num_samples, dtype=torch.long)


@given(seed=st.integers(0, 2**31 - 1), block=st.integers(1, 3), kappa=st.sampled_from([0.0, 0.5, 1.0]))
@settings(max_examples=15, deadline=None)
def test_without_sentence_ends_the_rule_is_every_b_tokens_bit_for_bit(seed, block, kappa):
    """No row ever ends a sentence: a checkpoint every b tokens, the same run as
    ``checkpoint_at="tokens"`` bit for bit (rewards, responses, log Ẑ, trace)."""
    chain, reward, prompts, _ = make_token_chain(3)
    dyn = NoSentences(chain.W, chain.b, chain.horizon, embeddings=chain.E)
    kw = {"num_particles": 5, "block_size": block, "temperature": 0.7, "resample_threshold": kappa}
    a = SMC(checkpoint_at="sentences", **kw).run(dyn, reward, prompts, seed=seed)
    b = SMC(**kw).run(dyn, reward, prompts, seed=seed)
    assert torch.equal(a.rewards, b.rewards) and torch.equal(a.log_normalizer, b.log_normalizer)
    assert [s.tokens for s in a.responses] == [s.tokens for s in b.responses]
    assert [a.trace_of(d) for d in range(2)] == [b.trace_of(d) for d in range(2)]


@given(seed=st.integers(0, 2**31 - 1), quorum=st.sampled_from([0.25, 0.5, 1.0]))
@settings(max_examples=20, deadline=None)
def test_each_prompt_has_its_checkpoints_where_the_rule_puts_them(seed, quorum):
    """Without resampling (κ = 0) the rows stay as drawn, so each prompt's checkpoints can be
    recomputed from its final tokens: the first t after the last checkpoint at which the quorum
    of rows has emitted the sentence token since, b = 3 tokens at the latest, and T."""
    dyn, reward, prompts, _ = make_token_chain(2, sentence_token=SENTENCE)
    res = SMC(num_particles=6, block_size=3, temperature=1.0, resample_threshold=0.0, checkpoint_at="sentences",
              sentence_quorum=quorum).run(dyn, reward, prompts, seed=seed)
    tokens = torch.tensor(res.meta["final_tokens"])  # (D, n, T)
    T = tokens.shape[-1]
    for d in range(2):
        expected, last = [], 0
        for t in range(1, T + 1):
            ended = (tokens[d, :, last:t] == SENTENCE).any(-1)
            if t == T or t - last >= 3 or ended.double().mean() >= quorum:
                expected.append(t)
                last = t
        assert [c["position"] for c in res.trace_of(d)] == expected


def test_the_due_rule_counts_only_eligible_rows():
    """Rows finished at the last checkpoint do not vote; rows finished since are ready."""
    ends_before = torch.zeros(1, 4, dtype=torch.long)
    finished_before = torch.tensor([[True, True, False, False]])
    due = sentence_checkpoints_due(2, torch.zeros(1, dtype=torch.long), 8, torch.tensor([[0, 0, 1, 0]]), ends_before,
                                   torch.tensor([[True, True, False, False]]), finished_before, 0.5)
    assert due.tolist() == [True]  # one of the two eligible rows ended a sentence
    due = sentence_checkpoints_due(2, torch.zeros(1, dtype=torch.long), 8, torch.tensor([[1, 1, 0, 0]]), ends_before,
                                   finished_before, finished_before, 0.75)
    assert due.tolist() == [False]  # the finished rows' sentences do not count
    every_done = torch.ones(1, 4, dtype=torch.bool)
    due = sentence_checkpoints_due(2, torch.zeros(1, dtype=torch.long), 8, ends_before, ends_before, every_done,
                                   every_done, 0.5)
    assert due.tolist() == [False]  # nothing left to look at: wait for b tokens or T


def test_bad_settings_are_refused_naming_them():
    with pytest.raises(ConfigError, match="checkpoint_at.*tokens.*sentences.*words"):
        SMC(checkpoint_at="words")
    with pytest.raises(ConfigError, match="sentence_quorum"):
        SMC(sentence_quorum=0.0)
    dyn, reward, prompts, _ = make_token_chain(0)  # no sentence token
    with pytest.raises(ConfigError, match="SoftmaxHead has none"):
        SMC(checkpoint_at="sentences").run(dyn, reward, prompts)


@pytest.mark.parametrize("text,ends", [
    ("", 0), ("Hello. World", 1), ("Hi!\n\nNext", 1), ("3.5 is more", 0), ('He said "yes." Then', 1),
    ("The end.", 1), ("a\nb\nc", 2), ("Wait... what? Now", 2), ("no end yet", 0),
])
def test_sentence_ends_of_text(text, ends):
    assert count_sentence_ends(text) == ends


def test_a_language_model_counts_the_sentence_ends_of_its_rows_and_runs_smc_by_them(one_thread):
    """CausalLM.sentence_ends is the count of each decoded row's text; SMC with sentence
    checkpoints runs end to end on the tiny LM, its prompts' checkpoints increasing and ending at T."""
    lm = CausalLM(make_model("llama"), make_tokenizer(), sampling=SamplingConfig(max_new_tokens=6))
    ctx = lm.prepare(PROMPTS[:2])
    state = lm.start(ctx, 3)
    noise = lm.draw_noise([torch.Generator().manual_seed(j) for j in range(2)], 3)
    state, _ = lm.advance(state, None, noise)
    texts = lm.texts(state)
    assert lm.sentence_ends(state).tolist() == [[count_sentence_ends(t) for t in row] for row in texts]
    reward = ca.CallableReward(lambda p, text: float(len(set(text))), texts=True, name="chars")
    res = SMC(num_particles=4, block_size=2, checkpoint_at="sentences").run(lm, reward, PROMPTS[:2], seed=0)
    for d in range(2):
        positions = [c["position"] for c in res.trace_of(d)]
        assert positions == sorted(set(positions)) and positions[-1] == 6
        assert all(b - a <= 2 for a, b in zip([0, *positions], positions))
