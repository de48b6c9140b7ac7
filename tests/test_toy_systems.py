r"""The theory checked through the real code path: toy Dynamics → Reward/Cost → Controller → align.

* linear-Gaussian: the closed-form cost J(U) against Monte-Carlo rollouts; AISP (α = 0)
  converging to the closed-form optimal mean μ*, and the α = 1 / wrong-sign updates landing
  where *their* (different) fixed maps predict — so the test can tell them apart;
* softmax head: the Gauss–Hermite outcome law against Monte-Carlo rollouts, and softmax
  sampling (SIR) against its exact finite-pool law, computed by enumerating multinomial counts.

False-alarm rates. Monte-Carlo mean checks allow 5 standard errors (≈ 5.7e-7 two-sided per
coordinate under the normal approximation). Chi-square goodness-of-fit tests require
p > 1e-3, i.e. each has a false-alarm rate of 1e-3 when the code is right. All seeds are fixed,
so the suite is deterministic.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import gammaln

from ctrlalign import (
    AISP,
    MPPI,
    Cost,
    LinearGaussian,
    QuadraticReward,
    SoftmaxHead,
    SoftmaxSampling,
    TableReward,
    align,
    theory,
)
from ctrlalign.dynamics.toy import tilted_distribution

Z = 5.0  # standard errors allowed in Monte-Carlo mean checks
P_MIN = 1e-3  # chi-square false-alarm rate


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------
# linear-Gaussian system
# ----------------------------------------------------------------------------------------

def _lg_problem(seed=0, p=3, tau=2, d=2, scale=0.6):
    rng = np.random.default_rng(seed)
    A = torch.tensor(rng.normal(size=(p, tau * d)) * scale)
    B = rng.normal(size=(p, p))
    Q = torch.tensor(B.T @ B / p + 0.5 * np.eye(p))
    target = torch.tensor(rng.normal(size=p) * 2)
    xs = [torch.tensor(rng.normal(size=p) * 2) for _ in range(3)]
    return A, Q, target, xs, tau, d


@pytest.mark.parametrize("uscale", [0.0, 1.0])
def test_linear_gaussian_cost_closed_form_vs_rollouts(uscale):
    """J(U) = −E_q[r] + λ KL: closed form vs rollouts of LinearGaussian scored by
    QuadraticReward through Cost.terms, within 5 standard errors; the error shrinks with n."""
    A, Q, target, xs, tau, d = _lg_problem(1)
    sigma, lam = 0.9, 0.7
    dyn = LinearGaussian(A, tau, d)
    cost = Cost(QuadraticReward(target, Q))
    rng = np.random.default_rng(2)
    U = torch.tensor(rng.normal(size=(len(xs), tau, d)) * uscale)
    ctx = dyn.prepare(xs)
    g = torch.Generator().manual_seed(3)
    errs = {}
    for n in (200, 200_000):
        V = U.unsqueeze(1) + sigma * torch.randn(len(xs), n, tau, d, generator=g, dtype=torch.float64)
        r = cost.rewards(xs, dyn.rollout(ctx, V, [None] * len(xs), n))
        terms = cost.terms(r, theory.gaussian_kl(U, sigma), torch.full((len(xs),), lam, dtype=torch.float64))
        se = r.std(-1) / math.sqrt(n)
        J = torch.stack([theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, U[j]) for j, x in enumerate(xs)])
        err = (terms.objective - J).abs()
        assert (err < Z * se).all(), (err, se)
        errs[n] = float(err.max() / J.abs().max())
    assert float(se.max()) < 0.01 * float(J.abs().max())  # resolution of the large-n check
    assert errs[200_000] < errs[200]


def _z_scores(U, expected, cov, ess):
    """(U − expected)/SE per coordinate, SE = sqrt(diag(cov)/ESS) (self-normalised IS)."""
    se = (torch.diagonal(cov) / ess).sqrt()
    return (U.reshape(-1).double() - expected) / se


def _run_lg(controller, seed=0):
    A, Q, target, xs, tau, d = _lg_problem(0)
    dyn = LinearGaussian(A, tau, d)
    res = align(dyn, Cost(QuadraticReward(target, Q)), controller, xs, seed=seed)
    return A, Q, target, xs, res


def test_aisp_alpha0_converges_to_optimal_mean():
    """AISP with α = 0 (exact importance sampling) lands on μ* = −P⁻¹AᵀMc within 5 SEs,
    SE² = diag(P⁻¹)/ESS of the last iteration (q* has covariance P⁻¹)."""
    sigma, lam, n = 1.0, 1.0, 4000
    ctrl = AISP(num_samples=n, num_iterations=3, sigma=sigma, temperature=lam, alpha=0.0)
    A, Q, target, xs, res = _run_lg(ctrl)
    for j, x in enumerate(xs):
        opt = theory.linear_gaussian_optimum(A, Q, target, x, sigma, lam)
        ess = float(res.trace[-1].diagnostics.ess[j])
        assert ess > 0.3 * n  # the proposal N(μ*, σ²I) covers q* well: weights are bounded
        z = _z_scores(res.state.mean[j], opt.mean, opt.cov, ess)
        assert z.abs().max() < Z, z
        # the check has resolution: μ* is many SEs away from 0 and from α=1's answer
        assert _z_scores(torch.zeros_like(opt.mean), opt.mean, opt.cov, ess).abs().max() > 10 * Z


def _alpha1_map(opt, sigma, U):
    """One exact α = 1 update from Û: the mean of e^{r/λ} N(Û, σ²I), i.e. μ* + P⁻¹Û/σ²."""
    return opt.mean + opt.cov @ U / sigma**2


def test_aisp_alpha1_does_not_converge_to_optimal_mean():
    """α = 1 drops the likelihood ratio: from Û ≠ 0 it targets μ* + P⁻¹Û/σ², not μ*.
    After 3 iterations it sits where that map predicts (0 → μ* → μ*+Bμ* → …), far from μ*."""
    sigma, lam, n, k = 1.0, 1.0, 4000, 3
    ctrl = AISP(num_samples=n, num_iterations=k, sigma=sigma, temperature=lam, alpha=1.0)
    A, Q, target, xs, res = _run_lg(ctrl)
    for j, x in enumerate(xs):
        opt = theory.linear_gaussian_optimum(A, Q, target, x, sigma, lam)
        pred = torch.zeros_like(opt.mean)
        for _ in range(k):
            pred = _alpha1_map(opt, sigma, pred)
        # Stage s leaves an error of covariance ≈ P⁻¹/ESS_s; later α = 1 maps multiply it by
        # B = P⁻¹/σ² (‖B‖ ≤ 1, and = 1 on the null space of A), so each coordinate's error std is
        # at most Σ_s sqrt(λ_max(P⁻¹)/ESS_s) (triangle inequality for standard deviations).
        lam_max = float(torch.linalg.eigvalsh(opt.cov).max())
        se = sum(math.sqrt(lam_max / float(rec.diagnostics.ess[j])) for rec in res.trace)
        z_pred = (res.state.mean[j].reshape(-1).double() - pred) / se
        assert z_pred.abs().max() < Z, z_pred
        # and it fails the α = 0 check (same function, same tolerance rule) by a wide margin
        z_opt = _z_scores(res.state.mean[j], opt.mean, opt.cov, float(res.trace[-1].diagnostics.ess[j]))
        assert z_opt.abs().max() > 4 * Z, z_opt


class _WrongSignAISP(MPPI):
    """A deliberately broken AISP(α = 0): the likelihood-ratio term with the wrong sign."""

    def offsets(self, state, theta):
        inner = torch.einsum("dntk,dtk->dn", theta.double(), state.mean.double())
        return -inner / self.sigma**2


def test_wrong_sign_update_fails_the_optimal_mean_check():
    sigma, lam, n = 1.0, 1.0, 4000
    ctrl = _WrongSignAISP(num_samples=n, num_iterations=3, sigma=sigma, temperature=lam, likelihood_ratio=1.0)
    A, Q, target, xs, res = _run_lg(ctrl)
    worst = 0.0
    for j, x in enumerate(xs):
        opt = theory.linear_gaussian_optimum(A, Q, target, x, sigma, lam)
        ess = float(res.trace[-1].diagnostics.ess[j])
        worst = max(worst, float(_z_scores(res.state.mean[j], opt.mean, opt.cov, ess).abs().max()))
    assert worst > 4 * Z


# ----------------------------------------------------------------------------------------
# softmax head: exact outcome laws
# ----------------------------------------------------------------------------------------

def _head(seed=0, K=2, tau=2, d=2, wscale=1.5):
    rng = np.random.default_rng(seed)
    W = torch.tensor(rng.normal(size=(K, d)) * wscale)
    b = torch.tensor(rng.normal(size=K) * 0.5)
    E = torch.tensor(rng.normal(size=(K + 1, d)))
    x = torch.tensor(rng.normal(size=(tau, d)) * 0.5)
    return SoftmaxHead(W, b, tau, E), x


def _chisquare(counts: dict, probs: dict, total: int):
    keys = list(probs)
    obs = np.array([counts.get(k, 0) for k in keys], dtype=float)
    exp = np.array([probs[k] for k in keys]) * total
    exp *= obs.sum() / exp.sum()  # exact renormalisation against quadrature rounding
    assert exp.min() >= 5, "chi-square needs expected counts >= 5"
    return stats.chisquare(obs, exp)


@pytest.mark.parametrize("K,tau,d,sigma,umean", [(2, 2, 2, 0.8, 0.0), (3, 1, 2, 1.0, 0.0), (2, 2, 2, 0.6, 0.7)])
def test_softmax_head_outcome_distribution_vs_rollouts(K, tau, d, sigma, umean):
    """Gauss–Hermite ``outcome_distribution`` equals the law of rollouts with
    v_t ~ N(u_t, σ²I) (chi-square, p > 1e-3); and the test has power: it rejects the σ = 0 law."""
    head, x = _head(1, K, tau, d)
    rng = np.random.default_rng(5)
    U = torch.tensor(rng.normal(size=(tau, d)) * umean)
    n = 40_000
    g = torch.Generator().manual_seed(6)
    V = U + sigma * torch.randn(1, n, tau, d, generator=g, dtype=torch.float64)
    toks = head.rollout(head.prepare([x]), V, [torch.Generator().manual_seed(7)], n).tokens[0]
    counts = {}
    for row in toks.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    law = head.outcome_distribution(x, sigma, mean=U)
    assert sum(law.values()) == pytest.approx(1.0, abs=1e-10)
    assert _chisquare(counts, law, n).pvalue > P_MIN
    wrong = head.outcome_distribution(x, 0.0, mean=U)  # noise ignored
    assert _chisquare(counts, wrong, n).pvalue < P_MIN


def _compositions(N: int, k: int) -> np.ndarray:
    """All count vectors c ∈ ℕ^k with Σc = N, shape (C(N+k-1, k-1), k)."""
    out = []
    for bars in itertools.combinations(range(N + k - 1), k - 1):
        prev, c = -1, []
        for bpos in bars:
            c.append(bpos - prev - 1)
            prev = bpos
        c.append(N + k - 1 - prev - 1)
        out.append(c)
    return np.array(out, dtype=float)


def sir_law(base: dict, reward: dict, lam: float, N: int) -> dict:
    r"""Exact law of SIR with pool N: :math:`P(y) = \sum_c \mathrm{Mult}(c; N, P_p)\,
    c_y e^{r_y/\lambda} / \sum_k c_k e^{r_k/\lambda}`."""
    keys = list(base)
    p = np.array([base[k] for k in keys])
    a = np.exp(np.array([reward[k] for k in keys]) / lam)
    c = _compositions(N, len(keys))
    logpmf = gammaln(N + 1) - gammaln(c + 1).sum(1) + (c * np.log(p)).sum(1)
    share = c * a / (c @ a)[:, None]
    out = np.exp(logpmf) @ share
    return dict(zip(keys, out.tolist()))


def _tv(P: dict, R: dict) -> float:
    return 0.5 * sum(abs(P[k] - R[k]) for k in P)


TABLE = {(0, 0): 0.0, (0, 1): 1.0, (1, 0): -0.5, (1, 1): 2.0}


def test_sir_law_exact_and_converges_to_tilted():
    """The enumerated finite-N SIR law: N = 1 is the prior law, and TV(P_SIR_N, P*) decreases
    with N toward 0 (O(1/N))."""
    head, x = _head(0)
    lam = 1.0
    Pp = head.outcome_distribution(x, 0.8)
    Pstar = tilted_distribution(Pp, TABLE, lam)
    assert _tv(sir_law(Pp, TABLE, lam, 1), Pp) < 1e-12
    tvs = [_tv(sir_law(Pp, TABLE, lam, N), Pstar) for N in (1, 2, 4, 8, 16, 32, 64, 128)]
    assert all(b < a for a, b in zip(tvs, tvs[1:])), tvs
    assert tvs[-1] < tvs[0] / 30
    assert tvs[-1] * 128 < 2 * tvs[-2] * 64  # the bias is O(1/N)


def test_softmax_sampling_matches_exact_sir_law():
    """``align`` with SoftmaxSampling (n = 2, k = 4: pool N = 8 across a weighted reservoir)
    returns a response distributed exactly as SIR with N = 8 (chi-square, p > 1e-3, over
    M independent seeds); the test rejects the prior law and the N = 2 law that a reservoir
    keeping only the last round would give."""
    head, x = _head(0)
    sigma, lam, n, k = 0.8, 1.0, 2, 4
    Pp = head.outcome_distribution(x, sigma)
    reward = TableReward(TABLE)
    ctrl = SoftmaxSampling(num_samples=n, num_iterations=k, sigma=sigma, temperature=lam)
    M = 1500
    counts: dict = {}
    for seed in range(M):
        res = align(head, reward, ctrl, [x], seed=seed)
        y = tuple(int(t) for t in res.responses[0].tokens)
        assert float(res.rewards[0]) == TABLE[y]  # the kept reward is the kept response's
        counts[y] = counts.get(y, 0) + 1
    exact = sir_law(Pp, TABLE, lam, n * k)
    assert _chisquare(counts, exact, M).pvalue > P_MIN
    assert _chisquare(counts, Pp, M).pvalue < P_MIN
    assert _chisquare(counts, sir_law(Pp, TABLE, lam, n), M).pvalue < P_MIN
