"""Tutorial 1: the theory on a system where every answer is known in closed form.

On the linear-Gaussian system (outcome y = x + A vec(V), reward −½‖y − y*‖²_Q):

1. the free-energy bound −λF ≤ J(U) holds for every U, with the gap λ·KL(q_U‖q*);
2. AISP with α = 0 moves its mean to the closed-form optimal mean μ*;
3. λ → 0 turns the weights into Best-of-N's one-hot argmax, λ → ∞ into uniform weights.

Run: ``python examples/toy_gaussian.py [--out docs/img]`` (writes toy_gaussian.png).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ctrlalign as ca
from ctrlalign import theory


def main(out: Path | None = None) -> dict:
    torch.manual_seed(0)
    tau, d, p = 2, 2, 3
    sigma, lam = 0.7, 0.5
    A = torch.randn(p, tau * d, dtype=torch.float64)
    target = torch.randn(p, dtype=torch.float64)
    x = torch.randn(p, dtype=torch.float64)
    Q = torch.eye(p, dtype=torch.float64)
    opt = theory.linear_gaussian_optimum(A, Q, target, x, sigma, lam)
    F = float(opt.log_eta)

    # 1. the bound, at random means and at the optimum
    print(f"free energy F = {F:.4f};  -λF = {-lam * F:.4f}")
    for scale in (0.0, 0.5, 1.0, 2.0):
        U = scale * torch.randn(tau * d, dtype=torch.float64)
        J = float(theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, U))
        print(f"  J(U) at ‖U‖={U.norm():.2f}: {J:.4f}  >= {-lam * F:.4f}")
        assert J >= -lam * F - 1e-9
    J_star = float(theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, opt.mean, opt.cov))
    print(f"  J(q*) = {J_star:.6f}  (equality with -λF = {-lam * F:.6f})")

    # 2. AISP converges to μ*
    dyn = ca.LinearGaussian(A, tau, d)
    reward = ca.QuadraticReward(target, Q)
    errors = []
    result = ca.align(dyn, ca.Cost(reward, lam),
                      ca.AISP(num_samples=2000, num_iterations=6, sigma=sigma, temperature=lam, alpha=0.0),
                      [x], seed=0, callback=lambda rec: None)
    # replay the trace of means: run again iteration by iteration
    ctrl = ca.AISP(num_samples=2000, num_iterations=1, sigma=sigma, temperature=lam, alpha=0.0)
    gens = ca.make_generators(0, [x])
    state = ctrl.init(1, d, tau, dtype=torch.float64)
    ctx = dyn.prepare([x])
    for _ in range(8):
        V = ctrl.sample(state, [g.control for g in gens])
        r = reward([x], dyn.rollout(ctx, V, [g.rollout for g in gens], ctrl.num_samples))
        state, info = ctrl.step(state, V, r)
        errors.append(float((state.mean.flatten() - opt.mean).norm()))
    print("‖U_k − μ*‖ by iteration:", " ".join(f"{e:.3f}" for e in errors))
    print(f"AISP final reward {float(result.rewards[0]):.4f}")

    # 3. the two limits of the weights
    r = torch.randn(1, 8, dtype=torch.float64)
    w_small = theory.importance_weights(r, 1e-6)
    w_large = theory.importance_weights(r, 1e6)
    print("λ→0 weights:", w_small.numpy().round(3), "(one-hot at argmax", int(r.argmax()), ")")
    print("λ→∞ weights:", w_large.numpy().round(3))

    if out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
        scales = torch.linspace(-2, 2, 81, dtype=torch.float64)
        direction = torch.randn(tau * d, dtype=torch.float64)
        direction /= direction.norm()
        Js = [float(theory.linear_gaussian_cost(A, Q, target, x, sigma, lam, opt.mean + s * direction)) for s in scales]
        ax[0].plot(scales, Js, label="J(μ* + s·e)")
        ax[0].axhline(-lam * F, color="k", ls="--", label="−λF (bound)")
        ax[0].set_xlabel("s"), ax[0].set_title("free-energy bound"), ax[0].legend()
        ax[1].semilogy(range(1, len(errors) + 1), errors, "o-")
        ax[1].set_xlabel("AISP iteration"), ax[1].set_ylabel("‖U − μ*‖"), ax[1].set_title("AISP (α=0) → μ*")
        fig.tight_layout()
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / "toy_gaussian.png", dpi=120)
        print("wrote", out / "toy_gaussian.png")
    return {"F": F, "J_star": J_star, "errors": errors}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for the plot")
    main(ap.parse_args().out)
