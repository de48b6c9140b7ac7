"""Speculative rejection: stopping nothing is Best-of-n₀ bit for bit; survivors finish exactly as
in Best-of-n₀; the budget counts what was decoded and scored; the schedule is validated."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ctrlalign as ca
from ctrlalign._checks import ConfigError
from ctrlalign.closedloop import SpeculativeRejection
from ctrlalign.closedloop.speculative import keep_best
from ctrlalign.rewards.toy import TableReward
from ctrlalign.testing import TAU
from ctrlalign.testing import make_token_chain as problem


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8), stop_nothing=st.sampled_from(["rate", "full"]))
@settings(max_examples=15, deadline=None)
def test_stopping_nothing_is_best_of_n(seed, n, stop_nothing):
    dyn, reward, prompts, _ = problem()
    sr = (SpeculativeRejection(num_samples=n, schedule=[(1, n), (2, n)]) if stop_nothing == "full"
          else SpeculativeRejection(num_samples=n, keep_fraction=1.0, block_size=1))
    a = sr.run(dyn, reward, prompts, seed=seed)
    b = ca.align(dyn, reward, ca.BestOfN(num_samples=n, num_iterations=1, sigma=0.0), prompts, seed=seed)
    assert torch.equal(a.rewards, b.rewards.double())
    assert [s.tokens for s in a.responses] == [s.tokens for s in b.responses]
    assert a.tokens.tolist() == [n * TAU] * len(prompts) and a.prefix_calls.tolist() == [0] * len(prompts)



@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=15, deadline=None)
def test_survivors_finish_exactly_as_in_best_of_n0(seed):
    """Every finished survivor is one of Best-of-n₀'s responses, row for row, so the kept
    reward never beats Best-of-n₀'s; the budget is n₀·t₁ + m₁·(t₂ − t₁) + m₂·(T − t₂) tokens."""
    dyn, reward, prompts, _ = problem()
    n0, schedule = 8, [(1, 4), (2, 2)]
    sr = SpeculativeRejection(num_samples=n0, schedule=schedule).run(dyn, reward, prompts, seed=seed)
    context = dyn.prepare(prompts)
    full = dyn.rollout(context, None, [g.rollout for g in ca.make_generators(seed, prompts)], n0)
    for j in range(len(prompts)):
        pool = [tuple(t) for t in full.tokens[j].tolist()]
        assert all(tuple(t) in pool for t in sr.meta["final_tokens"][j])
    bon = ca.align(dyn, reward, ca.BestOfN(num_samples=n0, num_iterations=1, sigma=0.0), prompts, seed=seed)
    assert (sr.rewards <= bon.rewards.double()).all()
    assert sr.tokens.tolist() == [8 * 1 + 4 * 1 + 2 * 1] * len(prompts)
    assert sr.prefix_calls.tolist() == [8 + 4] * len(prompts) and sr.full_calls.tolist() == [2] * len(prompts)
    assert [c.position for c in sr.trace] == [1, 2, TAU]


def test_the_kept_rows_have_the_best_prefix_scores():
    """At the checkpoint the survivors are exactly the m best prefixes (by the prefix table)."""
    dyn, reward, prompts, _ = problem()
    sr = SpeculativeRejection(num_samples=6, schedule=[(2, 2)]).run(dyn, reward, prompts, seed=4)
    full = dyn.rollout(dyn.prepare(prompts), None, [g.rollout for g in ca.make_generators(4, prompts)], 6)
    for j in range(len(prompts)):
        prefixes = [tuple(t[:2]) for t in full.tokens[j].tolist()]
        scores = torch.tensor([reward.prefix_table[p] for p in prefixes])
        kept = keep_best(scores.unsqueeze(0), 2)[0].tolist()
        assert [tuple(t) for t in sr.meta["final_tokens"][j]] == [tuple(full.tokens[j, i].tolist()) for i in kept]


@given(scores=st.lists(st.integers(-3, 3), min_size=1, max_size=9), data=st.data())
@settings(max_examples=60, deadline=None)
def test_keep_best_keeps_the_top_m_ties_to_the_earlier_row(scores, data):
    m = data.draw(st.integers(1, len(scores)))
    kept = keep_best(torch.tensor([scores], dtype=torch.float64), m)[0].tolist()
    expected = sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:m])
    assert kept == expected


