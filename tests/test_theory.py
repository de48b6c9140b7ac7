r"""Property tests for the mathematics in :mod:`ctrlalign.theory` (issue #2).

Every claim of the Design page (``docs/design.md``) that has a closed form is checked here against an independent
reference (scipy, an exact algebraic identity, or Monte-Carlo with a CLT tolerance). The
controller/dynamics checks that need rollouts live in ``tests/test_toy_systems.py``.

Monte-Carlo tolerances are 5 standard errors (two-sided false-alarm rate ≈ 5.7e-7 per check
under the normal approximation); every Monte-Carlo test uses a fixed seed, so it is
deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, stats

from ctrlalign import theory

Z = 5.0  # standard errors allowed in Monte-Carlo checks


# ----------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------

@st.composite
def linear_gaussian_problems(draw, max_p: int = 4, max_m: int = 4):
    """(A, Q, target, x, sigma, lam, tau, d) with A (p, τd), Q symmetric PSD."""
    p = draw(st.integers(1, max_p))
    tau = draw(st.integers(1, 2))
    d = draw(st.integers(1, max(1, max_m // tau)))
    m = tau * d
    seed = draw(st.integers(0, 2**32 - 1))
    scale_a = draw(st.floats(0.1, 3.0))
    rank = draw(st.integers(0, p))  # Q may be singular (PSD, not PD)
    sigma = draw(st.floats(0.05, 3.0))
    lam = draw(st.floats(0.05, 10.0))
    rng = np.random.default_rng(seed)
    A = torch.tensor(rng.normal(size=(p, m)) * scale_a)
    B = torch.tensor(rng.normal(size=(rank, p)))
    Q = B.T @ B if rank > 0 else torch.zeros(p, p, dtype=torch.float64)
    target = torch.tensor(rng.normal(size=p) * 2)
    x = torch.tensor(rng.normal(size=p) * 2)
    return A, Q, target, x, sigma, lam, tau, d


def random_spd(rng: np.random.Generator, m: int, scale: float = 1.0) -> torch.Tensor:
    L = rng.normal(size=(m, m)) * scale
    return torch.tensor(L @ L.T + 0.1 * scale**2 * np.eye(m))


def rel_tol(*vals: torch.Tensor | float) -> float:
    """Absolute tolerance of float64 closed forms of the given magnitudes."""
    return 1e-8 * (1.0 + max(abs(float(torch.as_tensor(v).detach())) for v in vals))


# ----------------------------------------------------------------------------------------
# 1. The free-energy bound and the KL identity on the linear-Gaussian system
# ----------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(prob=linear_gaussian_problems(), useed=st.integers(0, 2**32 - 1), uscale=st.floats(0.0, 5.0))
def test_free_energy_bound_and_kl_identity_mean_shift(prob, useed, uscale):
    """−λF ≤ J(U) for every U, and J(q_U) = −λF + λ·KL(q_U ‖ q*) exactly (mean-shift q_U)."""
    A, Q, target, x, sigma, lam, tau, d = prob
    opt = theory.linear_gaussian_optimum(A, Q, target, x, sigma, lam)
    rng = np.random.default_rng(useed)
    U = torch.tensor(rng.normal(size=(tau, d)) * uscale)
    J = theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, U)
    bound = -lam * opt.log_eta
    tol = rel_tol(J, bound)
    assert J >= bound - tol
    m = tau * d
    kl = theory.gaussian_kl_full(U.reshape(m), sigma**2 * torch.eye(m, dtype=torch.float64), opt.mean, opt.cov)
    assert float(J) == pytest.approx(float(bound + lam * kl), abs=tol + 1e-8 * lam * float(kl))


@settings(max_examples=60, deadline=None)
@given(prob=linear_gaussian_problems(), qseed=st.integers(0, 2**32 - 1), cscale=st.floats(0.05, 3.0))
def test_kl_identity_full_gaussian(prob, qseed, cscale):
    """J(q) = −λF + λ·KL(q ‖ q*) for q = N(μ, Σ) with a full covariance, hence J(q) ≥ −λF."""
    A, Q, target, x, sigma, lam, tau, d = prob
    m = tau * d
    opt = theory.linear_gaussian_optimum(A, Q, target, x, sigma, lam)
    rng = np.random.default_rng(qseed)
    mu = torch.tensor(rng.normal(size=m) * 2)
    cov = random_spd(rng, m, cscale)
    J = theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, mu, cov)
    kl = theory.gaussian_kl_full(mu, cov, opt.mean, opt.cov)
    bound = -lam * opt.log_eta
    tol = rel_tol(J, bound, lam * kl)
    assert float(J) == pytest.approx(float(bound + lam * kl), abs=tol)
    assert J >= bound - tol


@settings(max_examples=60, deadline=None)
@given(prob=linear_gaussian_problems())
def test_optimum_attains_bound(prob):
    """Equality J(q*) = −λF at q* = N(μ*, P⁻¹), and KL(q*‖q*) = 0."""
    A, Q, target, x, sigma, lam, tau, d = prob
    opt = theory.linear_gaussian_optimum(A, Q, target, x, sigma, lam)
    J = theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, opt.mean, opt.cov)
    assert float(J) == pytest.approx(float(-lam * opt.log_eta), abs=rel_tol(J, lam * opt.log_eta))
    # q* is strictly inside the bound for any other covariance: σ²I differs from P⁻¹ unless AᵀQA = 0
    J_shift = theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, opt.mean)
    assert J_shift >= J - rel_tol(J, J_shift)


@settings(max_examples=60, deadline=None)
@given(prob=linear_gaussian_problems(), dseed=st.integers(0, 2**32 - 1), dscale=st.floats(1e-3, 3.0))
def test_optimal_mean_minimises_mean_shift_cost(prob, dseed, dscale):
    """μ* minimises J over N(U, σ²I): ∇J(μ*) = 0 and J(μ*+δ) − J(μ*) = (λ/2) δᵀPδ > 0."""
    A, Q, target, x, sigma, lam, tau, d = prob
    m = tau * d
    opt = theory.linear_gaussian_optimum(A, Q, target, x, sigma, lam)
    mu = opt.mean.clone().requires_grad_(True)
    J0 = theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, mu)
    (grad,) = torch.autograd.grad(J0, mu)
    # gradient scale: the gradient's two terms are each of size ‖λμ/σ²‖
    gscale = 1.0 + float((lam * opt.mean / sigma**2).abs().max())
    assert float(grad.abs().max()) <= 1e-7 * gscale
    rng = np.random.default_rng(dseed)
    delta = torch.tensor(rng.normal(size=m) * dscale)
    J1 = theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, opt.mean + delta)
    P = torch.linalg.inv(opt.cov)
    expected = 0.5 * lam * delta @ P @ delta
    assert float(expected) > 0
    assert float(J1 - J0.detach()) == pytest.approx(float(expected), rel=1e-6, abs=rel_tol(J0, J1))


# ----------------------------------------------------------------------------------------
# 2. Closed forms against independent references
# ----------------------------------------------------------------------------------------

def _quad_reward(y: np.ndarray, Q: np.ndarray, target: np.ndarray) -> float:
    e = y - target
    return -0.5 * float(e @ Q @ e)


@settings(max_examples=25, deadline=None)
@given(
    a=st.floats(-3, 3), q=st.floats(0.0, 4.0), target=st.floats(-3, 3), x=st.floats(-3, 3),
    sigma=st.floats(0.1, 2.0), lam=st.floats(0.5, 5.0),
)
def test_free_energy_closed_form_vs_quad_1d(a, q, target, x, sigma, lam):
    """F = log ∫ N(v; 0, σ²) exp(r(x + a v)/λ) dv by scipy.integrate.quad (m = p = 1)."""
    A = torch.tensor([[a]], dtype=torch.float64)
    Q = torch.tensor([[q]], dtype=torch.float64)
    opt = theory.linear_gaussian_optimum(A, Q, torch.tensor([target], dtype=torch.float64),
                                         torch.tensor([x], dtype=torch.float64), sigma, lam)

    def integrand(v):
        return stats.norm.pdf(v, scale=sigma) * math.exp(-0.5 * q * (x + a * v - target) ** 2 / lam)

    # the integrand is ∝ a Gaussian with std ≤ σ around its mode; find the mode independently
    peak = optimize.minimize_scalar(lambda v: -math.log(integrand(v)) if integrand(v) > 0 else 1e300,
                                    bracket=(-1.0, 1.0)).x
    lim = 14 * sigma
    val, err = integrate.quad(integrand, peak - lim, peak + lim, points=[peak],
                              epsabs=0, epsrel=1e-11, limit=200)
    assert val > 0
    assert float(opt.log_eta) == pytest.approx(math.log(val), abs=1e-7)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sigma=st.floats(0.3, 1.5), lam=st.floats(0.5, 5.0))
def test_free_energy_closed_form_vs_dblquad_2d(seed, sigma, lam):
    """F for m = 2 controls, p = 2 outcomes by scipy.integrate.dblquad."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(2, 2))
    B = rng.normal(size=(2, 2))
    Q = B.T @ B
    target, x = rng.normal(size=2), rng.normal(size=2)
    opt = theory.linear_gaussian_optimum(*(torch.tensor(t) for t in (A, Q, target, x)), sigma, lam)

    (a11, a12), (a21, a22) = A.tolist()
    (q11, q12), (q21, q22) = Q.tolist()
    c1, c2 = (x - target).tolist()
    norm = 1.0 / (2 * math.pi * sigma**2)

    def integrand(v2, v1):  # plain floats: N(v; 0, σ²I) · exp(r(x + A v)/λ)
        e1, e2 = c1 + a11 * v1 + a12 * v2, c2 + a21 * v1 + a22 * v2
        r = -0.5 * (e1 * (q11 * e1 + q12 * e2) + e2 * (q21 * e1 + q22 * e2))
        return norm * math.exp(-0.5 * (v1 * v1 + v2 * v2) / sigma**2 + r / lam)

    def neg_log(v):
        return 0.5 * (v @ v) / sigma**2 - _quad_reward(x + A @ v, Q, target) / lam

    peak = optimize.minimize(neg_log, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
    lim = 10 * sigma  # the integrand is ∝ a Gaussian whose std is ≤ σ in every direction
    val, _ = integrate.dblquad(integrand, peak[0] - lim, peak[0] + lim, peak[1] - lim, peak[1] + lim,
                               epsabs=0, epsrel=1e-8)
    assert float(opt.log_eta) == pytest.approx(math.log(val), abs=1e-6)


def test_free_energy_closed_form_vs_monte_carlo():
    """The Monte-Carlo estimator ``free_energy`` over prior samples agrees with the closed
    form F within 5 delta-method standard errors, for n = 10⁶."""
    rng = np.random.default_rng(0)
    p, tau, d = 3, 2, 2
    A = torch.tensor(rng.normal(size=(p, tau * d)))
    Q = torch.tensor(np.diag([1.0, 0.5, 2.0]))
    target, x = torch.tensor(rng.normal(size=p)), torch.tensor(rng.normal(size=p))
    sigma, lam = 0.7, 2.0
    opt = theory.linear_gaussian_optimum(A, Q, target, x, sigma, lam)
    g = torch.Generator().manual_seed(1)
    n = 1_000_000
    V = sigma * torch.randn(n, tau * d, generator=g, dtype=torch.float64)
    e = x + V @ A.T - target
    r = -0.5 * torch.einsum("np,pq,nq->n", e, Q, e)
    F_hat = theory.free_energy(r, lam)
    w = torch.exp(r / lam - (r / lam).max())
    se = float(w.std() / (math.sqrt(n) * w.mean()))  # SE of log(mean w) by the delta method
    assert abs(float(F_hat - opt.log_eta)) < Z * se
    assert se < 0.01  # the check has resolution


def test_monte_carlo_free_energy_converges():
    """RMS error of ``free_energy`` over 200 replicates shrinks ~ 1/√n (n = 100 → 10 000)."""
    rng = np.random.default_rng(3)
    p, m = 2, 3
    A = torch.tensor(rng.normal(size=(p, m)))
    Q = torch.eye(p, dtype=torch.float64)
    target, x = torch.tensor(rng.normal(size=p)), torch.tensor(rng.normal(size=p))
    sigma, lam = 1.0, 1.0
    F = float(theory.linear_gaussian_optimum(A, Q, target, x, sigma, lam).log_eta)
    g = torch.Generator().manual_seed(4)
    rmse = []
    for n in (100, 10_000):
        V = sigma * torch.randn(200, n, m, generator=g, dtype=torch.float64)
        e = x + V @ A.T - target
        r = -0.5 * (e * e).sum(-1)
        rmse.append(float((theory.free_energy(r, lam) - F).pow(2).mean().sqrt()))
    # expected ratio 10; with 200 replicates the RMSE is known to ~±10% each
    assert rmse[1] < rmse[0] / 5
    assert rmse[1] < 0.05


# ----------------------------------------------------------------------------------------
# 4. Weights, effective sample size, entropy
# ----------------------------------------------------------------------------------------

reward_arrays = st.integers(1, 12).flatmap(
    lambda n: st.lists(st.floats(-50, 50, allow_nan=False), min_size=n, max_size=n)
)


@settings(max_examples=100, deadline=None)
@given(r=reward_arrays, lam=st.floats(1e-3, 1e3), shift=st.floats(-1e3, 1e3))
def test_weights_normalised_and_shift_invariant(r, lam, shift):
    r = torch.tensor([r], dtype=torch.float64)
    lw = theory.log_weights(r, lam)
    assert lw.shape == r.shape
    assert float(lw.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    lw2 = theory.log_weights(r + shift, lam)
    assert torch.allclose(lw.exp(), lw2.exp(), atol=1e-9)
    # = softmax(r/λ) computed independently with scipy
    from scipy.special import softmax
    assert np.allclose(lw.exp().numpy(), softmax(r.numpy() / lam, axis=-1), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(r=st.lists(st.floats(-10, 10), min_size=2, max_size=10, unique=True))
def test_weights_temperature_limits(r):
    """λ → 0: one-hot at the argmax (Best-of-N's choice); λ → ∞: uniform."""
    rt = torch.tensor([r], dtype=torch.float64)
    gaps = np.diff(np.sort(r))
    assume(gaps.min() > 1e-6)
    lam = float(gaps.min()) / 800  # e^{-800} underflows to 0 in float64
    w = theory.importance_weights(rt, lam)
    onehot = torch.zeros_like(rt)
    onehot[0, int(np.argmax(r))] = 1.0
    assert torch.equal(w, onehot)
    # Best-of-N picks the same sample
    from ctrlalign.controllers import BestOfN
    from ctrlalign.selection import BestSoFar
    from ctrlalign.spaces import PerToken
    bon = BestOfN(num_samples=len(r), num_iterations=1)
    _, (log_w, _) = bon.step(bon.init(1, PerToken(horizon=1, hidden_size=1)), None, rt)
    _, chosen, _ = BestSoFar().update(BestSoFar().init(1), rt, log_w, [])
    assert int(chosen[0]) == int(np.argmax(r))
    assert torch.equal(torch.softmax(log_w, -1), onehot)
    n = len(r)
    w_inf = theory.importance_weights(rt, 1e12)
    assert torch.allclose(w_inf, torch.full_like(rt, 1.0 / n), atol=1e-9)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 8), tau=st.integers(1, 3), d=st.integers(1, 3), seed=st.integers(0, 2**32 - 1),
    lam=st.floats(0.01, 100.0), sigma=st.floats(0.05, 5.0), alpha=st.floats(0.0, 1.0),
    uscale=st.floats(0.0, 3.0),
)
def test_weights_alpha_limits(n, tau, d, seed, lam, sigma, alpha, uscale):
    """α = 1 gives softmax(r/λ) for any Û; Û = 0 gives softmax(r/λ) for any α; and in general
    log w = log softmax(r/λ − (1−α)/σ² Σ_t û_tᵀv_t) (the importance ratio q*/q_Û up to a constant)."""
    rng = np.random.default_rng(seed)
    D = 2
    r = torch.tensor(rng.normal(size=(D, n)) * 3)
    V = torch.tensor(rng.normal(size=(D, n, tau, d)) * sigma)
    U = torch.tensor(rng.normal(size=(D, tau, d)) * uscale)
    soft = torch.log_softmax(r / lam, -1)
    lw1 = theory.log_weights(r, lam, controls=V, mean=U, sigma=sigma, alpha=1.0)
    assert torch.allclose(lw1, soft, atol=1e-10)
    lw0 = theory.log_weights(r, lam, controls=V, mean=torch.zeros_like(U), sigma=sigma, alpha=alpha)
    assert torch.allclose(lw0, soft, atol=1e-10)
    # general α: the exact log density ratio log p(V) − log q(V|Û), weighted by (1−α)
    cov = sigma**2 * np.eye(tau * d)
    logp = np.stack([stats.multivariate_normal.logpdf(V[j].reshape(n, -1).numpy(), mean=np.zeros(tau * d), cov=cov)
                     for j in range(D)]).reshape(D, n)
    logq = np.stack([stats.multivariate_normal.logpdf(V[j].reshape(n, -1).numpy(), mean=U[j].reshape(-1).numpy(),
                                                      cov=cov) for j in range(D)]).reshape(D, n)
    logratio = logp - logq
    expected = torch.log_softmax(r / lam + (1 - alpha) * torch.tensor(logratio), -1)
    lwa = theory.log_weights(r, lam, controls=V, mean=U, sigma=sigma, alpha=alpha)
    assert torch.allclose(lwa, expected, atol=1e-7)


@settings(max_examples=100, deadline=None)
@given(
    r=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=16),
    lam=st.sampled_from([1e-6, 1e-3, 1.0, 1e3]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_weights_and_free_energy_numerically_stable(r, lam, dtype):
    """|r| ≤ 1e6 and λ down to 1e-6: finite log-weights at the max, no NaN / inf weights,
    sum to one; free_energy finite and ≈ max(r)/λ − log n when λ is tiny."""
    rt = torch.tensor([r], dtype=dtype)
    lw = theory.log_weights(rt, lam)
    w = lw.exp()
    assert not torch.isnan(lw).any()
    assert torch.isfinite(w).all()
    assert float(w.double().sum()) == pytest.approx(1.0, abs=1e-5 if dtype == torch.float32 else 1e-12)
    ess = theory.effective_sample_size(lw.double())
    ent = theory.weight_entropy(lw.double())
    assert torch.isfinite(ess).all() and torch.isfinite(ent).all()
    F = theory.free_energy(rt.double(), lam)
    assert torch.isfinite(F).all()
    r = rt.double()[0].tolist()  # the values actually scored (float32-rounded where applicable)
    n = len(r)
    rmax = max(r)
    ties = sum(1 for v in r if v == rmax)
    nxt = max([v for v in r if v != rmax], default=-math.inf)
    # F = rmax/λ + log(ties) − log n + log(1 + Σ_{others} e^{(r_i−rmax)/λ}/ties)
    expected = rmax / lam + math.log(ties) - math.log(n)
    slack = (n * math.exp((nxt - rmax) / lam)) if nxt > -math.inf else 0.0
    assert float(F) == pytest.approx(expected, rel=1e-12, abs=slack + 1e-9 * (1 + abs(expected)))


@settings(max_examples=100, deadline=None)
@given(r=reward_arrays, lam=st.floats(1e-3, 1e3))
def test_ess_and_entropy_ranges(r, lam):
    rt = torch.tensor([r], dtype=torch.float64)
    n = len(r)
    lw = theory.log_weights(rt, lam)
    ess = float(theory.effective_sample_size(lw))
    ent = float(theory.weight_entropy(lw))
    assert 1 - 1e-9 <= ess <= n + 1e-9
    assert -1e-12 <= ent <= math.log(n) + 1e-9
    # ESS = exp(Rényi-2 entropy) ≤ exp(Shannon entropy)
    assert ess <= math.exp(ent) * (1 + 1e-9)


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_ess_and_entropy_extremes(n):
    uniform = torch.full((1, n), -math.log(n), dtype=torch.float64)
    assert float(theory.effective_sample_size(uniform)) == pytest.approx(n)
    assert float(theory.weight_entropy(uniform)) == pytest.approx(math.log(n), abs=1e-12)
    onehot = torch.full((1, n), -math.inf, dtype=torch.float64)
    onehot[0, n // 2] = 0.0
    assert float(theory.effective_sample_size(onehot)) == pytest.approx(1.0)
    assert float(theory.weight_entropy(onehot)) == 0.0


# ----------------------------------------------------------------------------------------
# 6. The Gaussian / softmax link
# ----------------------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(
    K=st.integers(2, 6), d=st.integers(1, 5), seed=st.integers(0, 2**32 - 1),
    variance=st.floats(0.05, 10.0), mscale=st.floats(0.1, 3.0), uniform=st.booleans(),
    unnormalised=st.floats(-5, 5),
)
def test_class_conditional_gaussians_give_softmax(K, d, seed, variance, mscale, uniform, unnormalised):
    """z | c ~ N(μ_c, s²I), prior π: Bayes posterior P(c|z) = softmax(Wz + b) exactly."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, d)) * mscale
    priors = np.full(K, 1.0 / K) if uniform else rng.dirichlet(np.ones(K))
    zs = rng.normal(size=(5, d)) * (mscale + math.sqrt(variance))
    # independent reference: Bayes' rule with scipy's Gaussian log-density
    logjoint = np.stack([stats.multivariate_normal.logpdf(zs, mean=means[c], cov=variance * np.eye(d))
                         for c in range(K)], -1).reshape(len(zs), K) + np.log(priors)
    post = np.exp(logjoint - logjoint.max(-1, keepdims=True))
    post /= post.sum(-1, keepdims=True)
    log_priors = None if uniform else torch.tensor(np.log(priors) + unnormalised)  # normalisation is irrelevant
    W, b = theory.gaussian_class_conditional_head(torch.tensor(means), variance, log_priors)
    assert W.shape == (K, d) and b.shape == (K,)
    head = torch.softmax(torch.tensor(zs) @ W.T + b, -1).numpy()
    assert np.allclose(head, post, atol=1e-10)


# ----------------------------------------------------------------------------------------
# 7. Gaussian KL helpers
# ----------------------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(tau=st.integers(1, 4), d=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
       sigma=st.floats(0.05, 5.0), s=st.floats(0.05, 5.0), uscale=st.floats(0.0, 5.0))
def test_gaussian_kl_helpers_agree_with_full(tau, d, seed, sigma, s, uscale):
    rng = np.random.default_rng(seed)
    U = torch.tensor(rng.normal(size=(tau, d)) * uscale)
    m = tau * d
    I = torch.eye(m, dtype=torch.float64)
    zero = torch.zeros(m, dtype=torch.float64)
    full = theory.gaussian_kl_full(U.reshape(m), sigma**2 * I, zero, sigma**2 * I)
    kl = theory.gaussian_kl(U, sigma)
    assert float(kl) == pytest.approx(float(full), rel=1e-9, abs=1e-12)
    assert float(theory.gaussian_kl_isotropic(U, sigma, sigma)) == pytest.approx(float(kl), rel=1e-9, abs=1e-12)
    full_s = theory.gaussian_kl_full(U.reshape(m), s**2 * I, zero, sigma**2 * I)
    iso = theory.gaussian_kl_isotropic(U, s, sigma)
    assert float(iso) == pytest.approx(float(full_s), rel=1e-9, abs=1e-10)
    # batched: (D, τ, d) means with (D,) stds, as the controllers call it
    Ub = torch.stack([U, 2 * U])
    iso_b = theory.gaussian_kl_isotropic(Ub, torch.tensor([s, sigma], dtype=torch.float64), sigma)
    assert float(iso_b[0]) == pytest.approx(float(iso), rel=1e-9, abs=1e-10)
    assert float(iso_b[1]) == pytest.approx(float(theory.gaussian_kl(2 * U, sigma)), rel=1e-9, abs=1e-10)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 4))
def test_gaussian_kl_full_matches_scipy_entropy_identity(seed, m):
    """KL(q‖p) = −H(q) − E_q[log p], with H and E_q[log p] from closed forms via scipy."""
    rng = np.random.default_rng(seed)
    mq, mp = rng.normal(size=m), rng.normal(size=m)
    Sq, Sp = random_spd(rng, m).numpy(), random_spd(rng, m).numpy()
    H = stats.multivariate_normal(mq, Sq).entropy()
    # E_q[log p(V)] = log p(mq) − ½ tr(Sp⁻¹ Sq)
    cross = stats.multivariate_normal(mp, Sp).logpdf(mq) - 0.5 * np.trace(np.linalg.solve(Sp, Sq))
    kl = theory.gaussian_kl_full(*(torch.tensor(a) for a in (mq, Sq, mp, Sp)))
    assert float(kl) == pytest.approx(-H - cross, rel=1e-8, abs=1e-10)
    assert float(kl) >= -1e-12


def test_gaussian_kl_monte_carlo():
    """KL(q_U‖p) = E_{q_U}[log q_U − log p] within 5 standard errors (n = 200 000)."""
    tau, d, sigma = 3, 2, 0.8
    U = torch.tensor([[0.5, -0.3], [0.0, 1.1], [-0.7, 0.2]], dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    n = 200_000
    V = U + sigma * torch.randn(n, tau, d, generator=g, dtype=torch.float64)
    Vf = V.reshape(n, -1).numpy()
    cov = sigma**2 * np.eye(tau * d)
    logq = stats.multivariate_normal.logpdf(Vf, mean=U.reshape(-1).numpy(), cov=cov)
    logp = stats.multivariate_normal.logpdf(Vf, mean=np.zeros(tau * d), cov=cov)
    diff = logq - logp
    est, se = diff.mean(), diff.std(ddof=1) / math.sqrt(n)
    kl = float(theory.gaussian_kl(U, sigma))
    assert abs(est - kl) < Z * se
    assert se < 0.02 * kl  # the check can tell a wrong factor of 2 apart
