r"""Control spaces: the maps θ → V, and the theorems of the formulation in each space.

On the linear-Gaussian system y = x + A vec(V) a space V = Bθ (B: (τ·d) × m, injective) gives
y = x + (AB)θ, again linear-Gaussian, so the closed forms of :mod:`ctrlalign.theory` with
A' = AB hold in θ's coordinates: the cost J(θ̂) (checked against rollouts through the space),
the free-energy bound −λF ≤ J with equality at q*, and exact importance sampling (AISP, α = 0)
landing on the closed-form optimal mean μ*(AB). Best-of-N = AISP with zero updates bit for bit
in every space.

The learning toy: y = x + Σ_t a·v_t with r = −(y − y*)². While the gap g = y* − ȳ is large
compared with the spread s_y of y under the proposal, r is linear in y, so an adaptive λ (ESS
fraction f) makes the weights a fixed function of standardised noise, and one update moves ȳ
by exactly s_y·Σ_i w_i z_i, whose expectation κ(n, f) depends on n and f only. Per round
E[Δȳ] = κ s_y with s_y = σ‖a‖√τ per token and σ‖a‖τ shared over time: the shared space closes
the gap √τ times faster, and k rounds of the per-token space close at most ≈ k κ σ‖a‖√τ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ctrlalign as ca
from ctrlalign import theory
from ctrlalign.bench.config import BenchConfig
from ctrlalign.cli import align_config, build_parser
from ctrlalign.config import RunConfig, validate_config
from ctrlalign.declare import Hyperparameter
from ctrlalign.spaces import (
    SPACES,
    Blocks,
    ControlSpace,
    PerToken,
    Shared,
    Subspace,
    head_directions,
    make_space,
    register_space,
)
from ctrlalign.testing import SYSTEMS, ControllerContract, same_sample

Z = 5.0  # standard errors allowed in Monte-Carlo checks


pytestmark = pytest.mark.usefixtures("one_thread")


TAU, D_HID = 3, 2


class _Dyn:
    hidden_size = D_HID


_E = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
#: every space kind, unbound
UNBOUND = {
    "per-token": PerToken(),
    "shared": Shared(),
    "blocks": Blocks(2),
    "subspace-shared": Subspace(rank=1, directions=_E, shared=True),
    "subspace-token": Subspace(rank=1, directions=_E, shared=False),
}


def _spaces():
    """Every space kind, bound to τ = 3, d = 2."""
    return {k: v.bind(TAU, _Dyn()) for k, v in UNBOUND.items()}


SPACE_NAMES = list(_spaces())


def _matrix(space) -> torch.Tensor:
    """B ((τ·d) × m) with vec(V) = B θ, read off the space by mapping the unit vectors."""
    m = space.dimension
    eye = torch.eye(m, dtype=torch.float64).view(m, *space.shape)
    return space.controls(eye).reshape(m, -1).T


@pytest.mark.parametrize("name", SPACE_NAMES)
@given(seed=st.integers(0, 2**31 - 1), a=st.floats(-3, 3), b=st.floats(-3, 3))
@settings(max_examples=20, deadline=None)
def test_space_maps_are_linear_and_injective(name, seed, a, b):
    space = _spaces()[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, *space.shape, generator=g, dtype=torch.float64)
    y = torch.randn(5, *space.shape, generator=g, dtype=torch.float64)
    V = space.controls(a * x + b * y)
    assert V.shape == (5, TAU, D_HID)
    torch.testing.assert_close(V, a * space.controls(x) + b * space.controls(y))
    B = _matrix(space)
    torch.testing.assert_close(V.reshape(5, -1), (a * x + b * y).reshape(5, -1) @ B.T)
    assert int(torch.linalg.matrix_rank(B)) == space.dimension  # injective: KL in θ is exact


def test_shared_controls_are_a_view_not_a_copy():
    space = Shared().bind(64, type("D", (), {"hidden_size": 576})())
    theta = torch.randn(4, 8, 576)
    V = space.controls(theta)
    assert V.shape == (4, 8, 64, 576) and V.stride(2) == 0 and V.data_ptr() == theta.data_ptr()
    assert V.reshape(32, 64, 576).data_ptr() == theta.data_ptr()  # the engines' (B, τ, d) view


def test_space_shapes_and_dimensions():
    s = _spaces()
    assert s["per-token"].shape == (TAU, D_HID) and s["shared"].shape == (D_HID,)
    assert s["blocks"].shape == (2, D_HID)  # ⌈3/2⌉ blocks
    assert s["subspace-shared"].shape == (1,) and s["subspace-token"].shape == (TAU, 1)
    with pytest.raises(ca.ConfigError, match="not bound"):
        _ = PerToken().shape
    with pytest.raises(ca.ConfigError, match="unknown control space 'diagonal'"):
        make_space("diagonal")
    with pytest.raises(ca.ConfigError, match=r"block_size does not apply to control space 'shared' \(it takes: horizon\)"):
        make_space("shared", block_size=2)
    with pytest.raises(ca.ConfigError, match=r"block_size \(b\) must be an integer >= 1, got 0"):
        Blocks(0)


def test_head_directions_are_the_top_right_singular_vectors():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(50, 6, generator=g, dtype=torch.float64)
    E = head_directions(W, 3)
    torch.testing.assert_close(E @ E.T, torch.eye(3, dtype=torch.float64))
    _, S, Vh = torch.linalg.svd(W, full_matrices=False)
    for i in range(3):  # same directions up to sign
        assert abs(float(E[i] @ Vh[i])) == pytest.approx(1.0, abs=1e-9)
    # the logits move most along them: ‖W e_1‖ = s_1
    assert float((W @ E[0]).norm()) == pytest.approx(float(S[0]))


def test_subspace_binds_to_a_dynamics_head():
    W = torch.randn(5, D_HID, dtype=torch.float64)
    dyn = ca.SoftmaxHead(W, torch.zeros(5, dtype=torch.float64), TAU)
    s = Subspace(rank=1).bind(TAU, dyn)
    torch.testing.assert_close(s.basis, head_directions(W, 1))
    with pytest.raises(ca.ConfigError, match="has no output head"):
        Subspace(rank=1).bind(TAU, ca.LinearGaussian(torch.zeros(2, TAU * D_HID), TAU, D_HID))


# ----------------------------------------------------------------------------------------
# the theorems per space, on the linear-Gaussian system
# ----------------------------------------------------------------------------------------

def _lg_problem(seed=0, p=3, scale=0.6):
    rng = np.random.default_rng(seed)
    A = torch.tensor(rng.normal(size=(p, TAU * D_HID)) * scale)
    M = rng.normal(size=(p, p))
    Q = torch.tensor(M.T @ M / p + 0.5 * np.eye(p))
    target = torch.tensor(rng.normal(size=p) * 2)
    xs = [torch.tensor(rng.normal(size=p) * 2) for _ in range(2)]
    return A, Q, target, xs


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_cost_closed_form_bound_and_equality_per_space(name):
    """J(θ̂) by rollouts through the space = the closed form with A' = AB; J ≥ −λF, = at q*."""
    space = _spaces()[name]
    A, Q, target, xs = _lg_problem(1)
    Ap = A @ _matrix(space)
    sigma, lam, n = 0.9, 0.7, 100_000
    dyn = ca.LinearGaussian(A, TAU, D_HID)
    reward = ca.QuadraticReward(target, Q)
    g = torch.Generator().manual_seed(3)
    theta_hat = torch.randn(len(xs), *space.shape, generator=g, dtype=torch.float64)
    theta = theta_hat.unsqueeze(1) + sigma * torch.randn(len(xs), n, *space.shape, generator=g, dtype=torch.float64)
    r = reward(xs, dyn.rollout(dyn.prepare(xs), space.controls(theta), [None] * len(xs), n))
    kl = ca.AISP(sigma=sigma).kl(ca.Proposal(theta_hat, torch.full((len(xs),), sigma)))
    terms = ca.Cost.terms(r, kl, torch.full((len(xs),), lam, dtype=torch.float64))
    se = r.std(-1) / math.sqrt(n)
    for j, x in enumerate(xs):
        J = theory.linear_gaussian_cost(Ap, Q, target, x, sigma, lam, theta_hat[j].reshape(-1))
        assert abs(float(terms.objective[j] - J)) < Z * float(se[j])
        opt = theory.linear_gaussian_optimum(Ap, Q, target, x, sigma, lam)
        bound = -lam * float(opt.log_eta)
        assert float(J) >= bound - 1e-9
        J_star = float(theory.linear_gaussian_cost(Ap, Q, target, x, sigma, lam, opt.mean, opt.cov))
        assert J_star == pytest.approx(bound, abs=1e-9)


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_importance_sampling_reaches_the_closed_form_optimum_per_space(name):
    """AISP with α = 0 in a space lands on μ*(AB) within 5 SEs (SE² = diag(P⁻¹)/ESS)."""
    space = _spaces()[name]
    A, Q, target, xs = _lg_problem(0)
    Ap = A @ _matrix(space)
    sigma, lam, n = 1.0, 1.0, 4000
    ctrl = ca.AISP(num_samples=n, num_iterations=3, sigma=sigma, temperature=lam, alpha=0.0)
    res = ca.align(ca.LinearGaussian(A, TAU, D_HID), ca.QuadraticReward(target, Q), ctrl, xs, space=UNBOUND[name],
                   seed=0)
    for j, x in enumerate(xs):
        opt = theory.linear_gaussian_optimum(Ap, Q, target, x, sigma, lam)
        ess = float(res.trace[-1].diagnostics.ess[j])
        assert ess > 0.3 * n
        se = (torch.diagonal(opt.cov) / ess).sqrt()
        z = (res.state.mean[j].reshape(-1) - opt.mean) / se
        assert z.abs().max() < Z, z
        assert (opt.mean / se).abs().max() > 4 * Z  # resolution: μ* is far from 0


