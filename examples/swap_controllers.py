"""Tutorial 2: swap controllers on the same problem by changing one line.

Every controller runs on the same toy linear-Gaussian problem with the same budget n·k and
the same seed (so all of them draw the same Gaussian noise in their first round). Only the
``controller`` line differs. Prints a table (best reward, distance of the final mean to the
closed-form optimum μ*, effective sample size) and plots the best reward per iteration.

Run: ``python examples/swap_controllers.py [--out docs/img] [--num-samples 64 --num-iterations 6]``
(writes swap_controllers.png into ``--out``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ctrlalign as ca
from ctrlalign import theory

try:  # run as a script or imported as examples.swap_controllers
    from toy_gaussian import make_problem
except ImportError:  # pragma: no cover
    from examples.toy_gaussian import make_problem


def controllers(n: int, k: int, sigma: float = 0.7, lam: float = 0.5) -> dict[str, ca.Controller]:
    """The family, each with the same n, k and σ."""
    return {
        "BoN (plain, σ=0)": ca.BestOfN(num_samples=n, num_iterations=k, sigma=0.0),
        "BoN (prior p)": ca.BestOfN(num_samples=n, num_iterations=k, sigma=sigma),
        "softmax sampling": ca.SoftmaxSampling(num_samples=n, num_iterations=k, sigma=sigma, temperature=lam),
        "AISP α=0": ca.AISP(num_samples=n, num_iterations=k, sigma=sigma, temperature=lam, alpha=0.0),
        "AISP α=0.99": ca.AISP(num_samples=n, num_iterations=k, sigma=sigma, temperature=lam, alpha=0.99),
        "MPPI β=0.5": ca.MPPI(num_samples=n, num_iterations=k, sigma=sigma, temperature=lam, step_size=0.5),
        "CEM": ca.CEM(num_samples=n, num_iterations=k, sigma=sigma, elite_fraction=0.25),
    }


def main(out: Path | None = None, num_samples: int = 64, num_iterations: int = 6) -> dict:
    sigma, lam = 0.7, 0.5
    dyn, reward, x, A, target = make_problem()
    opt = theory.linear_gaussian_optimum(A, torch.eye(A.shape[0], dtype=torch.float64), target, x, sigma, lam)
    results = {}
    print(f"n = {num_samples}, k = {num_iterations} (budget {num_samples * num_iterations} per prompt)")
    print(f"{'controller':<18} {'best r':>8} {'‖U−μ*‖':>8} {'KL':>7} {'last ESS':>9}")
    for name, controller in controllers(num_samples, num_iterations, sigma, lam).items():
        result = ca.align(dyn, reward, controller, [x], seed=0)  # <- the one line that changes
        err = float((result.state.mean[0].flatten() - opt.mean).norm())
        last = result.trace[-1].diagnostics
        results[name] = {
            "best_reward": float(result.rewards[0]),
            "error": err,
            "kl": float(last.kl[0]),
            "ess": float(last.ess[0]),
            "curve": [float(rec.kept_reward[0]) for rec in result.trace],
        }
        print(f"{name:<18} {results[name]['best_reward']:>8.4f} {err:>8.3f} {results[name]['kl']:>7.2f} "
              f"{results[name]['ess']:>9.1f}")

    if out is not None:
        import matplotlib.pyplot as plt

        from ctrlalign.bench.plots import figure_style, save_figure

        with figure_style():
            fig, ax = plt.subplots(figsize=(9, 5))
            for name, res in results.items():
                ax.plot(range(1, num_iterations + 1), res["curve"], "o-", ms=4, label=name)
            ax.set_xlabel("iteration"), ax.set_ylabel("best reward so far")
            ax.set_title(f"same problem, same seed, n={num_samples}")
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
            save_figure(fig, out / "swap_controllers.png")
        print("wrote", out / "swap_controllers.png")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for the plot")
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--num-iterations", type=int, default=6)
    args = ap.parse_args()
    main(args.out, args.num_samples, args.num_iterations)
