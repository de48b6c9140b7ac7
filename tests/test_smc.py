"""Twisted SMC against closed forms on an enumerable token system, its exact special cases, and
power checks (a missing untwist, lost weight mass, a missing p/q correction each fail)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ctrlalign as ca
from ctrlalign._checks import ConfigError
from ctrlalign.closedloop import SMC
from ctrlalign.dynamics.toy import tilted_distribution
from ctrlalign.rewards.toy import TableReward
from ctrlalign.testing import make_linear, make_softmax_head, make_token_chain

K, TAU, DIM = 3, 3, 2


def problem(seed: int = 0, twist_scale: float = 0.5):
    """:func:`ctrlalign.testing.make_token_chain` (K = 3, T = 3, 2 prompts, exact laws)."""
    return make_token_chain(seed, twist_scale=twist_scale)


def exact_log_z(base: dict, table: dict, lam: float) -> float:
    """log Σ_y p(y) exp(r(y)/λ)."""
    return math.log(sum(p * math.exp(table[y] / lam) for y, p in base.items()))


def z_ratio_mean(smc: SMC, dyn, reward, prompts, base, seeds: int, controls=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over seeds of Ẑ / Z, per prompt."""
    logz = torch.tensor([exact_log_z(b, reward.table, smc.temperature) for b in base], dtype=torch.float64)
    ratios = torch.stack([(smc.run(dyn, reward, prompts, seed=s, controls=controls).log_normalizer - logz).exp()
                          for s in range(seeds)])
    return ratios.mean(0), ratios.std(0) / math.sqrt(seeds)


def unbiased(smc: SMC, seeds: int = 300, controls=None, seed: int = 0) -> bool:
    dyn, reward, prompts, base = problem(seed)
    mean, se = z_ratio_mean(smc, dyn, reward, prompts, base, seeds, controls)
    return bool(((mean - 1).abs() <= 4 * se + 1e-3).all())


@pytest.mark.parametrize("scheme", ["multinomial", "systematic", "residual", "stratified"])
@given(lam=st.sampled_from([1.0, 2.0]), kappa=st.sampled_from([0.5, 1.0]), block=st.sampled_from([1, 2]))
@settings(max_examples=3, deadline=None)
def test_log_normalizer_is_unbiased(scheme, lam, kappa, block):
    """E[Ẑ]/Z = 1 within 4 standard errors over 300 seeds (Z enumerated over 27 sequences).
    λ >= 1 keeps exp(r/λ) light-tailed enough for 300 seeds to estimate the mean (at λ = 0.5
    the sample mean of 3,000 seeds still creeps up toward 1: rare huge Ẑ carry the mean)."""
    smc = SMC(num_particles=8, block_size=block, temperature=lam, resample_threshold=kappa, scheme=scheme)
    assert unbiased(smc)


def test_log_normalizer_is_unbiased_under_a_control_proposal():
    """A pre-logit control proposal q ≠ p: the p/q correction keeps the target p·exp(r/λ)."""
    assert unbiased(SMC(num_particles=8, block_size=1, temperature=1.0, resample_threshold=1.0), controls=control())


def control() -> torch.Tensor:
    """A fixed pre-logit control V (2, τ, d) that moves the token law well away from p."""
    g = torch.Generator().manual_seed(9)
    return 1.5 * torch.randn(2, TAU, DIM, generator=g, dtype=torch.float64)


class NoUntwist(SMC):
    """Bug: adds the new twist without removing the previous one."""

    @staticmethod
    def reweight(log_weights, ratio, twist, previous):
        return log_weights + ratio + twist


class LosesMass(SMC):
    """Bug: resets the weights after resampling without carrying their mean into Ẑ."""

    @staticmethod
    def renormalize(log_normalizer, log_weights, resampled):
        return log_normalizer, torch.where(resampled.unsqueeze(-1), torch.zeros_like(log_weights), log_weights)


class NoCorrection(SMC):
    """Bug: ignores the block's log p − log q."""

    @staticmethod
    def reweight(log_weights, ratio, twist, previous):
        return log_weights + (twist - previous)


