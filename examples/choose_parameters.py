"""Tutorial 4: choose σ, λ and α on SmolLM2 from the diagnostics the trace reports.

1. The scale of σ: the control moves the logits by W v, whose spread per token is about σ·‖w‖
   with ‖w‖ the typical row norm of the output head. Measured here from the loaded model.
2. A σ sweep with AISP (sentiment reward): effective sample size (ESS) per iteration, ‖U‖ and
   KL(q_U‖p) = ‖U‖²/(2σ²) at the end, best reward.
3. λ from the first round's rewards: at Û = 0 the weights are softmax(r/λ) for every α, so
   ESS(λ) can be read off one round without new rollouts.

Cheap: one prompt, n = 4, k = 3, 16 new tokens (``--quick``: two σ values, k = 2, 8 tokens).
Writes choose_parameters.png into ``--out``.

Run: ``OMP_NUM_THREADS=1 python examples/choose_parameters.py [--out docs/img] [--quick]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ctrlalign as ca
from ctrlalign import theory

PROMPT = "Describe a rainy Monday."


def head_row_norm(lm: ca.CausalLM) -> float:
    """‖w‖: the median row norm of the output head W (vocab, d)."""
    return float(lm.head.weight.detach().float().norm(dim=1).median())


def main(out: Path | None = None, quick: bool = False, sigmas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0),
         num_samples: int = 4, num_iterations: int = 3, max_new_tokens: int = 16, alpha: float = 0.99,
         temperature: float = 0.1) -> dict:
    if quick:
        sigmas, num_iterations, max_new_tokens = (0.1, 0.3), 2, 8
    lm = ca.CausalLM.from_pretrained("default", sampling=ca.SamplingConfig(max_new_tokens=max_new_tokens))
    w = head_row_norm(lm)
    print(f"output head: ‖w‖ (median row norm) = {w:.2f}, d = {lm.hidden_size}")
    reward = ca.LexiconSentiment()
    lambdas = (0.01, 0.03, 0.1, 0.3, 1.0)
    rows = []
    print(f"{'σ':>6} {'σ·‖w‖':>7} {'ESS per iteration':>22} {'‖U‖':>7} {'KL':>9} {'τd/2·Σ1/ESS':>12} {'best r':>7}   ESS(λ) of round 1 for λ={lambdas}")
    for sigma in sigmas:
        ctrl = ca.AISP(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma,
                       temperature=temperature, alpha=alpha)
        res = ca.align(lm, reward, ctrl, [PROMPT], seed=0)
        trace = res.prompt_trace(0)
        # the first round's rewards: mean_reward and weights are in the trace; recompute
        # softmax(r/λ) ESS from the round-1 log-weights at λ (the weights at Û = 0 are softmax(r/λ))
        w1 = res.trace[0].info.weights[0].clamp_min(1e-300)  # softmax(r/λ0) with λ0 = temperature
        r1 = temperature * w1.log()  # rewards up to a constant (shift-invariant weights)
        ess_lam = [float(theory.effective_sample_size(theory.log_weights(r1[None], lam))[0]) for lam in lambdas]
        # ‖U‖ and KL of the final mean: the proposal the next round would use
        final_norm = float(res.state.mean[0].double().norm())
        final_kl = float(theory.gaussian_kl(res.state.mean[0].double(), sigma))
        # the noise floor: each update adds about τ·d/(2·ESS) nats whatever σ is (tutorial 4)
        tau_d = res.state.mean.shape[1] * res.state.mean.shape[2]
        floor = 0.5 * tau_d * sum(1.0 / t["ess"] for t in trace)
        row = {"sigma": sigma, "logit_noise": sigma * w, "ess": [t["ess"] for t in trace],
               "mean_norm": final_norm, "kl": final_kl, "kl_floor": floor, "best_reward": float(res.rewards[0]),
               "ess_by_lambda": dict(zip(lambdas, ess_lam))}
        rows.append(row)
        print(f"{sigma:>6.2f} {sigma * w:>7.2f} {[round(e, 2) for e in row['ess']]!s:>22} {final_norm:>7.1f} "
              f"{final_kl:>9.1f} {floor:>12.1f} {row['best_reward']:>7.3f}   {[round(e, 2) for e in ess_lam]}")

    if out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        for row in rows:
            ax[0].plot(range(1, len(row["ess"]) + 1), row["ess"], "o-", ms=3,
                       label=f"σ={row['sigma']} (σ·‖w‖={row['logit_noise']:.2f})")
        ax[0].set_ylim(0.9, num_samples + 0.1), ax[0].set_xlabel("iteration"), ax[0].set_ylabel(f"ESS (of n={num_samples})")
        ax[0].set_title("weight concentration per iteration"), ax[0].legend(fontsize=7)
        ax[1].loglog([r["sigma"] for r in rows], [max(r["kl"], 1e-3) for r in rows], "o-", label="measured KL")
        ax[1].loglog([r["sigma"] for r in rows], [r["kl_floor"] for r in rows], "k--", label="τd/2 · Σ 1/ESS")
        ax[1].legend(fontsize=7)
        ax[1].set_xlabel("σ"), ax[1].set_ylabel("KL(q_U‖p) after k iterations"), ax[1].set_title("control cost")
        fig.tight_layout()
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / "choose_parameters.png", dpi=100)
        plt.close(fig)
        print("wrote", out / "choose_parameters.png")
    return {"head_row_norm": w, "rows": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for the plot")
    ap.add_argument("--quick", action="store_true", help="two σ values, k = 2, 8 tokens")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0])
    ap.add_argument("--alpha", type=float, default=0.99)
    ap.add_argument("--temperature", type=float, default=0.1)
    args = ap.parse_args()
    main(args.out, args.quick, tuple(args.sigmas), alpha=args.alpha, temperature=args.temperature)
