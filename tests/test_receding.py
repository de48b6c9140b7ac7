"""Receding-horizon control: one block is the inner controller bit for bit; the committed blocks
are the response; the budget counts the replayed prefixes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ctrlalign as ca
from ctrlalign._checks import ConfigError
from ctrlalign.closedloop import RecedingHorizon
from ctrlalign.rewards.toy import TableReward
from ctrlalign.testing import CONTROLLERS, SPACES, SYSTEMS, TAU, make_token_chain, same_sample


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