def test_the_unbiasedness_check_catches_each_bug():
    kw = {"num_particles": 8, "block_size": 1, "temperature": 1.0, "resample_threshold": 1.0}
    assert not unbiased(NoUntwist(**kw))
    assert not unbiased(LosesMass(**kw))
    assert not unbiased(NoCorrection(**kw), controls=control())


def test_an_adaptive_twist_is_consistent_but_biases_the_normalizer():
    """λ_t chosen from the particles themselves (adaptive tempering) keeps the particle law
    consistent (next test) but makes Ẑ biased at small n, as adaptive SMC is known to: the
    check sees it, which is why the docs promise unbiasedness only for a fixed twist."""
    assert not unbiased(SMC(num_particles=8, block_size=1, temperature=1.0, twist_target_ess=0.5,
                            resample_threshold=1.0))


def weighted_law(res, lam) -> list[dict]:
    """Each prompt's particle law: Σ_i softmax(ℓ)_i δ(y_i)."""
    w = torch.softmax(res.meta["log_weights"], -1)
    out = []
    for j, s in enumerate(res.meta["final_tokens"]):
        law: dict = {}
        for i, y in enumerate(s):
            law[tuple(y)] = law.get(tuple(y), 0.0) + float(w[j, i])
        out.append(law)
    return out


def tv(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


@pytest.mark.parametrize("smc,controls,converges", [
    (SMC(num_particles=4000, block_size=1, temperature=1.0), None, True),
    (SMC(num_particles=4000, block_size=1, temperature=1.0, twist_target_ess=0.5), None, True),
    (SMC(num_particles=4000, block_size=1, temperature=1.0), control(), True),
    (NoUntwist(num_particles=4000, block_size=1, temperature=1.0), None, False),
    (NoCorrection(num_particles=4000, block_size=1, temperature=1.0), control(), False),
], ids=["fixed-twist", "adaptive-twist", "control-proposal", "no-untwist", "no-correction"])
def test_particles_converge_to_the_tilted_law(smc, controls, converges):
    """With 4000 particles the weighted particles are within 0.12 in total variation of
    π* ∝ p·exp(r/λ), computed by enumeration (measured: 0.02–0.08 over 3 seeds); without the
    untwist or the p/q correction they are not (0.23–0.41)."""
    dyn, reward, prompts, base = problem(1)
    lam = 1.0
    res = smc.run(dyn, reward, prompts, seed=0, controls=controls)
    laws = weighted_law(res, lam)
    distances = [tv(law, tilted_distribution(base[j], reward.table, lam)) for j, law in enumerate(laws)]
    if converges:
        assert max(distances) < 0.12, distances
    else:
        assert max(distances) > 0.12, distances


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9))
@settings(max_examples=15, deadline=None)
def test_one_checkpoint_without_resampling_is_softmax_sampling_and_best_of_n(seed, n):
    """b >= T and κ = 0: the weight read-out is softmax sampling from the plain model (σ = 0),
    the argmax read-out Best-of-n, bit for bit (same uniforms, same selection draw)."""
    dyn, reward, prompts = make_softmax_head()
    for readout, ctrl in (("weight", ca.SoftmaxSampling(num_samples=n, num_iterations=1, sigma=0.0, temperature=0.7)),
                          ("argmax", ca.BestOfN(num_samples=n, num_iterations=1, sigma=0.0))):
        smc = SMC(num_particles=n, block_size=TAU, temperature=0.7, resample_threshold=0.0, readout=readout)
        a = smc.run(dyn, reward, prompts, seed=seed)
        b = ca.align(dyn, reward, ctrl, prompts, seed=seed)
        assert torch.equal(a.rewards, b.rewards.double())
        assert [s.tokens for s in a.responses] == [s.tokens for s in b.responses]
        assert a.full_calls.tolist() == [n] * len(prompts) and a.prefix_calls.tolist() == [0] * len(prompts)


def test_budget_counts_tokens_and_calls_per_prompt():
    dyn, reward, prompts, _ = problem()
    res = SMC(num_particles=5, block_size=1, temperature=0.5).run(dyn, reward, prompts, seed=1)
    assert res.tokens.tolist() == [5 * TAU] * 2
    assert res.prefix_calls.tolist() == [5 * (TAU - 1)] * 2 and res.full_calls.tolist() == [5] * 2
    assert len(res.trace) == TAU and [c.position for c in res.trace] == [1, 2, 3]
    assert all(1 <= int(d) <= 5 for d in res.distinct)
    assert res.to_records()[0]["trace"][0]["position"] == 1


