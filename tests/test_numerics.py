"""Numerics at the extremes: every controller's weights and update, the adaptive temperature,
the reservoir and the free energy, over rewards up to |r| = 1e12, λ down to the smallest
positive float, n = 1 and rewards that are all equal.

The property: each step either gives finite results (proposal mean and scale finite, weights
that are a distribution, λ > 0 or NaN/+inf as documented, a reservoir that keeps a response)
or is refused with a :class:`~ctrlalign.ConfigError` naming λ and the reward scale, and only
when r/λ truly overflows float64. The power check runs the same property on the naive
``r / λ`` weights the controllers used before and sees it fail.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ctrlalign as ca
from ctrlalign import ConfigError, theory
from ctrlalign.controllers import base as controller_base
from ctrlalign.diagnostics import diagnose
from ctrlalign.random import make_generators
from ctrlalign.selection import Reservoir
from ctrlalign.spaces import PerToken

SPACE = PerToken().bind(2, SimpleNamespace(hidden_size=3))  # θ (τ=2, d=3)
TINY = 5e-324  # the smallest positive float64
FLOAT64_MAX = float(np.finfo(np.float64).max)

temperatures = st.one_of(
    st.sampled_from([TINY, 1e-300, 1e-296, 1e-200, 1e-12, 1.0, 1e12, 1e300]),
    st.floats(min_value=TINY, max_value=1e300, allow_nan=False, allow_infinity=False),
)
reward_values = st.one_of(st.sampled_from([0.0, 1e12, -1e12, 1e-300, 1.0]), st.floats(-1e12, 1e12))


@st.composite
def reward_grids(draw):
    """(D, n) rewards: D in {1, 2}, n in 1..6, sometimes all equal, float32 or float64."""
    D = draw(st.integers(1, 2))
    n = draw(st.integers(1, 6))
    if draw(st.booleans()):
        values = [draw(reward_values)] * (D * n)
    else:
        values = draw(st.lists(reward_values, min_size=D * n, max_size=D * n))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return torch.tensor(values, dtype=torch.float64).reshape(D, n).to(dtype)


def controllers(n: int, lam: float, target_ess: float) -> list[ca.Controller]:
    """Every controller, with λ fixed at ``lam`` and adaptive at ``target_ess`` where it has one."""
    fixed = dict(num_samples=n, num_iterations=2, temperature=lam)
    adaptive = dict(num_samples=n, num_iterations=2, target_ess=target_ess)
    return [
        ca.AISP(**fixed), ca.AISP(**adaptive, alpha=0.0), ca.AISP(**fixed, alpha=0.0),
        ca.MPPI(**fixed, likelihood_ratio=0.0), ca.MPPI(**adaptive, step_size=0.5),
        ca.SoftmaxSampling(**fixed), ca.SoftmaxSampling(**adaptive),
        ca.BestOfN(num_samples=n, num_iterations=2, sigma=0.3),
        ca.CEM(num_samples=n, num_iterations=2), ca.CEM(num_samples=n, num_iterations=2, refit_std=True),
    ]


def overflows(rewards: torch.Tensor, lam: float) -> bool:
    """Whether r/λ leaves float64 for some reward (the one case a refusal is allowed)."""
    return bool((rewards.double().abs() / lam > FLOAT64_MAX).any()) or bool(
        torch.isinf(rewards.double() / lam).any())


def run_rounds(controller: ca.Controller, rewards: torch.Tensor) -> None:
    """Two rounds (the second from a moved mean, so the likelihood-ratio offsets are non-zero)
    with the reservoir and the diagnostics; asserts every result is finite and well-formed."""
    D, n = rewards.shape
    gens = make_generators(0, [f"p{d}" for d in range(D)])
    state = controller.init(D, SPACE)
    kept = Reservoir().init(D)
    for round_ in range(2):
        theta = controller.sample(state, [g.control for g in gens])
        r = rewards if round_ == 0 else rewards.flip(-1)
        new, info = controller.step(state, theta, r)
        ell = info.log_weights
        assert ell.shape == (D, n) and ell.dtype == torch.float64
        assert not torch.isnan(ell).any() and not (ell == math.inf).any()
        assert torch.isfinite(ell).any(-1).all()  # every prompt has a sample of positive weight
        w = torch.softmax(ell, -1)
        assert torch.isfinite(w).all() and torch.allclose(w.sum(-1), torch.ones(D, dtype=torch.float64))
        lam = info.temperature
        assert bool(((lam > 0) | torch.isnan(lam)).all())
        assert torch.isfinite(new.mean).all() and torch.isfinite(new.std).all() and bool((new.std > 0).all())
        diag = diagnose(controller, state, r, info)
        assert torch.isfinite(diag.ess).all() and torch.isfinite(diag.weight_entropy).all()
        assert bool(((diag.ess >= 1 - 1e-9) & (diag.ess <= n + 1e-9)).all())
        kept, chosen, swap = Reservoir().update(kept, r, ell, [g.select for g in gens])
        assert bool(((chosen >= 0) & (chosen < n)).all()) and torch.isfinite(kept.log_mass).all()
        state = new
    assert torch.isfinite(kept.reward).all()  # the reservoir kept a response for every prompt


def check_extremes(controller: ca.Controller, rewards: torch.Tensor, lam: float) -> None:
    """Finite results, or a ConfigError naming λ and the reward scale exactly when r/λ overflows."""
    fixed = getattr(controller, "temperature", None) is not None
    try:
        run_rounds(controller, rewards)
    except ConfigError as exc:
        assert fixed and overflows(rewards, lam), f"refused although r/λ is finite: {exc}"
        assert "temperature (λ)" in str(exc) and "|r| =" in str(exc), str(exc)
        return
    assert not (fixed and overflows(rewards, lam)), "r/λ overflows float64 but nothing was refused"


@settings(max_examples=150, deadline=None)
@given(rewards=reward_grids(), lam=temperatures, target_ess=st.floats(0.01, 1.0))
def test_every_controller_is_finite_or_refuses_naming_lambda(rewards, lam, target_ess):
    for controller in controllers(rewards.shape[1], lam, target_ess):
        check_extremes(controller, rewards, lam)


@settings(max_examples=150, deadline=None)
@given(rewards=reward_grids(), target_ess=st.floats(0.01, 1.0))
def test_adaptive_temperature_at_the_extremes(rewards, target_ess):
    """λ > 0 (+inf exactly where a prompt's rewards do not vary) and r/λ finite: an adaptive λ
    is never refused."""
    lam = theory.adaptive_temperature(rewards, target_ess)
    r = rewards.double()
    assert lam.shape == r.shape[:1] and bool((lam > 0).all()) and not torch.isnan(lam).any()
    flat = r.amax(-1) == r.amin(-1)
    assert bool(torch.isinf(lam[flat]).all())
    logits = theory.tempered_logits(r, lam)
    assert torch.isfinite(logits).all()


@settings(max_examples=100, deadline=None)
@given(rewards=reward_grids(), lam=temperatures)
def test_theory_weights_and_free_energy_at_the_extremes(rewards, lam):
    try:
        lw = theory.log_weights(rewards, lam)
        F = theory.free_energy(rewards, lam)
    except ConfigError as exc:
        assert overflows(rewards, lam) and "temperature (λ)" in str(exc)
        return
    assert not overflows(rewards, lam)
    w = lw.double().exp()
    assert torch.isfinite(w).all() and torch.allclose(w.sum(-1), torch.ones(w.shape[0], dtype=torch.float64),
                                                      atol=1e-5)
    assert not torch.isnan(F).any()


# the examples from the issue, named
EXTREMES = [
    ("lambda-1e-300-rewards-1e9", torch.tensor([[1e9, -2e9, 5e8, 3e9]]), 1e-300),
    ("smallest-lambda-n-1", torch.tensor([[1e12]]), TINY),
    ("smallest-lambda-equal-rewards", torch.full((2, 4), -1e12), TINY),
]


@pytest.mark.parametrize("case, rewards, lam", EXTREMES, ids=[c[0] for c in EXTREMES])
def test_issue_extremes_are_refused_naming_lambda(case, rewards, lam):
    for controller in controllers(rewards.shape[1], lam, 0.5):
        if getattr(controller, "temperature", None) is None:
            run_rounds(controller, rewards)  # no λ (or an adaptive one): finite
            continue
        with pytest.raises(ConfigError, match=r"temperature \(λ\) = \S+ is too small for rewards of scale \|r\| = "):
            run_rounds(controller, rewards)


def test_issue_extremes_through_align():
    """λ = 1e-300 with rewards of order 1e9 through :func:`ctrlalign.align`: a ConfigError
    naming λ (it used to blame the reward for NaN controls, or end in "kept no response")."""
    dyn = ca.LinearGaussian(torch.eye(4), horizon=2, hidden_size=2)
    big = ca.CallableReward(lambda p, s: 1e9 * float(s.value[0]), name="big")
    for ctrl in (ca.AISP, ca.MPPI, ca.SoftmaxSampling):
        with pytest.raises(ConfigError, match=r"temperature \(λ\) = 1e-300 is too small"):
            ca.align(dyn, big, ctrl(temperature=1e-300, num_samples=4, num_iterations=2), [torch.zeros(4)])
    # a λ just large enough gives one-hot weights and a finite result
    res = ca.align(dyn, big, ca.AISP(temperature=1e-290, num_samples=4, num_iterations=2), [torch.zeros(4)])
    assert torch.isfinite(res.rewards).all() and torch.isfinite(res.state.mean).all()


def test_power_naive_weights_fail_the_same_check(monkeypatch):
    """The property has power: the naive r/λ − c (no overflow check) the controllers used
    before gives NaN weights on the issue's example, and :func:`check_extremes` catches it."""
    def naive(rewards, temperature, offsets=None):
        r = rewards.double()
        lam = torch.as_tensor(temperature, dtype=torch.float64)
        logits = r / (lam.unsqueeze(-1) if lam.dim() else lam)
        return logits if offsets is None else logits - offsets

    monkeypatch.setattr(controller_base.theory, "tempered_logits", naive)
    rewards, lam = EXTREMES[0][1], EXTREMES[0][2]
    failed = 0
    for controller in controllers(4, lam, 0.5)[:1] + [ca.SoftmaxSampling(num_samples=4, temperature=lam)]:
        with pytest.raises(AssertionError):
            check_extremes(controller, rewards, lam)
        failed += 1
    assert failed == 2


# --------------------------------------------------------------------------------------------
# refusals at construction: (id, constructor, exception type, fragments)

CONSTRUCTION = [
    ("cem-refit-min-std-zero", lambda: ca.CEM(refit_std=True, min_std=0.0), ConfigError,
     ["min_std=0.0", "refit_std=True", "0 < min_std <= sigma"]),
    ("cem-refit-min-std-above-sigma", lambda: ca.CEM(refit_std=True, sigma=0.1, min_std=0.5), ConfigError,
     ["min_std=0.5", "σ = 0.1"]),
    ("sigma-underflows-float32", lambda: ca.AISP(sigma=1e-50).init(1, SPACE), ConfigError,
     ["sigma (σ) = 1e-50", "float32"]),
]


@pytest.mark.parametrize("case, make, error, fragments", CONSTRUCTION, ids=[c[0] for c in CONSTRUCTION])
def test_degenerate_settings_are_refused_early(case, make, error, fragments):
    with pytest.raises(error) as exc:
        make()
    for f in fragments:
        assert f in str(exc.value), (f, str(exc.value))


def test_cem_without_refit_keeps_min_std_free():
    """min_std only matters with refit_std: CEM(min_std=0) without it is valid and runs."""
    ctrl = ca.CEM(min_std=0.0, num_samples=3)
    run_rounds(ctrl, torch.tensor([[1.0, 2.0, 3.0]]))


def test_reservoir_refuses_nan_or_plus_inf_log_weights():
    kept = Reservoir().init(1)
    gens = make_generators(0, ["p"])
    for bad in (float("nan"), math.inf):
        with pytest.raises(ConfigError, match=rf"prompt 0, sample 1 is {bad}"):
            Reservoir().update(kept, torch.zeros(1, 2), torch.tensor([[0.0, bad]]), [g.select for g in gens])
