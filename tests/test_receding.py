"""Receding-horizon control: one block is the inner controller bit for bit; the committed blocks
are the response; the budget counts the replayed prefixes as the counting wrappers do; a
response whose committed prefix ends takes part in no later window."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, EarlyEnd, make_model, make_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

import ctrlalign as ca
from ctrlalign._checks import ConfigError
from ctrlalign.closedloop import RecedingHorizon
from ctrlalign.dynamics import CausalLM, SamplingConfig
from ctrlalign.rewards.toy import TableReward
from ctrlalign.testing import (
    CONTROLLERS,
    ENDING_HORIZON,
    SPACES,
    SYSTEMS,
    TAU,
    CountingDynamics,
    CountingReward,
    make_ending_chain,
    make_token_chain,
    same_sample,
)


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("name", CONTROLLERS)
def test_one_block_is_the_inner_controller(name, space, system):
    """b >= T with the whole response as the window: align()'s result, bit for bit, at the same
    tokens and reward calls."""
    dyn, reward, prompts = SYSTEMS[system]()
    ctrl = CONTROLLERS[name](3, 2)
    if ctrl.default_selection().final_samples or name == "softmax":
        pytest.skip("receding horizon keeps the best rollout; this controller keeps another by default")
    a = RecedingHorizon(ctrl, block_size=TAU, space=SPACES[space]()).run(dyn, reward, prompts, seed=5)
    b = ca.align(dyn, reward, ctrl, prompts, space=SPACES[space](), seed=5)
    assert torch.equal(a.rewards, b.rewards.double())
    assert all(same_sample(x, y) for x, y in zip(a.responses, b.responses))
    assert a.full_calls.tolist() == b.reward_calls.tolist()


@given(seed=st.integers(0, 2**31 - 1), block=st.integers(1, 3), lookahead=st.integers(1, 3))
@settings(max_examples=20, deadline=None)
def test_the_committed_blocks_are_the_response(seed, block, lookahead):
    """Each window commits the first b tokens of its best rollout; replaying them gives the next
    window's start, so the committed blocks, joined, are the final response; its reward is its
    own full reward; the budget is n·k·(t + L) tokens per window."""
    dyn, reward, prompts, _ = make_token_chain()
    ctrl = ca.AISP(num_samples=3, num_iterations=2, sigma=0.7, temperature=0.5)
    res = RecedingHorizon(ctrl, block_size=block, lookahead=lookahead).run(dyn, reward, prompts, seed=seed)
    for j, s in enumerate(res.responses):
        assert [y for w in res.meta["committed"] for y in w[j]] == s.tokens
        assert float(res.rewards[j]) == float(reward.evaluate([prompts[j]], ca.Outcomes(
            num_prompts=1, num_samples=1, tokens=torch.tensor([[s.tokens]])))[0, 0])
    tokens, prefix, full, t = 0, 0, 0, 0
    while t < TAU:
        L = min(lookahead, TAU - t)
        b = min(block, L)
        tokens += 3 * 2 * (t + L)
        if t + L >= TAU:
            full += 6
        else:
            prefix += 6
        t += b
    assert res.tokens.tolist() == [tokens] * 2
    assert res.prefix_calls.tolist() == [prefix] * 2 and res.full_calls.tolist() == [full] * 2


def test_the_committed_check_has_power(monkeypatch):
    """A replay of the committed blocks in the wrong order starts later windows from another
    prefix: the joined blocks then are not the response."""
    replay = RecedingHorizon._replay
    monkeypatch.setattr(RecedingHorizon, "_replay",
                        staticmethod(lambda dyn, ctx, history, n: replay(dyn, ctx, history[::-1], n)))
    dyn, reward, prompts, _ = make_token_chain()
    ctrl = ca.AISP(num_samples=3, num_iterations=2, sigma=0.7, temperature=0.5)
    broken = 0
    for seed in range(6):
        res = RecedingHorizon(ctrl, block_size=1, lookahead=2).run(dyn, reward, prompts, seed=seed)
        broken += sum([y for w in res.meta["committed"] for y in w[j]] != s.tokens for j, s in enumerate(res.responses))
    assert broken > 0


def test_bad_input_is_refused_naming_it():
    dyn, reward, prompts, _ = make_token_chain()
    with pytest.raises(ConfigError, match="block_size"):
        RecedingHorizon(ca.AISP(), block_size=0)
    with pytest.raises(TypeError, match="Controller"):
        RecedingHorizon("aisp")
    with pytest.raises(ConfigError, match="scores_prefixes=False"):
        RecedingHorizon(ca.AISP(num_samples=2, num_iterations=1), block_size=1).run(
            dyn, TableReward(reward.table), prompts)


# ---------------------------------------------------------------------------------------------
# responses that end: the budget counted as the wrappers count it, and an ended response absorbs

END, ENDING_SEED = 2, 1  # the ending chain's end token; chain seed 1: about half the rows end before T


def counted_run(ctrl, dyn, reward, prompts, seed):
    """The run on counting wrappers: (result, counted tokens (D,), full calls, prefix calls)."""
    dyn, counting = CountingDynamics(dyn), CountingReward(reward)
    res = ctrl.run(dyn, counting, prompts, seed=seed)
    keys = [counting.key(p) for p in prompts]
    return (res, dyn.tokens.tolist(), [counting.calls.get(k, 0) for k in keys],
            [counting.prefix_calls.get(k, 0) for k in keys])


def windows_until_end(res, j: int, horizon: int) -> int:
    """The windows prompt j takes part in: all of them, or up to the one whose committed block
    holds its end token."""
    length = len(res.responses[j].tokens)
    if length == horizon:
        return len(res.trace)
    return next(w for w, c in enumerate(res.trace) if c.position >= length) + 1


@given(seed=st.integers(0, 2**31 - 1), block=st.integers(1, 3), lookahead=st.integers(1, 4))
@settings(max_examples=25, deadline=None)
def test_an_ended_response_is_absorbing(seed, block, lookahead):
    """On the ending chain: tokens, full and prefix calls are what CountingDynamics and
    CountingReward count; the committed blocks are the response and its reward its own full
    reward; a prompt whose committed block holds the end token takes part in no later window
    (nothing committed, no row, no reward call: n·k calls per window it took part in), and its
    result and calls are those of a run on that prompt alone, which stops there."""
    dyn, reward, prompts, _ = make_ending_chain(ENDING_SEED)
    ctrl = RecedingHorizon(ca.AISP(num_samples=3, num_iterations=2, sigma=0.7, temperature=0.5),
                           block_size=block, lookahead=lookahead)
    res, tokens, full, prefix = counted_run(ctrl, dyn, reward, prompts, seed)
    assert res.tokens.tolist() == tokens
    assert res.full_calls.tolist() == full and res.prefix_calls.tolist() == prefix
    for j, s in enumerate(res.responses):
        assert END not in s.tokens[:-1] and (len(s.tokens) == ENDING_HORIZON or s.tokens[-1] == END)
        assert [y for w in res.meta["committed"] for y in w[j]] == s.tokens
        assert float(res.rewards[j]) == float(reward([prompts[j]], ca.Outcomes(
            num_prompts=1, num_samples=1, tokens=torch.tensor([[s.tokens]])))[0, 0])
        w = windows_until_end(res, j, ENDING_HORIZON)
        assert [int(c.rows[j]) for c in res.trace] == [1] * w + [0] * (len(res.trace) - w)
        assert all(c[j] == [] for c in res.meta["committed"][w:])
        assert full[j] + prefix[j] == 3 * 2 * w
        alone, tokens_alone, full_alone, prefix_alone = counted_run(ctrl, dyn, reward, [prompts[j]], seed)
        assert same_sample(alone.responses[0], s) and float(alone.rewards[0]) == float(res.rewards[j])
        assert len(alone.trace) == w and (full_alone[0], prefix_alone[0]) == (full[j], prefix[j])
        assert alone.tokens.tolist() == tokens_alone and tokens_alone[0] <= tokens[j]


def test_responses_end_early_and_the_old_count_fails(monkeypatch):
    """Power: on the ending chain with b = 1, L = 2, prompt 1's committed prefix ends at t = 2 <
    T while prompt 0 goes on to T, and the budget equals the wrappers' counts; counting each
    replay as n·t tokens (the count before ended prefixes were replayed at their length) does
    not, on this run."""
    dyn, reward, prompts, _ = make_ending_chain(ENDING_SEED)
    ctrl = RecedingHorizon(ca.AISP(num_samples=3, num_iterations=2, sigma=0.7, temperature=0.5),
                           block_size=1, lookahead=2)
    res, tokens, full, prefix = counted_run(ctrl, dyn, reward, prompts, 3)
    assert [len(s.tokens) for s in res.responses] == [ENDING_HORIZON, 2] and res.responses[1].tokens[-1] == END
    assert res.tokens.tolist() == tokens and res.full_calls.tolist() == full and res.prefix_calls.tolist() == prefix
    assert [int(c.rows[1]) for c in res.trace] == [1, 1, 0, 0]
    replay = RecedingHorizon._replay

    def replay_counted_as_n_t(dynamics, context, history, num_rows):
        rows, _ = replay(dynamics, context, history, num_rows)
        t = sum(noise.shape[2] for _, noise in history)
        return rows, torch.full((rows.num_prompts,), num_rows * t, dtype=torch.long)

    monkeypatch.setattr(RecedingHorizon, "_replay", staticmethod(replay_counted_as_n_t))
    wrong, tokens_again, _, _ = counted_run(ctrl, dyn, reward, prompts, 3)
    assert tokens_again == tokens and wrong.tokens.tolist() != tokens


def test_an_ended_response_on_a_language_model():
    """End to end on the tiny Llama whose end token fires (uniforms shrunk, a reward for short
    texts): a committed prefix ends before T, that prompt's reward calls stop there, and the
    tokens and calls are the wrappers' counts."""
    lm = CausalLM(make_model("llama"), make_tokenizer(), sampling=SamplingConfig(max_new_tokens=4),
                  engine_options={"batch_invariant": True})
    reward = ca.CallableReward(lambda p, text: -float(len(text)), texts=True, name="short")
    ctrl = RecedingHorizon(ca.AISP(num_samples=3, num_iterations=2, sigma=0.7, temperature=0.5),
                           block_size=1, lookahead=2)
    res, tokens, full, prefix = counted_run(ctrl, EarlyEnd(lm), reward, list(PROMPTS[:2]), 0)
    assert res.tokens.tolist() == tokens and res.full_calls.tolist() == full and res.prefix_calls.tolist() == prefix
    lengths = [len(s.tokens) for s in res.responses]
    assert min(lengths) < 4 and max(lengths) == 4
    for j in range(2):
        assert full[j] + prefix[j] == 3 * 2 * windows_until_end(res, j, 4)
