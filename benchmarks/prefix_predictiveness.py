"""How well the reward of a prefix predicts the reward of the finished response (issue 20's "why").

Speculative rejection and SMC decide on partial responses: a row is stopped at token t because
its prefix score r(x, y_{1:t}) is low. That pays only if the prefix score ranks the rows as their
final rewards will. For each paper-regime reward (the goal protocol's three, on its MT-Bench
prompts, SmolLM2-135M, T = 32) this samples n = 64 responses per prompt from the base model,
scores every row's prefix at t ∈ {4, 8, 16} and the finished response, and reports per t, averaged
over prompts:

* ``spearman``: the rank correlation between prefix score at t and final reward;
* ``top-8 kept``: of the 8 rows with the best final rewards, the share that a cut keeping the
  better half by prefix score at t would have kept (0.5 for a prefix score that knows nothing,
  1 for a perfect one);
* ``best kept``: the share of prompts whose best final row survives that cut.

Usage::

    OMP_NUM_THREADS=1 nice python benchmarks/prefix_predictiveness.py [--prompts 8] [--samples 64]

Writes ``benchmarks/results/prefix_predictiveness.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from closed_loop import REWARDS

import ctrlalign as ca
from ctrlalign.build import build_reward
from ctrlalign.closedloop.base import start_run
from ctrlalign.closedloop.particles import Particles
from ctrlalign.config import RewardTerm
from ctrlalign.data import mt_bench

RESULTS = Path(__file__).resolve().parent / "results"
CHECKPOINTS = (4, 8, 16)


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0…m−1 of x (ties broken by order: the rewards here are continuous)."""
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def prompt_scores(lm, reward, prompt: str, n: int, seed: int) -> dict[int, np.ndarray]:
    """Prefix scores at each checkpoint and the final rewards (key T) of n base-model rows."""
    run = start_run("prefix", lm, reward, [prompt], seed=seed, context=None, scores_prefixes=lambda T: True)
    rows = Particles(run.dynamics, run.context, run.prompts, run.cost, n, run.generators)
    out, t0 = {}, 0
    for t in (*CHECKPOINTS, rows.horizon):
        rows.advance(t0, t)
        out[t] = rows.score(rows.outcomes(), prefix=t < rows.horizon)[0].numpy()
        t0 = t
    return out


def summarise(scores: list[dict[int, np.ndarray]], T: int) -> dict[int, dict[str, float]]:
    out = {}
    for t in CHECKPOINTS:
        rho, top, best = [], [], []
        for s in scores:
            final, pre = s[T], s[t]
            kept = set(np.argsort(-pre, kind="stable")[: len(pre) // 2].tolist())
            top8 = np.argsort(-final, kind="stable")[:8].tolist()
            rho.append(spearman(pre, final))
            top.append(np.mean([i in kept for i in top8]))
            best.append(float(top8[0] in kept))
        out[t] = {"spearman": float(np.nanmean(rho)), "top8_kept": float(np.mean(top)), "best_kept": float(np.mean(best))}
    return out


def report(res: dict) -> str:
    lines = ["| reward | t | Spearman(prefix at t, final) | top-8 kept by a half cut at t | best row kept |",
             "|---|---|---|---|---|"]
    for reward, per_t in res["rewards"].items():
        for t, v in per_t.items():
            lines.append(f"| {reward} | {t} | {v['spearman']:+.2f} | {v['top8_kept']:.2f} | {v['best_kept']:.2f} |")
    return "\n".join(lines) + (f"\n\n- {res['prompts']} prompts × {res['samples']} base-model rows, T = {res['T']}, "
                               f"seed {res['seed']}; a prefix score that knows nothing keeps 0.50 of the top 8\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lm = ca.CausalLM.from_pretrained("default", sampling=ca.SamplingConfig(max_new_tokens=32))
    res = {"prompts": args.prompts, "samples": args.samples, "T": 32, "seed": args.seed, "rewards": {}}
    for name, terms in REWARDS.items():
        items = [it for it in mt_bench() if name != "reference" or it.reference][: args.prompts]
        reward = build_reward([RewardTerm(**t) for t in terms], items)
        scores = [prompt_scores(lm, reward, it.text, args.samples, args.seed) for it in items]
        res["rewards"][name] = summarise(scores, 32)
        print(name, res["rewards"][name], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prefix_predictiveness.json").write_text(json.dumps(res, indent=1) + "\n")
    table = report(res)
    (RESULTS / "prefix_predictiveness.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
