"""One contract test run over every controller, plus the controller-specific claims.

Contract: shapes, determinism under a seed, weights sum to one, budget accounting
(exactly n·k reward calls per prompt), per-prompt independence (a prompt's result is the
same alone and inside a batch of D prompts, at any position).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ctrlalign as ca
from ctrlalign import theory
from ctrlalign._checks import ConfigError, RewardError

TAU, DIM, P = 3, 2, 4


def make_linear(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(P, TAU * DIM, generator=g, dtype=torch.float64)
    target = torch.randn(P, generator=g, dtype=torch.float64)
    prompts = [torch.randn(P, generator=g, dtype=torch.float64) for _ in range(4)]
    return ca.LinearGaussian(A, TAU, DIM), ca.QuadraticReward(target), prompts


def make_softmax_head(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    K = 3
    W = torch.randn(K, DIM, generator=g, dtype=torch.float64)
    b = torch.randn(K, generator=g, dtype=torch.float64)
    E = torch.randn(K + 1, DIM, generator=g, dtype=torch.float64)
    dyn = ca.SoftmaxHead(W, b, TAU, embeddings=E)
    import itertools

    table = {s: float(torch.randn((), generator=g)) for s in itertools.product(range(K), repeat=TAU)}
    prompts = [torch.randn(TAU, DIM, generator=g, dtype=torch.float64) for _ in range(4)]
    return dyn, ca.TableReward(table), prompts


class CountingReward(ca.Reward):
    """Counts how many responses of each prompt were scored (budget accounting)."""

    name = "counting"

    def __init__(self, inner: ca.Reward):
        self.inner = inner
        self.calls: dict[bytes, int] = {}

    def __call__(self, prompts, outcomes):
        from ctrlalign.random import prompt_key

        for p in prompts:
            key = prompt_key(p)
            self.calls[key] = self.calls.get(key, 0) + outcomes.num_samples
        return self.inner(prompts, outcomes)


CONTROLLERS = {
    "aisp": lambda n, k: ca.AISP(num_samples=n, num_iterations=k, sigma=0.7, temperature=0.5, alpha=0.5),
    "aisp_alpha0": lambda n, k: ca.AISP(num_samples=n, num_iterations=k, sigma=0.7, temperature=0.5, alpha=0.0),
    "mppi": lambda n, k: ca.MPPI(num_samples=n, num_iterations=k, sigma=0.7, temperature=0.5, step_size=0.5),
    "bon_prior": lambda n, k: ca.BestOfN(num_samples=n, num_iterations=k, sigma=0.7),
    "bon_plain": lambda n, k: ca.BestOfN(num_samples=n, num_iterations=k, sigma=0.0),
    "softmax": lambda n, k: ca.SoftmaxSampling(num_samples=n, num_iterations=k, sigma=0.7, temperature=0.5),
    "cem": lambda n, k: ca.CEM(num_samples=n, num_iterations=k, sigma=0.7, elite_fraction=0.3),
    "cem_refit": lambda n, k: ca.CEM(num_samples=n, num_iterations=k, sigma=0.7, refit_std=True, step_size=0.7),
}
SYSTEMS = {"linear": make_linear, "softmax_head": make_softmax_head}


def _same_sample(a: ca.Sample, b: ca.Sample) -> bool:
    if a.value is not None or b.value is not None:
        if not torch.equal(a.value, b.value):
            return False
    return a.tokens == b.tokens and a.text == b.text


class ControllerContract:
    """The contract every controller passes, on every system in ``systems``.

    ``TestContract`` below runs it over the built-in controllers. To run it on your own
    controller (or your own dynamics + reward), subclass it in a test file with your factories
    (see ``tests/test_examples.py`` and the docs' Extending pages)::

        @pytest.mark.parametrize("system", SYSTEMS)
        @pytest.mark.parametrize("name", ["mine"])
        class TestMyContract(ControllerContract):
            controllers = {"mine": lambda n, k: MyController(num_samples=n, num_iterations=k, sigma=0.7)}
    """

    n, k = 6, 3
    #: name -> factory (n, k) -> Controller
    controllers = CONTROLLERS
    #: name -> factory () -> (dynamics, reward, 4 prompts)
    systems = SYSTEMS

    def run(self, name, system, prompts=None, seed=0):
        dyn, reward, all_prompts = self.systems[system]()
        counting = CountingReward(reward)
        ctrl = self.controllers[name](self.n, self.k)
        res = ca.align(dyn, counting, ctrl, all_prompts if prompts is None else prompts, seed=seed)
        return res, counting, all_prompts

    def test_shapes_and_trace(self, name, system):
        res, _, prompts = self.run(name, system)
        D = len(prompts)
        assert res.state.mean.shape == (D, TAU, DIM)
        assert res.rewards.shape == (D,)
        assert len(res.responses) == D and all(r is not None for r in res.responses)
        assert len(res.trace) == self.k
        for rec in res.trace:
            info = rec.info
            for f in ("mean_reward", "max_reward", "ess", "weight_entropy", "mean_norm", "kl"):
                v = getattr(info, f)
                assert v.shape == (D,), f
                assert torch.isfinite(v).all(), f
            assert info.weights.shape == (D, self.n)
            torch.testing.assert_close(info.weights.sum(-1), torch.ones(D, dtype=info.weights.dtype))
            assert (info.weights >= 0).all()
            assert ((info.ess >= 1 - 1e-9) & (info.ess <= self.n + 1e-9)).all()
            assert ((info.weight_entropy >= -1e-9) & (info.weight_entropy <= math.log(self.n) + 1e-9)).all()
            assert (info.max_reward >= info.mean_reward - 1e-12).all()
            assert (info.kl >= -1e-9).all()

    def test_kept_reward_matches_kept_response(self, name, system):
        # the reported reward is the reward of the response actually kept
        res, _, prompts = self.run(name, system)
        dyn, reward, _ = self.systems[system]()
        for d, s in enumerate(res.responses):
            if s.value is not None and s.tokens is None:
                out = ca.Outcomes(num_prompts=1, num_samples=1, values=s.value.view(1, 1, -1))
            else:
                t = torch.tensor(s.tokens).view(1, 1, -1)
                out = ca.Outcomes(num_prompts=1, num_samples=1, tokens=t, values=t)
            r = reward([prompts[d]], out)
            assert float(r[0, 0]) == pytest.approx(float(res.rewards[d]), rel=1e-6, abs=1e-9)

    def test_determinism(self, name, system):
        a, _, _ = self.run(name, system, seed=3)
        b, _, _ = self.run(name, system, seed=3)
        c, _, _ = self.run(name, system, seed=4)
        assert torch.equal(a.rewards, b.rewards)
        assert torch.equal(a.state.mean, b.state.mean)
        assert all(_same_sample(x, y) for x, y in zip(a.responses, b.responses))
        if name == "bon_plain" and system == "linear":
            return  # the uncontrolled linear system is deterministic: nothing random to vary
        # a different seed gives different draws
        assert not all(
            torch.equal(x.info.mean_reward, y.info.mean_reward) for x, y in zip(a.trace, c.trace)
        )

    def test_budget_accounting(self, name, system):
        res, counting, prompts = self.run(name, system)
        assert res.reward_calls.tolist() == [self.n * self.k] * len(prompts)
        assert sorted(counting.calls.values()) == [self.n * self.k] * len(prompts)

    def test_per_prompt_independence(self, name, system):
        batch, _, prompts = self.run(name, system, seed=11)
        for d in (0, 2):
            alone, _, _ = self.run(name, system, prompts=[prompts[d]], seed=11)
            assert torch.allclose(alone.state.mean[0], batch.state.mean[d], atol=1e-6)
            assert float(alone.rewards[0]) == pytest.approx(float(batch.rewards[d]), abs=1e-9)
            assert _same_sample(alone.responses[0], batch.responses[d])
        # and in another order: prompt 3 at position 0
        perm = [prompts[3], prompts[1], prompts[0]]
        shuffled, _, _ = self.run(name, system, prompts=perm, seed=11)
        assert float(shuffled.rewards[0]) == pytest.approx(float(batch.rewards[3]), abs=1e-9)
        assert float(shuffled.rewards[2]) == pytest.approx(float(batch.rewards[0]), abs=1e-9)


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("name", CONTROLLERS)
class TestContract(ControllerContract):
    """The contract over every built-in controller and both toy systems."""


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
    assert torch.equal(bon.trace[0].info.mean_reward, aisp.trace[0].info.mean_reward)


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

        def step(state, controls, rewards, gens=None, _orig=orig_step, _seen=seen):
            _seen.append((controls - state.mean.unsqueeze(1)) / state.std.view(-1, 1, 1, 1))
            return _orig(state, controls, rewards, gens)

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
    best = torch.stack([rec.info.max_reward for rec in res.trace]).max(0).values
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
    state = ctrl.init(D, DIM, TAU, dtype=torch.float64)
    state = state.replace(mean=torch.randn(D, TAU, DIM, generator=g, dtype=torch.float64))
    controls = ctrl.sample(state, [torch.Generator().manual_seed(seed + j) for j in range(D)])
    rewards = torch.randn(D, n, generator=g, dtype=torch.float64)
    new, info = ctrl.step(state, controls, rewards)
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
    state = ctrl.init(D, DIM, TAU, dtype=torch.float64)
    controls = ctrl.sample(state, [torch.Generator().manual_seed(0)])
    rewards = torch.arange(n, dtype=torch.float64).view(1, n)
    new, info = ctrl.step(state, controls, rewards)
    torch.testing.assert_close(new.mean[0], controls[0, -2:].mean(0))
    assert float(info.ess[0]) == pytest.approx(2.0)


def test_softmax_sampling_keeps_a_resampled_not_the_best_response():
    """With a large λ the kept response is often not the argmax (it is a resample)."""
    dyn, reward, prompts = make_linear()
    res = ca.align(dyn, reward, ca.SoftmaxSampling(num_samples=8, num_iterations=2, sigma=1.0, temperature=100.0),
                   prompts * 5, seed=0)
    best = torch.stack([rec.info.max_reward for rec in res.trace]).max(0).values
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
        (lambda: ca.AISP(horizon=0), "horizon (τ)"),
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
    with pytest.raises(ConfigError, match=r"sigma \(σ\) must be a finite number > 0, got 0"):
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
        ca.align(dyn, reward, ca.AISP(horizon=5), prompts)


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
