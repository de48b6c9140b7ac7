"""Closed loop vs open loop at matched decoded tokens on a packaged model (SmolLM2-135M default).

Best-of-N (N = 8, 16, 32), SMC (n = 16, 32 particles, a checkpoint every 8 tokens, adaptive twist)
and speculative rejection (n₀ = 32, 64, stopping half the rows at tokens 8 and 16) on MT-Bench
prompts with one of the paper-regime stages' rewards (``--reward``), each scored on the text so
far at checkpoints: ``steering`` (MiniLM similarity to a target description, the default),
``reference`` (MiniLM similarity to MT-Bench's reference answer; prompts without one are
skipped) or ``tradeoff`` (−VADER − 2·P(toxic)); ``--model gemma3-270m`` for the second packaged
model. Every run records its decoded tokens (stopped and resampled-away rows included, counted
by a wrapper around the dynamics), full and prefix reward calls and seconds; the table compares
each controller with Best-of-N at the same decoded tokens (the Best-of-N curve interpolated in
log tokens), paired over prompt × seed, with a 95% bootstrap interval over prompts.

Resumable: one JSON line per (controller, prompt, seed) in the output; a rerun skips finished
runs. Usage:

    OMP_NUM_THREADS=1 nice python benchmarks/closed_loop.py [--prompts 8] [--seeds 0 1] [--tokens 32] \
        [--reward steering|reference|tradeoff] [--model default|gemma3-270m]

The output defaults to ``benchmarks/results/closed_loop.jsonl`` for the steering reward on the
default model and ``closed_loop-REWARD-MODEL.jsonl`` otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

import ctrlalign as ca
from ctrlalign.bench.stats import mean_ci
from ctrlalign.build import build_reward
from ctrlalign.closedloop import SMC, SpeculativeRejection
from ctrlalign.config import RewardTerm
from ctrlalign.data import mt_bench
from ctrlalign.testing import CountingDynamics

#: the paper-regime stages' rewards (benchmarks/configs/paper-regime-*.yaml), as reward terms
REWARDS = {
    "steering": [{"name": "embedding", "options": {"target": "a story about the ocean, waves and sailing ships"}}],
    "reference": [{"name": "embedding", "options": {"references": "from_prompts"}}],
    "tradeoff": [{"name": "sentiment", "options": {"target": "negative"}}, {"name": "toxicity", "weight": 2.0}],
}
RESULTS = Path("benchmarks/results")


def controllers(T: int) -> dict:
    """label → (kind, factory)."""
    out = {f"bon-{N}": ("open", lambda N=N: ca.BestOfN(num_samples=N, num_iterations=1, sigma=0.0)) for N in (8, 16, 32)}
    for n in (16, 32):
        out[f"smc-{n}"] = ("closed", lambda n=n: SMC(num_particles=n, block_size=8, temperature=0.05,
                                                       twist_target_ess=0.5, resample_threshold=0.5))
    for n0 in (32, 64):
        out[f"sr-{n0}"] = ("closed", lambda n0=n0: SpeculativeRejection(num_samples=n0,
                                                                         schedule=[(8, n0 // 2), (16, n0 // 4)]))
    return out


def run_one(lm, reward, kind, factory, prompt, seed) -> dict:
    t0 = time.perf_counter()
    if kind == "open":
        counting = ca.rewards.counting.CountingReward(reward)
        res = ca.align(lm, counting, factory(), [prompt], seed=seed)
        return {"reward": float(res.rewards[0]), "full_calls": sum(counting.calls.values()),
                "prefix_calls": sum(counting.prefix_calls.values()), "text": res.texts[0],
                "seconds": time.perf_counter() - t0}
    counting = ca.rewards.counting.CountingReward(reward)
    res = factory().run(lm, counting, [prompt], seed=seed)
    return {"reward": float(res.rewards[0]), "tokens_reported": int(res.tokens[0]),
            "full_calls": sum(counting.calls.values()), "prefix_calls": sum(counting.prefix_calls.values()),
            "text": res.texts[0], "seconds": time.perf_counter() - t0, "trace": [c.summary(0) for c in res.trace]}


def report(rows: list[dict]) -> str:
    """Markdown table: each controller against Best-of-N interpolated at its decoded tokens."""
    labels = sorted({r["label"] for r in rows}, key=lambda s: (s.split("-")[0], int(s.split("-")[1])))
    key = {(r["label"], r["prompt_id"], r["seed"]): r for r in rows}
    pairs = sorted({(r["prompt_id"], r["seed"]) for r in rows})
    bons = [lb for lb in labels if lb.startswith("bon-")]
    lines = ["| controller | tokens / prompt | full calls | prefix calls | reward | Δ vs Best-of-N at matched tokens [95% CI] |",
             "|---|---|---|---|---|---|"]
    for lb in labels:
        rs = [key[(lb, p, s)] for p, s in pairs if (lb, p, s) in key]
        if not rs:
            continue
        deltas, groups = [], []
        for r in rs:
            curve = sorted((key[(b, r["prompt_id"], r["seed"])]["tokens"], key[(b, r["prompt_id"], r["seed"])]["reward"])
                           for b in bons if (b, r["prompt_id"], r["seed"]) in key)
            if len(curve) < 2 or lb.startswith("bon-"):
                continue
            xs, ys = np.log([c[0] for c in curve]), [c[1] for c in curve]
            deltas.append(r["reward"] - float(np.interp(math.log(r["tokens"]), xs, ys)))
            groups.append(r["prompt_id"])
        ci = ""
        if deltas:
            c = mean_ci(deltas, method="bootstrap", clusters=groups)
            ci = f"{c.mean:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"
        lines.append(f"| {lb} | {np.mean([r['tokens'] for r in rs]):.0f} | {np.mean([r['full_calls'] for r in rs]):.0f} "
                     f"| {np.mean([r['prefix_calls'] for r in rs]):.0f} | {np.mean([r['reward'] for r in rs]):.3f} | {ci} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    families: dict[str, list] = {}
    for r in rows:
        families.setdefault(r["label"].split("-")[0], []).append(r)
    for fam, rs in sorted(families.items()):
        pts = {}
        for r in rs:
            pts.setdefault(r["label"], []).append((r["tokens"], r["reward"]))
        xy = sorted((np.mean([p[0] for p in v]), np.mean([p[1] for p in v])) for v in pts.values())
        ax.plot([p[0] for p in xy], [p[1] for p in xy], marker="o", label={"bon": "Best-of-N", "smc": "SMC",
                                                                         "sr": "speculative rejection"}[fam])
    ax.set_xscale("log")
    ax.set_xlabel("decoded tokens per prompt (log)")
    ax.set_ylabel("kept reward (mean over prompts × seeds)")
    ax.set_title("SmolLM2-135M, steering reward: matched decoded tokens", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=200)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--tokens", type=int, default=32, help="T, new tokens per response")
    ap.add_argument("--reward", choices=sorted(REWARDS), default="steering")
    ap.add_argument("--model", default="default", help="a packaged model: default (SmolLM2-135M) or gemma3-270m")
    ap.add_argument("--output", type=Path, default=None)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.output is None:
        suffix = "" if (args.reward, args.model) == ("steering", "default") else f"-{args.reward}-{args.model}"
        args.output = RESULTS / f"closed_loop{suffix}.jsonl"
    torch.set_num_threads(1)
    rows = [json.loads(x) for x in args.output.read_text().splitlines()] if args.output.exists() else []
    done = {(r["label"], r["prompt_id"], r["seed"]) for r in rows}
    if not args.report_only:
        # tokens decoded (alive steps of every row), counted by a wrapper, not by the controllers
        lm = CountingDynamics(ca.CausalLM.from_pretrained(args.model,
                                                          sampling=ca.SamplingConfig(max_new_tokens=args.tokens)))
        items = [it for it in mt_bench() if args.reward != "reference" or it.reference][: args.prompts]
        reward = build_reward([RewardTerm(**t) for t in REWARDS[args.reward]], items)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        for label, (kind, factory) in controllers(args.tokens).items():
            for item in items:
                for seed in args.seeds:
                    if (label, item.id, seed) in done:
                        continue
                    row = run_one(lm, reward, kind, factory, item.text, seed)
                    row["tokens"] = int(lm.tokens.sum())  # one prompt per run; reset by its prepare
                    row.update(label=label, prompt_id=item.id, seed=seed, T=args.tokens)
                    with args.output.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    rows.append(row)
                    print(f"{label:8s} {item.id:>6} seed {seed}: reward {row['reward']:.3f}, {row['tokens']} tokens, "
                          f"{row['seconds']:.1f}s", flush=True)
    print(report(rows))
    args.output.with_suffix(".md").write_text(report(rows) + "\n")
    plot(rows, args.output.with_suffix(".png"))


if __name__ == "__main__":
    main()