def test_the_constant_rate_schedule():
    sr = SpeculativeRejection(num_samples=128, block_size=8, keep_fraction=0.5)
    assert sr.schedule_for(32) == ((8, 64, 64), (16, 32, 32), (24, 16, 16))
    assert SpeculativeRejection(num_samples=3, block_size=1, keep_fraction=0.1).schedule_for(4) == (
        (1, 1, 1), (2, 1, 1), (3, 1, 1))
    assert SpeculativeRejection(num_samples=8, schedule=[(2, 4), (9, 2)]).schedule_for(6) == ((2, 4, 4),)
    assert SpeculativeRejection(num_samples=8, schedule=[(2, 2, 8), (4, 0.25, 0.5)]).schedule_for(6) == (
        (2, 2, 8), (4, 2, 4))


def test_bad_schedules_and_rewards_are_refused_naming_them():
    with pytest.raises(ConfigError, match="must not increase"):
        SpeculativeRejection(num_samples=8, schedule=[(2, 4), (4, 6)])
    with pytest.raises(ConfigError, match="schedule\\[1\\] position"):
        SpeculativeRejection(num_samples=8, schedule=[(4, 4), (4, 2)])
    with pytest.raises(ConfigError, match="schedule\\[0\\] must be a pair .* or a triple"):
        SpeculativeRejection(num_samples=8, schedule=[4])
    with pytest.raises(ConfigError, match="rows kept"):
        SpeculativeRejection(num_samples=8, schedule=[(2, 0)])
    with pytest.raises(ConfigError, match="keep_fraction"):
        SpeculativeRejection(keep_fraction=0.0)
    dyn, reward, prompts, _ = problem()
    with pytest.raises(ConfigError, match="scores_prefixes=False"):
        SpeculativeRejection(num_samples=4, schedule=[(1, 2)]).run(dyn, TableReward(reward.table), prompts)


def test_the_survivor_check_has_power(monkeypatch):
    """If survivors took the noise of the row index they land on (not their own), some would
    finish differently from Best-of-n₀: the check above sees it."""
    from ctrlalign.closedloop.particles import Particles

    def wrong(self, rows, *, carry_noise):
        self.state = self.dynamics.select(self.state, rows)
        self.noise = self.noise[:, :rows.shape[1]]

    monkeypatch.setattr(Particles, "select", wrong)
    dyn, reward, prompts, _ = problem()
    n0, missing = 8, 0
    for seed in range(5):
        sr = SpeculativeRejection(num_samples=n0, schedule=[(1, 4), (2, 2)]).run(dyn, reward, prompts, seed=seed)
        full = dyn.rollout(dyn.prepare(prompts), None, [g.rollout for g in ca.make_generators(seed, prompts)], n0)
        for j in range(len(prompts)):
            pool = [tuple(t) for t in full.tokens[j].tolist()]
            missing += sum(tuple(t) not in pool for t in sr.meta["final_tokens"][j])
    assert missing > 0


@settings(max_examples=60, deadline=None)
@given(n0=st.integers(1, 300), fractions=st.lists(st.floats(0.001, 1.0), min_size=1, max_size=3))
def test_fractional_schedule_is_the_row_count_schedule_it_resolves_to(n0, fractions):
    """A schedule of fractions of n₀ (floats) keeps ⌈m·n₀⌉ rows (at least 1) — the same checkpoints
    as the row-count schedule it resolves to; a fraction of 0 or above 1 is refused naming it."""
    fractions = sorted(fractions, reverse=True)
    frac = SpeculativeRejection(num_samples=n0, schedule=[(4 * (i + 1), f) for i, f in enumerate(fractions)])
    counts = [max(1, math.ceil(f * n0)) for f in fractions]
    rows = SpeculativeRejection(num_samples=n0, schedule=[(4 * (i + 1), m) for i, m in enumerate(counts)])
    assert frac.schedule_for(64) == rows.schedule_for(64)
    assert frac.schedule_for(64) == tuple((4 * (i + 1), m, m) for i, m in enumerate(counts))
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"fraction kept must be in \(0, 1\]"):
            SpeculativeRejection(num_samples=n0, schedule=[(4, bad)])


# --- regrowth: (t, m, r) keeps the m best prefixes and forks them back to r rows -----------------------------------


def _rollout(dyn, prompts, seed, n):
    return dyn.rollout(dyn.prepare(prompts), None, [g.rollout for g in ca.make_generators(seed, prompts)], n)


