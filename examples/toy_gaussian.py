"""Tutorial 1: the theory on a system where every answer is known in closed form.

On the linear-Gaussian system (outcome y = x + A vec(V), reward −½‖y − y*‖²_Q):

1. the free-energy bound −λF ≤ J(U) holds for every U, with equality at q*;
2. AISP with α = 0 moves its mean to the closed-form optimal mean μ*;
3. the limits: λ → 0 turns the weights into Best-of-N's one-hot argmax, λ → ∞ into uniform
   weights; at Û = 0 AISP's weights are softmax(r/λ) (softmax sampling) for every α; AISP with
   zero mean updates (k = 1) is Best-of-n from the prior, bit for bit.

Run: ``python examples/toy_gaussian.py [--out docs/img] [--num-samples 2000]``
(writes toy_gaussian.png into ``--out``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ctrlalign as ca
from ctrlalign import theory


def make_problem(seed: int = 0):
    """The toy problem: τ = 2 controlled steps of dimension d = 2, a 3-dimensional outcome."""
    torch.manual_seed(seed)
    tau, d, p = 2, 2, 3
    A = torch.randn(p, tau * d, dtype=torch.float64)
    target = torch.randn(p, dtype=torch.float64)
    x = torch.randn(p, dtype=torch.float64)
    dyn = ca.LinearGaussian(A, tau, d)
    reward = ca.QuadraticReward(target)  # r(y) = −½‖y − target‖²
    return dyn, reward, x, A, target


def main(out: Path | None = None, num_samples: int = 2000, num_iterations: int = 8) -> dict:
    sigma, lam = 0.7, 0.5
    dyn, reward, x, A, target = make_problem()
    tau, d = dyn.horizon, dyn.hidden_size
    Q = torch.eye(A.shape[0], dtype=torch.float64)
    opt = theory.linear_gaussian_optimum(A, Q, target, x, sigma, lam)
    F = float(opt.log_eta)

    # 1. the bound, at random means and at the optimum
    print(f"free energy F = {F:.4f};  -λF = {-lam * F:.4f}")
    g = torch.Generator().manual_seed(1)
    for scale in (0.0, 0.5, 1.0, 2.0):
        U = scale * torch.randn(tau * d, dtype=torch.float64, generator=g)
        J = float(theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, U))
        print(f"  J(U) at ‖U‖={U.norm():.2f}: {J:.4f}  >= {-lam * F:.4f}")
        assert J >= -lam * F - 1e-9
    J_star = float(theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, opt.mean, opt.cov))
    print(f"  J(q*) = {J_star:.6f}  (equality with -λF = {-lam * F:.6f})")
    assert abs(J_star + lam * F) < 1e-9

    # 2. AISP (α = 0) moves its mean to μ*: run the controller's pure steps by hand
    ctrl = ca.AISP(num_samples=num_samples, num_iterations=1, sigma=sigma, temperature=lam, alpha=0.0)
    gens = ca.make_generators(0, [x])
    state = ctrl.init(1, ca.PerToken(horizon=tau, hidden_size=d), dtype=torch.float64)
    ctx = dyn.prepare([x])
    errors, ess = [float(opt.mean.norm())], []
    for _ in range(num_iterations):
        V = ctrl.sample(state, [g.control for g in gens])            # (D, n, τ, d)
        r = reward([x], dyn.rollout(ctx, V, [g.rollout for g in gens], ctrl.num_samples))  # (D, n)
        state, info = ctrl.step(state, V, r)               # update; info: its log-weights and λ
        errors.append(float((state.mean.flatten() - opt.mean).norm()))
        ess.append(float(theory.effective_sample_size(torch.log_softmax(info.log_weights, -1))[0]))
    print("‖U_k − μ*‖ by iteration:", " ".join(f"{e:.3f}" for e in errors))
    print(f"ESS (of n = {num_samples}) by iteration:", " ".join(f"{e:.0f}" for e in ess))

    # 3a. the temperature limits of the weights
    r = torch.randn(1, 8, dtype=torch.float64, generator=g)
    w_small = theory.importance_weights(r, 1e-6)
    w_large = theory.importance_weights(r, 1e6)
    print("λ→0 weights:", w_small.numpy().round(3), "(one-hot at argmax", int(r.argmax()), "= Best-of-N)")
    print("λ→∞ weights:", w_large.numpy().round(3), "(uniform)")
    assert int(w_small.argmax()) == int(r.argmax()) and float(w_small.max()) > 0.999

    # 3b. at Û = 0 AISP's weights are softmax(r/λ) whatever α: softmax sampling is its first step
    V = 0.7 * torch.randn(1, 8, tau, d, dtype=torch.float64, generator=g)
    zero = torch.zeros(1, tau, d, dtype=torch.float64)
    w_aisp = theory.importance_weights(r, lam, controls=V, mean=zero, sigma=sigma, alpha=0.0)
    w_soft = torch.softmax(r / lam, dim=-1)
    print("at Û = 0, α = 0: max |w_AISP − softmax(r/λ)| =", f"{float((w_aisp - w_soft).abs().max()):.1e}")
    assert torch.allclose(w_aisp, w_soft)

    # 3c. AISP with k = 1 (zero mean updates) is Best-of-n from the prior, bit for bit
    n = 16
    a = ca.align(dyn, reward, ca.AISP(num_samples=n, num_iterations=1, sigma=sigma, temperature=lam), [x], seed=3)
    b = ca.align(dyn, reward, ca.BestOfN(num_samples=n, num_iterations=1, sigma=sigma), [x], seed=3)
    print(f"AISP(k=1) reward {float(a.rewards[0]):.6f} == BestOfN reward {float(b.rewards[0]):.6f}:",
          torch.equal(a.rewards, b.rewards) and torch.equal(a.responses[0].value, b.responses[0].value))
    assert torch.equal(a.rewards, b.rewards)

    if out is not None:
        import matplotlib.pyplot as plt

        from ctrlalign.bench.plots import figure_style, save_figure

        with figure_style():
            fig, ax = plt.subplots(1, 2, figsize=(11, 4.4))
        scales = torch.linspace(-2, 2, 81, dtype=torch.float64)
        direction = torch.randn(tau * d, dtype=torch.float64, generator=g)
        direction /= direction.norm()
        Js = [float(theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, opt.mean + s * direction))
              for s in scales]
        with figure_style():
            ax[0].plot(scales, Js, label="J(μ* + s·e)")
            ax[0].axhline(-lam * F, color="k", ls="--", label="−λF (bound)")
            ax[0].set_xlabel("s (distance from μ* along a random direction e)"), ax[0].set_ylabel("cost J")
            ax[0].set_title("free-energy bound"), ax[0].legend()
            ax[1].semilogy(range(len(errors)), errors, "o-")
            ax[1].set_xlabel("AISP iteration"), ax[1].set_ylabel("‖U − μ*‖ (log scale)")
            ax[1].set_title(f"AISP (α=0, n={num_samples}) → μ*")
            save_figure(fig, out / "toy_gaussian.png")
        print("wrote", out / "toy_gaussian.png")
    return {"F": F, "J_star": J_star, "errors": errors, "ess": ess}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for the plot")
    ap.add_argument("--num-samples", type=int, default=2000, help="n for the AISP run")
    ap.add_argument("--num-iterations", type=int, default=8, help="k for the AISP run")
    args = ap.parse_args()
    main(args.out, args.num_samples, args.num_iterations)