def test_bad_input_is_refused_naming_it():
    dyn, reward, prompts, _ = problem()
    with pytest.raises(ConfigError, match="block_size"):
        SMC(block_size=0)
    with pytest.raises(ConfigError, match="scheme must be one of"):
        SMC(scheme="bogus")
    with pytest.raises(ConfigError, match="readout must be one of"):
        SMC(readout="mean")
    with pytest.raises(ConfigError, match="at most one of twist_temperature"):
        SMC(twist_temperature=1.0, twist_target_ess=0.5)
    no_prefix = TableReward(reward.table)
    with pytest.raises(ConfigError, match="scores_prefixes=False"):
        SMC(block_size=1).run(dyn, no_prefix, prompts)
    lin, lin_reward, lin_prompts = make_linear()
    with pytest.raises(ConfigError, match="StepwiseDynamics"):
        SMC().run(ca.CallableReward(lambda p, s: 0.0), lin_reward, lin_prompts)
    with pytest.raises(ConfigError, match="controls must be"):
        SMC(block_size=1).run(dyn, reward, prompts, controls=torch.zeros(3, TAU, DIM))


# ---------------------------------------------------------------------------------------------
# a linear-Gaussian state-space system: the Kalman closed form


def linear_problem(seed: int = 0):
    """x_t = F x_{t-1} + σ w_t over τ = 3 steps in p = 2 dimensions (no control), a quadratic
    reward on the state (its prefix score: the same quadratic on the state so far), 2 prompts,
    and each prompt's tilted final state in closed form at λ = 1."""
    g = torch.Generator().manual_seed(seed)
    p, tau = 2, 3
    F = 0.9 * torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))[0]
    dyn = ca.LinearGaussian(torch.zeros(p, tau), tau, 1, transition=F, noise_std=0.6)
    target = torch.randn(p, generator=g, dtype=torch.float64)
    reward = ca.QuadraticReward(target, torch.eye(p, dtype=torch.float64))
    prompts = [torch.randn(p, generator=g, dtype=torch.float64) for _ in range(2)]
    laws = []
    for x0 in prompts:
        m, _, N = dyn.final_state(x0)
        laws.append(ca.theory.gaussian_tilted_state(m, 0.36 * N @ N.T, reward.Q, target, 1.0))
    return dyn, reward, prompts, laws


@pytest.mark.parametrize("smc_class,unbiased_expected", [(SMC, True), (NoUntwist, False), (LosesMass, False)])
def test_linear_gaussian_normalizer_is_the_kalman_one(smc_class, unbiased_expected):
    """E[Ẑ]/Z = 1 within 3 standard errors over 400 seeds, Z from the Kalman update; a missing
    untwist or lost weight mass breaks it."""
    dyn, reward, prompts, laws = linear_problem()
    smc = smc_class(num_particles=8, block_size=1, temperature=1.0, resample_threshold=1.0)
    logz = torch.stack([law.log_normalizer for law in laws])
    ratios = torch.stack([(smc.run(dyn, reward, prompts, seed=s).log_normalizer - logz).exp() for s in range(400)])
    mean, se = ratios.mean(0), ratios.std(0) / math.sqrt(400)
    assert bool(((mean - 1).abs() <= 3 * se + 1e-3).all()) == unbiased_expected, (mean, se)


@pytest.mark.parametrize("smc_class,converges", [(SMC, True), (NoUntwist, False)])
def test_linear_gaussian_particle_mean_converges_to_the_tilted_mean(smc_class, converges):
    """The weighted mean of 4000 particles' final states is within 0.05 of the Kalman mean."""
    dyn, reward, prompts, laws = linear_problem()
    res = smc_class(num_particles=4000, block_size=1, temperature=1.0).run(dyn, reward, prompts, seed=0)
    w = torch.softmax(res.meta["log_weights"], -1)
    finals = torch.tensor(res.meta["final_values"], dtype=torch.float64)  # (D, n, p)
    for j, law in enumerate(laws):
        err = float((torch.einsum("n,np->p", w[j], finals[j]) - law.mean).abs().max())
        assert (err < 0.05) == converges, err