def _children_differ(seeds=range(6)) -> tuple[bool, int]:
    """Run (1, 2, 6) on the token chain: every row i continues survivor i % 2's prefix (asserted);
    returns (whether the first two rows finish as in Best-of-6, how many forked rows end
    unlike their survivor)."""
    dyn, reward, prompts, _ = problem()
    as_in_bon, differ = True, 0
    for seed in seeds:
        sr = SpeculativeRejection(num_samples=6, schedule=[(1, 2, 6)]).run(dyn, reward, prompts, seed=seed)
        full = _rollout(dyn, prompts, seed, 6)
        for j in range(len(prompts)):
            final = sr.meta["final_tokens"][j]
            kept = keep_best(torch.tensor([[reward.prefix_table[tuple(t[:1])] for t in full.tokens[j].tolist()]]),
                             2)[0].tolist()
            assert [t[:1] for t in final] == [full.tokens[j, kept[i % 2], :1].tolist() for i in range(6)]
            as_in_bon &= final[:2] == [full.tokens[j, i].tolist() for i in kept]
            differ += sum(final[i] != final[i % 2] for i in range(2, 6))
    return as_in_bon, differ


def test_regrowth_forks_the_survivors_and_the_children_continue_differently():
    """After (1, 2, 6) rows 0 and 1 are the survivors, finishing as in Best-of-6 (their own noise);
    rows 2..5 continue their prefixes with stopped rows' noise, so some end elsewhere."""
    as_in_bon, differ = _children_differ()
    assert as_in_bon and differ > 0


def test_the_regrowth_check_has_power(monkeypatch):
    """Children given their survivor's own noise (carry_noise=True) finish as copies of it: the
    check above sees no child that differs."""
    monkeypatch.setattr(SpeculativeRejection, "regrow", staticmethod(
        lambda kept, before, after: (kept[:, torch.arange(after) % kept.shape[1]],) * 2))
    assert _children_differ()[1] == 0


@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=10, deadline=None)
def test_regrowth_budget_and_r_equal_m_is_pruning_bit_for_bit(seed):
    """Tokens n₀·t₁ + r₁·(t₂ − t₁) + r₂·(T − t₂); prefix calls n₀ + r₁; full calls r₂; an explicit
    r = m is the pair (t, m) bit for bit."""
    dyn, reward, prompts, _ = problem()
    sr = SpeculativeRejection(num_samples=6, schedule=[(1, 2, 5), (2, 3, 4)]).run(dyn, reward, prompts, seed=seed)
    D = len(prompts)
    assert sr.tokens.tolist() == [6 * 1 + 5 * 1 + 4 * 1] * D
    assert sr.prefix_calls.tolist() == [6 + 5] * D and sr.full_calls.tolist() == [4] * D
    assert [c.position for c in sr.trace] == [1, 2, TAU]
    assert [c.rows[0].item() for c in sr.trace[:2]] == [5, 4]
    a = SpeculativeRejection(num_samples=6, schedule=[(1, 3, 3), (2, 2, 2)]).run(dyn, reward, prompts, seed=seed)
    b = SpeculativeRejection(num_samples=6, schedule=[(1, 3), (2, 2)]).run(dyn, reward, prompts, seed=seed)
    assert torch.equal(a.rewards, b.rewards) and a.meta == b.meta and torch.equal(a.tokens, b.tokens)


@given(D=st.integers(1, 3), before=st.integers(1, 9), data=st.data())
@settings(max_examples=80, deadline=None)
def test_regrow_gives_every_row_a_survivor_and_unused_noise(D, before, data):
    """Row i continues survivor i mod m; its noise column is the survivor's own for i < m and a
    stopped row's otherwise, never shared within a prompt."""
    m = data.draw(st.integers(1, before))
    r = data.draw(st.integers(m, before))
    kept = torch.stack([torch.randperm(before)[:m].sort().values for _ in range(D)])
    rows, noise = SpeculativeRejection.regrow(kept, before, r)
    assert rows.shape == noise.shape == (D, r)
    assert torch.equal(rows, kept[:, torch.arange(r) % m]) and torch.equal(noise[:, :m], kept)
    for j in range(D):
        assert len(set(noise[j].tolist())) == r
        assert not set(noise[j, m:].tolist()) & set(kept[j].tolist())


def test_bad_regrowth_is_refused_naming_r():
    with pytest.raises(ConfigError, match=r"r=2 \(2 rows\).*rows kept \(3\)"):
        SpeculativeRejection(num_samples=8, schedule=[(2, 3, 2)])
    with pytest.raises(ConfigError, match=r"r=9 .*the 8 alive"):
        SpeculativeRejection(num_samples=8, schedule=[(2, 3, 9)])
    with pytest.raises(ConfigError, match=r"r=6 .*the 4 alive"):
        SpeculativeRejection(num_samples=8, schedule=[(2, 2, 4), (3, 2, 6)])
    with pytest.raises(ConfigError, match=r"fraction after must be in"):
        SpeculativeRejection(num_samples=8, schedule=[(2, 0.25, 1.5)])
