"""Tutorial 7: closing the loop — act on partial responses, compare at matched decoded tokens.

A synthetic token system small enough to enumerate (K = 4 tokens, T = 6 steps: 4,096 sequences)
whose reward is the mean per-token value of the response plus sequence-level noise, and whose
prefix score is the mean value of the prefix so far (an informative but imperfect predictor of
the final reward). Best-of-N, speculative rejection, twisted SMC and (open loop, learning a
per-token control over 4 rounds) AISP each run on 16 random prompts × 4 seeds at several sizes;
the table and the figure place each on (decoded tokens per prompt, kept reward), where tokens
count every row's steps, stopped and resampled-away rows included, counted by a wrapper around
the system. The exact optimum under the target p·exp(r/λ) is computed by enumeration.

Run: ``python examples/closing_the_loop.py [--out docs/img]`` (writes closing_the_loop.png).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import ctrlalign as ca
from ctrlalign.closedloop import SMC, SpeculativeRejection
from ctrlalign.rewards.counting import CountingReward
from ctrlalign.testing import CountingDynamics

K, T, DIM = 4, 6, 3


def make_chain(seed: int = 0, num_prompts: int = 16, noise: float = 0.3):
    """(dynamics, reward with a prefix table, prompts): per-token values a (K,); the reward of a
    sequence is mean_t a[y_t] + noise·ε(y), its prefix score mean_{s≤t} a[y_s]."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(K, DIM, generator=g, dtype=torch.float64)
    b = torch.randn(K, generator=g, dtype=torch.float64)
    E = torch.randn(K + 1, DIM, generator=g, dtype=torch.float64)
    a = torch.randn(K, generator=g, dtype=torch.float64).tolist()
    seqs = list(itertools.product(range(K), repeat=T))
    table = {s: sum(a[y] for y in s) / T + noise * float(torch.randn((), generator=g)) for s in seqs}
    prefixes = {s[:t]: sum(a[y] for y in s[:t]) / t for s in seqs for t in range(1, T)}
    prompts = [torch.randn(T, DIM, generator=g, dtype=torch.float64) for _ in range(num_prompts)]
    dyn = ca.SoftmaxHead(W, b, T, embeddings=E)
    return dyn, ca.TableReward(table, prefix_table=prefixes), prompts


def controllers(sizes: tuple[int, ...]) -> dict[str, tuple[str, object]]:
    """label → (family, controller): closed-loop ones have ``run``, AISP goes through
    :func:`ctrlalign.align`. Plain Best-of-N is SMC with one checkpoint and the argmax read-out."""
    out = {}
    for n in sizes:
        out[f"Best-of-{n}"] = ("Best-of-N", SMC(num_particles=n, block_size=T, resample_threshold=0.0))
        out[f"SR n0={2 * n}"] = ("speculative rejection",
                                 SpeculativeRejection(num_samples=2 * n, schedule=[(2, n), (4, max(1, n // 2))]))
        out[f"SMC n={n}"] = ("SMC", SMC(num_particles=n, block_size=2, temperature=0.1, twist_target_ess=0.5))
        out[f"AISP n={n} k=4"] = ("AISP", ca.AISP(num_samples=n, num_iterations=4, sigma=2.0, target_ess=0.25))
    return out


def run_once(ctrl, dyn, reward, prompts, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kept rewards, tokens, prefix calls, full calls), each (D,), of one run; tokens and calls
    counted outside the controller (a dynamics wrapper, a reward wrapper)."""
    counting_dyn, counting_reward = CountingDynamics(dyn), CountingReward(reward)
    if isinstance(ctrl, ca.Controller):
        res = ca.align(counting_dyn, counting_reward, ctrl, prompts, seed=seed)
    else:
        res = ctrl.run(counting_dyn, counting_reward, prompts, seed=seed)
    calls = [torch.tensor([float(c.get(CountingReward.key(p), 0)) for p in prompts])
             for c in (counting_reward.prefix_calls, counting_reward.calls)]
    return res.rewards.double(), counting_dyn.tokens.double(), *calls


def main(out: Path | None = None, sizes: tuple[int, ...] = (2, 4, 8, 16), seeds: int = 4, num_prompts: int = 16) -> dict:
    dyn, reward, prompts = make_chain(num_prompts=num_prompts)
    rows = {}
    print(f"{'controller':<14} {'tokens':>7} {'prefix calls':>13} {'full calls':>11} {'reward':>8}")
    for label, (family, ctrl) in controllers(sizes).items():
        rewards, tokens, prefix, full = [], [], [], []
        for seed in range(seeds):
            kept, used, prefix_calls, full_calls = run_once(ctrl, dyn, reward, prompts, seed)
            rewards.append(float(kept.mean()))
            tokens.append(float(used.mean()))
            prefix.append(float(prefix_calls.mean()))
            full.append(float(full_calls.mean()))
        rows[label] = {"family": family, "reward": sum(rewards) / seeds, "tokens": sum(tokens) / seeds,
                       "prefix_calls": sum(prefix) / seeds, "full_calls": sum(full) / seeds}
        r = rows[label]
        print(f"{label:<14} {r['tokens']:>7.0f} {r['prefix_calls']:>13.0f} {r['full_calls']:>11.0f} {r['reward']:>8.3f}")
    best = max(reward.table.values())
    print(f"the best of all {K ** T:,} sequences: {best:.3f}")
    if out is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for family in ("Best-of-N", "speculative rejection", "SMC", "AISP"):
            pts = sorted((r["tokens"], r["reward"]) for r in rows.values() if r["family"] == family)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=family)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("decoded tokens per prompt")
        ax.set_ylabel("kept response's reward (mean)")
        ax.set_title(f"Matched tokens on a {K}-token, T = {T} chain")
        ax.legend()
        fig.tight_layout()
        Path(out).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(out) / "closing_the_loop.png", dpi=200)
        plt.close(fig)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for closing_the_loop.png")
    args = ap.parse_args()
    main(args.out)
