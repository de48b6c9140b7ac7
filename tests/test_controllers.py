"""One contract test run over every controller, plus the controller-specific claims.

Contract: shapes, determinism under a seed, weights sum to one, budget accounting
(exactly n·k reward calls per prompt), per-prompt independence (a prompt's result is the
same alone and inside a batch of D prompts, at any position).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ctrlalign as ca
from ctrlalign import theory
from ctrlalign._checks import ConfigError, RewardError
from ctrlalign.controllers import CONTROLLERS as REGISTERED

#: the open-loop controllers of the registry (the closed-loop ones are tested in test_cli_closedloop.py)
CONTROLLER_CLASSES = {k: c for k, c in REGISTERED.items() if issubclass(c, ca.Controller)}
from ctrlalign.diagnostics import diagnose
from ctrlalign.testing import CONTROLLERS as FACTORIES
from ctrlalign.testing import (
    DIM,
    SPACES,
    SYSTEMS,
    TAU,
    ControllerContract,
    make_linear,
    make_softmax_head,
)
from ctrlalign.testing import same_sample as _same_sample

#: the built-in controllers, factories (n, k); align's default space is the paper's per-token one
CONTROLLERS = FACTORIES


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("name", FACTORIES)
class TestContract(ControllerContract):
    """The contract over every built-in controller × every control space × both toy systems."""


@pytest.mark.parametrize("system", SYSTEMS)
@given(n=st.integers(1, 7), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=15, deadline=None)
def test_bon_equals_aisp_with_zero_updates_bit_for_bit(system, n, seed):
    """BoN(n) from the prior = AISP with one iteration (zero mean updates), bit for bit."""
    dyn, reward, prompts = SYSTEMS[system]()
    bon = ca.align(dyn, reward, ca.BestOfN(num_samples=n, num_iterations=1, sigma=0.6), prompts, seed=seed)
    aisp = ca.align(dyn, reward, ca.AISP(num_samples=n, num_iterations=1, sigma=0.6, temperature=0.3, alpha=0.9),
                    prompts, seed=seed)
    assert torch.equal(bon.rewards, aisp.rewards)
    assert all(_same_sample(a, b) for a, b in zip(bon.responses, aisp.responses))
    assert torch.equal(bon.trace[0].diagnostics.mean_reward, aisp.trace[0].diagnostics.mean_reward)


@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 4))
@settings(max_examples=10, deadline=None)
def test_all_controllers_draw_identical_noise(seed, k):
    """Under the same seed every controller draws the same ε: V − U agrees at every iteration."""
    dyn, reward, prompts = make_linear()
    noises = {}
    for name in ("aisp", "bon_prior", "mppi", "softmax", "cem"):
        ctrl = CONTROLLERS[name](5, k)
        seen = []
        orig_step = ctrl.step

        def step(state, controls, rewards, _orig=orig_step, _seen=seen):
            _seen.append((controls - state.mean.unsqueeze(1)) / state.std.view(-1, 1, 1, 1))
            return _orig(state, controls, rewards)

        ctrl.step = step
        ca.align(dyn, reward, ctrl, prompts, seed=seed)
        noises[name] = torch.stack(seen)
    ref = noises.pop("bon_prior")
    for name, eps in noises.items():
        torch.testing.assert_close(eps, ref, atol=1e-5, rtol=1e-5, msg=name)


def test_bon_never_moves_its_mean_and_keeps_the_max():
    dyn, reward, prompts = make_linear()
    res = ca.align(dyn, reward, ca.BestOfN(num_samples=4, num_iterations=5, sigma=0.8), prompts)
    assert torch.count_nonzero(res.state.mean) == 0
    best = torch.stack([rec.diagnostics.max_reward for rec in res.trace]).max(0).values
    assert torch.equal(res.rewards, best)


def test_plain_bon_runs_the_uncontrolled_system():
    dyn, reward, prompts = make_linear()
    res = ca.align(dyn, reward, ca.BestOfN(num_samples=3, num_iterations=2, sigma=0.0), prompts)
    # y = x exactly without control: the kept value equals the prompt
    for d, s in enumerate(res.responses):
        assert torch.equal(s.value, prompts[d])


@given(alpha=st.floats(0, 1), lam=st.floats(0.05, 5), seed=st.integers(0, 1000))
@settings(max_examples=20, deadline=None)
def test_aisp_is_mppi_with_gamma_one_minus_alpha(alpha, lam, seed):
    dyn, reward, prompts = make_linear()
    a = ca.align(dyn, reward, ca.AISP(num_samples=5, num_iterations=3, sigma=0.5, temperature=lam, alpha=alpha),
                 prompts, seed=seed)
    m = ca.align(dyn, reward, ca.MPPI(num_samples=5, num_iterations=3, sigma=0.5, temperature=lam,
                                      likelihood_ratio=1 - alpha, step_size=1.0), prompts, seed=seed)
    torch.testing.assert_close(a.state.mean, m.state.mean)
    assert torch.equal(a.rewards, m.rewards)


@given(seed=st.integers(0, 1000), lam=st.floats(0.01, 10), alpha=st.floats(0, 1))
@settings(max_examples=25, deadline=None)
def test_aisp_mean_update_is_the_weighted_average(seed, lam, alpha):
    """One AISP step moves U to Σ w_i V_i with the documented log-weights."""
    g = torch.Generator().manual_seed(seed)
    D, n = 2, 6
    ctrl = ca.AISP(num_samples=n, num_iterations=1, sigma=0.4, temperature=lam, alpha=alpha)
    space = ca.PerToken(horizon=TAU, hidden_size=DIM)
    state = ctrl.init(D, space, dtype=torch.float64)
    state = state.replace(mean=torch.randn(D, TAU, DIM, generator=g, dtype=torch.float64))
    controls = ctrl.sample(state, [torch.Generator().manual_seed(seed + j) for j in range(D)])
    rewards = torch.randn(D, n, generator=g, dtype=torch.float64)
    new, step_info = ctrl.step(state, controls, rewards)
    info = diagnose(ctrl, state, rewards, step_info)
    inner = (controls * state.mean.unsqueeze(1)).sum((-1, -2))
    logw = rewards / lam - (1 - alpha) / 0.4**2 * inner
    w = torch.softmax(logw, -1)
    torch.testing.assert_close(info.weights, w)
    torch.testing.assert_close(new.mean, torch.einsum("dn,dntk->dtk", w, controls))
    # and the trace reports the proposal's own ‖U‖ and KL
    torch.testing.assert_close(info.mean_norm, state.mean.flatten(1).norm(dim=-1))
    torch.testing.assert_close(info.kl, theory.gaussian_kl(state.mean, 0.4))


def test_cem_moves_to_the_elite_mean():
    D, n = 1, 8
    ctrl = ca.CEM(num_samples=n, num_iterations=1, sigma=1.0, elite_fraction=0.25)
    space = ca.PerToken(horizon=TAU, hidden_size=DIM)
    state = ctrl.init(D, space, dtype=torch.float64)
    controls = ctrl.sample(state, [torch.Generator().manual_seed(0)])
    rewards = torch.arange(n, dtype=torch.float64).view(1, n)
    new, step_info = ctrl.step(state, controls, rewards)
    info = diagnose(ctrl, state, rewards, step_info)
    torch.testing.assert_close(new.mean[0], controls[0, -2:].mean(0))
    assert float(info.ess[0]) == pytest.approx(2.0)


def test_softmax_sampling_keeps_a_resampled_not_the_best_response():
    """With a large λ the kept response is often not the argmax (it is a resample)."""
    dyn, reward, prompts = make_linear()
    res = ca.align(dyn, reward, ca.SoftmaxSampling(num_samples=8, num_iterations=2, sigma=1.0, temperature=100.0),
                   prompts * 5, seed=0)
    best = torch.stack([rec.diagnostics.max_reward for rec in res.trace]).max(0).values
    assert (res.rewards < best).any()
    assert torch.count_nonzero(res.state.mean) == 0


# ------------------------------------------------------------------ bad configuration


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: ca.AISP(sigma=0), "sigma (σ)"),
        (lambda: ca.AISP(sigma=-1), "sigma (σ)"),
        (lambda: ca.AISP(sigma=float("nan")), "sigma (σ)"),
        (lambda: ca.AISP(temperature=0), "temperature (λ)"),
        (lambda: ca.AISP(temperature=-0.5), "temperature (λ)"),
        (lambda: ca.AISP(num_samples=0), "num_samples (n)"),
        (lambda: ca.AISP(num_iterations=-1), "num_iterations (k)"),
        (lambda: ca.AISP(num_iterations=0), "num_iterations (k)"),
        (lambda: ca.PerToken(horizon=0), "horizon (τ)"),
        (lambda: ca.Blocks(block_size=0), "block_size (b)"),
        (lambda: ca.Subspace(rank=0), "rank (r)"),
        (lambda: ca.AISP(alpha=1.5), "alpha (α)"),
        (lambda: ca.MPPI(step_size=0), "step_size (β)"),
        (lambda: ca.BestOfN(sigma=-0.1), "sigma (σ)"),
        (lambda: ca.SoftmaxSampling(temperature=0), "temperature (λ)"),
        (lambda: ca.CEM(elite_fraction=0), "elite_fraction (ρ)"),
        (lambda: ca.CEM(num_samples=2.5), "num_samples (n)"),
    ],
)
def test_bad_configuration_names_the_value_and_range(make, fragment):
    with pytest.raises(ValueError) as exc:
        make()
    msg = str(exc.value)
    assert fragment in msg
    assert any(w in msg for w in (">", "[", "(0, 1]")), msg


def test_config_error_is_a_value_error():
    with pytest.raises(ConfigError, match=r"sigma \(σ\) must be a number > 0, got 0"):
        ca.AISP(sigma=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rewards_name_prompt_and_sample(bad):
    dyn, reward, prompts = make_linear()

    def poisoned(ps, outcomes):
        r = reward(ps, outcomes)
        r[2, 3] = bad
        return r

    with pytest.raises(RewardError, match=r"non-finite value \S+ at prompt 2 \(.*\), sample 3"):
        ca.align(dyn, ca.CallableReward(poisoned, batched=True), ca.AISP(num_samples=5, num_iterations=2), prompts)


def test_wrong_reward_shape_is_reported():
    dyn, reward, prompts = make_linear()
    with pytest.raises(RewardError, match=r"shape \(4, 4\), expected \(num_prompts=4, num_samples=5\)"):
        ca.align(dyn, ca.CallableReward(lambda ps, o: torch.zeros(4, 4), batched=True),
                 ca.AISP(num_samples=5, num_iterations=1), prompts)


def test_raising_reward_names_prompt_and_sample():
    dyn, reward, prompts = make_linear()

    def fn(prompt, sample):
        if float(sample.value[0]) > 0.5:
            raise RuntimeError("boom")
        return 0.0

    with pytest.raises(RewardError, match=r"raised RuntimeError: boom at prompt \d+, sample \d+"):
        ca.align(dyn, ca.CallableReward(fn), ca.BestOfN(num_samples=50, num_iterations=1, sigma=2.0), prompts)


def test_horizon_mismatch_is_reported():
    dyn, reward, prompts = make_linear()
    with pytest.raises(ValueError, match=r"horizon \(τ\) = 5 exceeds"):
        ca.align(dyn, reward, ca.AISP(), prompts, space=ca.PerToken(horizon=5))


def test_budget_caps_iterations():
    dyn, reward, prompts = make_linear()
    res = ca.align(dyn, reward, ca.AISP(num_samples=4, num_iterations=10), prompts, budget=12)
    assert len(res.trace) == 3 and res.reward_calls.tolist() == [12] * 4
    with pytest.raises(ValueError, match="budget must be an integer >= 4"):
        ca.align(dyn, reward, ca.AISP(num_samples=4, num_iterations=10), prompts, budget=3)


def test_result_records_are_json_serialisable():
    import json

    dyn, reward, prompts = make_softmax_head()
    res = ca.align(dyn, reward, ca.AISP(num_samples=4, num_iterations=2), prompts)
    recs = json.loads(res.to_json())
    assert len(recs) == 4 and len(recs[0]["trace"]) == 2
    assert recs[0]["reward_calls"] == 8
    assert set(recs[0]["trace"][0]) >= {"mean_reward", "max_reward", "ess", "weight_entropy", "mean_norm", "kl"}


@pytest.mark.parametrize("name", sorted(CONTROLLER_CLASSES))
def test_hyperparameters_are_immutable_after_construction(name):
    """Assigning a declared hyperparameter raises (it would skip validation); ``replace`` makes
    a validated copy and leaves the original alone."""
    ctrl = CONTROLLER_CLASSES[name](num_samples=4)
    for h in ctrl.spec().hyperparameters:
        with pytest.raises(AttributeError, match=f"{h.name}.*replace"):
            setattr(ctrl, h.name, getattr(ctrl, h.name))
    other = ctrl.replace(num_samples=6)
    assert type(other) is type(ctrl) and other.num_samples == 6 and ctrl.num_samples == 4
    with pytest.raises(ConfigError, match="num_samples"):
        ctrl.replace(num_samples=0)
    with pytest.raises(ConfigError, match="no hyperparameters \\['nope'\\]"):
        ctrl.replace(nope=1)
    for h in ctrl.spec().hyperparameters:  # the constructors' setter is closed once constructed
        before = getattr(ctrl, h.name)
        with pytest.raises(AttributeError, match=f"{h.name}.*after construction.*replace"):
            ctrl.set_hyperparameter(h.name, before)
        assert getattr(ctrl, h.name) == before


def test_round_callback_names_the_prompts_in_flight_and_their_iteration():
    """With S = 2 of 4 prompts in flight, each round reports its prompts and their iteration."""
    dyn, reward, prompts = make_linear()
    seen = []
    ca.align(dyn, reward, ca.AISP(num_samples=3, num_iterations=2, sigma=0.5), prompts, batch_prompts=2,
             callback=lambda it: seen.append((it.prompts, it.record.iteration, it.rewards.shape[0])))
    assert seen == [([0, 1], 1, 2), ([0, 1], 2, 2), ([2, 3], 1, 2), ([2, 3], 2, 2)]


def test_a_prepared_context_needs_every_prompt_in_flight():
    dyn, reward, prompts = make_linear()
    with pytest.raises(ConfigError, match="batch_prompts \\(S\\) = 2"):
        ca.align(dyn, reward, ca.AISP(), prompts, context=dyn.prepare(prompts), batch_prompts=2)
