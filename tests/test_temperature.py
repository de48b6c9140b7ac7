r"""The adaptive temperature: λ per prompt and round so that the ESS hits a target fraction of n.

Properties (hypothesis): the target ESS is met to 1e-6·n wherever it is attainable; the weights
are invariant to any affine change a·r + c (a > 0) of the rewards; the fixed-λ path is the
documented log_weights; the λ used and the rewards' spread are recorded in the trace. Power: a
temperature that ignores the rewards' scale (a fixed λ) and a bisection that moves the wrong
way each fail the property they should.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import ctrlalign as ca
from ctrlalign import theory
from ctrlalign.testing import make_linear

rewards_st = st.lists(st.floats(-50, 50, allow_nan=False), min_size=3, max_size=24, unique=True)


def _weights(r: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return torch.softmax(r / lam.unsqueeze(-1), -1)


def _ess_at(r: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return theory.effective_sample_size(torch.log_softmax(r / lam.unsqueeze(-1), -1))


def _attainable(r: torch.Tensor, frac: float) -> bool:
    z = (r - r.mean(-1, keepdim=True)) / r.std(-1, correction=0, keepdim=True)
    lo = _ess_at(z, torch.tensor([1e-6], dtype=torch.float64))
    hi = _ess_at(z, torch.tensor([1e6], dtype=torch.float64))
    n = r.shape[-1]
    return bool(lo < frac * n - 1e-3) and bool(hi > frac * n + 1e-3)


def check_target_met(solver, r: torch.Tensor, frac: float) -> None:
    lam = solver(r, frac)
    assert bool(torch.all(lam > 0))
    ess = _ess_at(r, lam)
    assert torch.allclose(ess, torch.full_like(ess, frac * r.shape[-1]), atol=1e-6 * r.shape[-1]), (ess, frac)


def check_affine_invariance(solver, r: torch.Tensor, frac: float, a: float, c: float) -> None:
    w1 = _weights(r, solver(r, frac))
    r2 = a * r + c
    w2 = _weights(r2, solver(r2, frac))
    torch.testing.assert_close(w1, w2, atol=1e-7, rtol=1e-6)


@given(r=rewards_st, frac=st.floats(0.1, 0.95))
@settings(max_examples=150, deadline=None)
def test_target_ess_is_met(r, frac):
    rt = torch.tensor([r], dtype=torch.float64)
    assume(float(rt.std()) > 1e-6 and _attainable(rt, frac))
    check_target_met(theory.adaptive_temperature, rt, frac)


@given(r=rewards_st, frac=st.floats(0.1, 0.95), a=st.floats(1e-3, 1e3), c=st.floats(-1e3, 1e3))
@settings(max_examples=150, deadline=None)
def test_weights_are_invariant_to_affine_reward_changes(r, frac, a, c):
    rt = torch.tensor([r], dtype=torch.float64)
    assume(float(rt.std()) > 1e-3)
    check_affine_invariance(theory.adaptive_temperature, rt, frac, a, c)


def test_the_checks_have_power():
    """A fixed λ is not affine invariant; a bisection stepping the wrong way misses the target."""
    r = torch.tensor([[0.1, 0.5, -0.3, 0.9, 0.2, -1.0]], dtype=torch.float64)

    def fixed(rr, frac):
        return torch.full(rr.shape[:1], 0.3, dtype=torch.float64)

    with pytest.raises(AssertionError):
        check_affine_invariance(fixed, r, 0.5, 10.0, 1.0)

    def wrong_way(rr, frac):
        lo, hi = torch.full(rr.shape[:1], math.log(1e-6)), torch.full(rr.shape[:1], math.log(1e6))
        for _ in range(100):
            mid = (lo + hi) / 2
            small = _ess_at(rr, mid.double().exp()) < frac * rr.shape[-1]
            lo, hi = torch.where(small, lo, mid), torch.where(small, mid, hi)  # swapped
        return ((lo + hi) / 2).double().exp()

    with pytest.raises(AssertionError):
        check_target_met(wrong_way, r, 0.5)


def test_flat_rewards_give_uniform_weights_and_infinite_lambda():
    r = torch.full((2, 5), 0.25, dtype=torch.float64)
    lam = theory.adaptive_temperature(r, 0.5)
    assert torch.isinf(lam).all()
    ctrl = ca.AISP(num_samples=5, target_ess=0.5)
    theta = torch.zeros(2, 5, 3, 2)
    log_w, _ = ctrl.weigh(ctrl.init(2, ca.PerToken(horizon=3, hidden_size=2)), theta, r)
    torch.testing.assert_close(torch.softmax(log_w, -1), torch.full((2, 5), 0.2, dtype=torch.float64))


def test_bad_target_is_named():
    with pytest.raises(ValueError, match=r"target_ess \(ρ_ESS\) must be a number in \(0, 1\]"):
        ca.AISP(target_ess=1.5)
    with pytest.raises(ValueError, match="target_ess must be in"):
        theory.adaptive_temperature(torch.zeros(1, 3), 0.0)


@given(seed=st.integers(0, 10_000), lam=st.floats(0.01, 10), alpha=st.floats(0, 1))
@settings(max_examples=30, deadline=None)
def test_fixed_lambda_path_is_the_documented_log_weights(seed, lam, alpha):
    g = torch.Generator().manual_seed(seed)
    ctrl = ca.AISP(num_samples=6, sigma=0.4, temperature=lam, alpha=alpha)
    space = ca.PerToken(horizon=3, hidden_size=2)
    state = ctrl.init(2, space, dtype=torch.float64).replace(mean=torch.randn(2, 3, 2, generator=g, dtype=torch.float64))
    theta = ctrl.sample(state, [torch.Generator().manual_seed(seed + j) for j in range(2)])
    r = torch.randn(2, 6, generator=g, dtype=torch.float64)
    log_w, used = ctrl.weigh(state, theta, r)
    ref = theory.log_weights(r, lam, controls=theta, mean=state.mean, sigma=0.4, alpha=alpha)
    torch.testing.assert_close(torch.log_softmax(log_w, -1), ref)
    assert torch.all(used == lam)


def test_adaptive_lambda_with_the_likelihood_ratio_meets_the_target():
    """With α < 1 the offsets enter the bisection: the ESS of the actual weights is on target."""
    g = torch.Generator().manual_seed(0)
    ctrl = ca.AISP(num_samples=16, sigma=0.5, target_ess=0.4, alpha=0.9)
    space = ca.PerToken(horizon=3, hidden_size=2)
    state = ctrl.init(3, space, dtype=torch.float64).replace(
        mean=0.1 * torch.randn(3, 3, 2, generator=g, dtype=torch.float64))
    theta = ctrl.sample(state, [torch.Generator().manual_seed(j) for j in range(3)])
    r = torch.randn(3, 16, generator=g, dtype=torch.float64)
    log_w, lam = ctrl.weigh(state, theta, r)
    ess = theory.effective_sample_size(torch.log_softmax(log_w, -1))
    torch.testing.assert_close(ess, torch.full((3,), 0.4 * 16, dtype=torch.float64), atol=1e-5, rtol=0)


def test_trace_records_lambda_and_reward_spread():
    dyn, reward, prompts = make_linear()
    res = ca.align(dyn, reward, ca.AISP(num_samples=8, num_iterations=3, sigma=0.5, target_ess=0.5), prompts)
    for rec in res.trace:
        g = rec.diagnostics
        assert torch.isfinite(g.temperature).all() and (g.temperature > 0).all()
        torch.testing.assert_close(g.ess, torch.full_like(g.ess, 4.0), atol=1e-5, rtol=0)
        assert (g.reward_std > 0).all()
    row = res.prompt_trace(0)[0]
    assert row["temperature"] > 0 and row["reward_std"] > 0
    fixed = ca.align(dyn, reward, ca.AISP(num_samples=8, num_iterations=2, sigma=0.5, temperature=0.3), prompts)
    assert all(float(t) == 0.3 for t in fixed.trace[-1].diagnostics.temperature)
    bon = ca.align(dyn, reward, ca.BestOfN(num_samples=8, num_iterations=2, sigma=0.5), prompts)
    assert bon.prompt_trace(0)[0]["temperature"] is None  # no λ: reported as missing, not invented