@pytest.mark.parametrize("name", ["per-token", "shared", "blocks"])
@given(n=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=8, deadline=None)
def test_bon_equals_aisp_with_zero_updates_per_space(name, n, seed):
    A, Q, target, xs = _lg_problem(2)
    dyn, reward = ca.LinearGaussian(A, TAU, D_HID), ca.QuadraticReward(target, Q)
    space = make_space(name, **({"block_size": 2} if name == "blocks" else {}))
    bon = ca.align(dyn, reward, ca.BestOfN(num_samples=n, num_iterations=1, sigma=0.6), xs, space=space, seed=seed)
    aisp = ca.align(dyn, reward, ca.AISP(num_samples=n, num_iterations=1, sigma=0.6, target_ess=0.5), xs,
                    space=space, seed=seed)
    assert torch.equal(bon.rewards, aisp.rewards)
    assert all(same_sample(a, b) for a, b in zip(bon.responses, aisp.responses))


# ----------------------------------------------------------------------------------------
# the learning toy: shared over time learns √τ times faster than per token
# ----------------------------------------------------------------------------------------

TAU_L, D_L, SIGMA_L, N_L, K_L, F_L = 16, 4, 0.1, 8, 12, 0.5


def _kappa(n: int, f: float, draws: int = 20_000, seed: int = 0) -> float:
    """κ(n, f) = E[Σ_i w_i z_i] for z ~ N(0, I_n) and weights softmax(z/λ) with ESS = f·n."""
    z = torch.randn(draws, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lam = theory.adaptive_temperature(z, f)
    w = torch.softmax(z / lam.unsqueeze(-1), -1)
    return float((w * z).sum(-1).mean())


def _learning_run(space: str, controller=None, gap: float = 8.0):
    a = torch.full((D_L,), 0.5, dtype=torch.float64)  # ‖a‖ = 1
    A = a.repeat(TAU_L).view(1, TAU_L * D_L)  # y = x + Σ_t a·v_t
    dyn = ca.LinearGaussian(A, TAU_L, D_L)
    reward = ca.QuadraticReward(torch.tensor([gap], dtype=torch.float64))  # r = −(y − y*)²
    prompts = [torch.zeros(1, dtype=torch.float64) for _ in range(1)]
    ctrl = controller or ca.AISP(num_samples=N_L, num_iterations=K_L, sigma=SIGMA_L, target_ess=F_L, alpha=1.0)
    gaps = []
    for seed in range(6):
        res = ca.align(dyn, reward, ctrl, prompts, space=make_space(space), seed=seed)
        V = res.space.controls(res.state.mean)  # the final proposal's mean controls
        y_bar = float((A @ V.reshape(1, -1).double().T).squeeze())
        gaps.append(gap - y_bar)
    return float(np.mean(gaps)), res


def test_closed_form_step_constant_kappa():
    """κ(8, 1/2) is a property of the weights alone: the same for any scale of the noise."""
    k1 = _kappa(N_L, F_L)
    z = 7.0 * torch.randn(20_000, N_L, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 3.0
    lam = theory.adaptive_temperature(z, F_L)
    w = torch.softmax(z / lam.unsqueeze(-1), -1)
    k2 = float((w * (z - 3.0) / 7.0).sum(-1).mean())
    assert k1 == pytest.approx(k2, rel=1e-9)
    assert 0.3 < k1 < 1.5


def test_shared_space_learns_and_per_token_cannot_in_k_rounds():
    gap0 = 8.0
    kappa = _kappa(N_L, F_L)
    s_token = SIGMA_L * math.sqrt(TAU_L)  # spread of y per token: σ‖a‖√τ = 0.4
    s_shared = SIGMA_L * TAU_L  # shared: σ‖a‖τ = 1.6
    # the closed form's premise: k rounds of the per-token move cannot close the gap, the shared can
    assert K_L * kappa * s_token < 0.75 * gap0 < K_L * kappa * s_shared
    gap_shared, _ = _learning_run("shared", gap=gap0)
    gap_token, res = _learning_run("per-token", gap=gap0)
    assert abs(gap_shared) < 0.15 * gap0  # the shared space reached the target
    # per token: the gap closed by ≈ k κ s_token (the gap stays ≫ s_token, so r stays linear)
    closed = gap0 - gap_token
    assert closed == pytest.approx(K_L * kappa * s_token, rel=0.25)
    assert gap_token > 0.4 * gap0
    # and the round-mean reward rose several-fold toward 0 in the shared space
    assert res.trace[0].diagnostics.mean_reward[0] < res.trace[-1].diagnostics.mean_reward[0]


def test_broken_update_fails_the_learning_check():
    """Power: a deliberately broken AISP (rewards negated in the weights) does not learn."""

    class WrongWay(ca.AISP):
        def weigh(self, state, theta, rewards):
            return super().weigh(state, theta, -rewards)

    broken = WrongWay(num_samples=N_L, num_iterations=K_L, sigma=SIGMA_L, target_ess=F_L, alpha=1.0)
    gap, _ = _learning_run("shared", controller=broken)
    assert not abs(gap) < 0.15 * 8.0


# ----------------------------------------------------------------------------------------
# a new space is one class and a registration: configs, flags, the bench and align take it
# ----------------------------------------------------------------------------------------


# --8<-- [start:EveryOther]
@dataclass(frozen=True)
class EveryOther(ControlSpace):
    r"""Control every other token from φ: :math:`v_t = \theta_{(t-\varphi)/2}` for
    t ≡ φ (mod 2), else 0; θ (⌈(τ−φ)/2⌉, d). Linear and injective."""

    phase: int = 0
    name: ClassVar[str] = "every-other"
    hyperparameters: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("phase", int, "first controlled token", "φ", low=0, high=1),
    )

    def coordinate_shape(self, horizon: int, hidden_size: int) -> tuple[int, ...]:
        """(⌈(τ−φ)/2⌉, d)."""
        return ((horizon - self.phase + 1) // 2, hidden_size)

    def controls(self, theta: torch.Tensor) -> torch.Tensor:
        """V (..., τ, d), zero on the uncontrolled tokens."""
        tau, d = self.require_bound()
        V = theta.new_zeros(*theta.shape[:-2], tau, d)
        V[..., self.phase::2, :] = theta
        return V


# --8<-- [end:EveryOther]


@pytest.fixture
def every_other():
    register_space(EveryOther)
    yield EveryOther
    del SPACES[EveryOther.name]


def test_a_new_space_from_a_config_dict(every_other):
    cfg = RunConfig(prompts=["x"], space={"name": "every-other", "phase": 1, "horizon": 3})
    assert cfg.space.build() == EveryOther(phase=1, horizon=3)
    with pytest.raises(ca.ConfigError, match=r"space.phase: phase \(φ\) must be an integer in \[0, 1\], got 2"):
        validate_config({"prompts": ["x"], "space": {"name": "every-other", "phase": 2}})
    with pytest.raises(ca.ConfigError, match=r"space.rank does not apply to control space 'every-other' "
                                             r"\(it takes: phase, horizon\)"):
        validate_config({"prompts": ["x"], "space": {"name": "every-other", "rank": 2}})
    bench = BenchConfig(reward="sentiment", budgets=[4], controllers=[
        {"label": "eo", "name": "bon", "num_samples": 2, "space": {"name": "every-other", "phase": 1}}])
    assert bench.controllers[0].space.build() == EveryOther(phase=1)


def test_a_new_space_from_command_line_flags(every_other):
    parser = build_parser()
    args = parser.parse_args(["align", "x", "--preset", "learning", "--space", "every-other", "--phase", "1",
                              "--horizon", "2"])
    cfg = align_config(args)
    assert cfg.space.build() == EveryOther(phase=1, horizon=2)
    align = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("align"))
    assert any("--phase" in a.option_strings and "first controlled token" in a.help for a in align._actions)


def test_a_new_space_runs_in_align_and_passes_the_contract(every_other):
    A, Q, target, xs = _lg_problem(1)
    res = ca.align(ca.LinearGaussian(A, TAU, D_HID), ca.QuadraticReward(target, Q),
                   ca.AISP(num_samples=8, num_iterations=2, target_ess=0.5), xs, space=EveryOther(phase=1), seed=0)
    assert res.state.mean.shape == (len(xs), 1, D_HID)
    V = res.space.controls(res.state.mean)
    assert torch.equal(V[:, 0::2], torch.zeros_like(V[:, 0::2])) and bool(V[:, 1].abs().sum() > 0)


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("space", ["every-other"])
@pytest.mark.parametrize("name", ["aisp", "cem"])
class TestEveryOtherContract(ControllerContract):
    """The controller contract holds in the new space as in the built-in ones."""

    spaces = {"every-other": lambda: EveryOther(phase=1)}
