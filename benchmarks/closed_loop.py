"""Closed loop vs open loop at matched decoded tokens on a packaged model (SmolLM2-135M default).

Best-of-N (N = 8 … 128, read out of one pool), speculative rejection (n₀ = 64, 128, 256, stopping
half the rows at tokens 8 and 16; and an aggressive schedule), SMC (32 particles, adaptive twist,
a checkpoint every 8 tokens or at sentence ends) and the learning preset's AISP on MT-Bench
prompts with one of the paper-regime stages' rewards (``--reward``), each scored on the text so
far at checkpoints: ``steering`` (MiniLM similarity to a target description, the default),
``reference`` (MiniLM similarity to MT-Bench's reference answer; prompts without one are
skipped) or ``tradeoff`` (−VADER − 2·P(toxic)); ``--model gemma3-270m`` for the second packaged
model. Every run records its decoded tokens (stopped and resampled-away rows included, counted
by a wrapper around the dynamics), full and prefix reward calls and seconds; the table compares
each controller with Best-of-N at the same decoded tokens and at the same reward calls
(:func:`ctrlalign.bench.matched.matched_readout`: the Best-of-N curve interpolated in log budget,
clamped at its ends), paired over prompt × seed, with a 95% bootstrap interval over prompts.

Resumable: one JSON line per (controller, prompt, seed) in the output; a rerun skips finished
runs. Usage:

    OMP_NUM_THREADS=1 nice python benchmarks/closed_loop.py [--prompts 8] [--seeds 0 1] [--tokens 32] \
        [--reward steering|reference|tradeoff] [--model default|gemma3-270m]

The output defaults to ``benchmarks/results/closed_loop.jsonl`` for the steering reward on the
default model and ``closed_loop-REWARD-MODEL.jsonl`` otherwise.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

import ctrlalign as ca
from ctrlalign.bench.diversity import distinct_n
from ctrlalign.bench.heldout import heldout_scores
from ctrlalign.bench.matched import budget_of, matched_readout
from ctrlalign.bench.stats import mean_ci
from ctrlalign.build import build_reward
from ctrlalign.closedloop import SMC, SpeculativeRejection
from ctrlalign.config import PRESETS, ControllerConfig, RewardTerm, SpaceConfig
from ctrlalign.data import mt_bench
from ctrlalign.solve import CandidateRecorder
from ctrlalign.testing import CountingDynamics

#: the paper-regime stages' rewards (benchmarks/configs/paper-regime-*.yaml), as reward terms
REWARDS = {
    "steering": [{"name": "embedding", "options": {"target": "a story about the ocean, waves and sailing ships"}}],
    "reference": [{"name": "embedding", "options": {"references": "from_prompts"}}],
    "tradeoff": [{"name": "sentiment", "options": {"target": "negative"}}, {"name": "toxicity", "weight": 2.0}],
}
RESULTS = Path("benchmarks/results")


#: Best-of-N read out of one pool of this many samples per (prompt, seed): bon-N for N in BON
POOL = 128
BON = (8, 16, 32, 64, 128)


def sr(n0: int, schedule: list[tuple[int, ...]]) -> SpeculativeRejection:
    return SpeculativeRejection(num_samples=n0, schedule=schedule)


def controllers(T: int) -> dict:
    """label → (kind, factory). At T = 32 the closed-loop budgets match Best-of-32/64/128's
    decoded tokens (1,024 / 2,048 / 4,096): speculative rejection halving the rows at tokens 8
    and 16 from n₀ = 64, 128, 256 (``sr-n₀``), an aggressive one from n₀ = 128 keeping 32 at
    token 4 and 8 at token 16 (``sr-128a``, 1,024 tokens: Best-of-128's quarter), and SMC with 32
    particles (1,024 tokens), with a checkpoint every 8 tokens (``smc-32``) or at sentence ends
    (``smc-32s``); speculative rejection with regrowth (``srf-32``, ``srf-64``, ``srf-128w``)."""
    out: dict = {"bon-pool": ("pool", lambda: ca.BestOfN(num_samples=POOL, num_iterations=1, sigma=0.0))}
    for n0 in (64, 128, 256):
        out[f"sr-{n0}"] = ("closed", lambda n0=n0: sr(n0, [(8, n0 // 2), (16, n0 // 4)]))
    out["sr-128a"] = ("closed", lambda: sr(128, [(4, 32), (16, 8)]))
    # regrowth: keep the best prefixes and fork them back (srf-32: 1,024 tokens; srf-64: 2,048;
    # srf-128w: a wide first cut, 128 → 16 at token 4, then keep 4 and fork to 16: 960 tokens)
    for n0 in (32, 64):
        out[f"srf-{n0}"] = ("closed", lambda n0=n0: sr(n0, [(t, n0 // 4, n0) for t in (8, 16, 24)]))
    out["srf-128w"] = ("closed", lambda: sr(128, [(4, 16), (12, 4, 16), (20, 4, 16)]))
    # archive=False: the protocol as it started (the archive came later); at T = 32 rows seldom end early
    out["smc-32"] = ("closed", lambda: SMC(num_particles=32, block_size=8, temperature=0.05,
                                          twist_target_ess=0.5, resample_threshold=0.5, archive=False))
    # the same SMC with each prompt's checkpoints at sentence ends (b = 12 tokens apart at most)
    out["smc-32s"] = ("closed", lambda: SMC(num_particles=32, block_size=12, temperature=0.05,
                                           twist_target_ess=0.5, resample_threshold=0.5, archive=False,
                                           checkpoint_at="sentences"))
    out["aisp-learning"] = ("rounds", lambda: (ControllerConfig(**PRESETS["learning"]["controller"]).build(),
                                                SpaceConfig(**PRESETS["learning"]["space"]).build()))
    return out


def run_pool(lm, reward, factory, prompt, seed) -> list[dict]:
    """Best-of-N for every N in BON from one pool: bon-N keeps the best of the pool's first N
    samples; its tokens are theirs (lengths), its seconds the pool's prorated."""
    t0 = time.perf_counter()
    counting = ca.rewards.counting.CountingReward(reward)
    recorder = CandidateRecorder(["p"])
    ca.align(lm, counting, factory(), [prompt], seed=seed, callback=recorder)
    seconds = time.perf_counter() - t0
    cands = recorder.rows
    lengths = [c["length"] for c in cands]
    if sum(lengths) != int(lm.tokens.sum()):
        raise RuntimeError(f"pool lengths sum to {sum(lengths)} but the wrapper counted {int(lm.tokens.sum())}")
    rows = []
    for N in BON:
        best = max(range(N), key=lambda i: (cands[i]["reward"], -i))
        rows.append({"label": f"bon-{N}", "reward": cands[best]["reward"], "tokens": sum(lengths[:N]),
                     "full_calls": N, "prefix_calls": 0, "text": cands[best]["text"],
                     "seconds": seconds * N / POOL})
    return rows


#: rounds after which the learning preset's best-so-far is read out (n = 16, T = 32: Best-of-32/64/128's tokens)
ROUNDS = (2, 4, 8)


def run_rounds(lm, reward, factory, prompt, seed) -> list[dict]:
    """The ``learning`` preset (subspace AISP, greedy rollouts, n = 16, k = 8): its best-so-far
    after k' rounds for k' in ROUNDS is ``aisp-learning-k'`` (a k'-round run is the first k'
    rounds of the k-round one); tokens counted by the wrapper at each read-out."""
    t0 = time.perf_counter()
    counting = ca.rewards.counting.CountingReward(reward)
    controller, space = factory()
    rows: list[dict] = []

    def read(it) -> None:
        k = it.record.iteration
        if k in ROUNDS:
            rows.append({"label": f"aisp-learning-{k}", "reward": float(it.record.kept_reward[0]),
                         "tokens": int(lm.tokens.sum()), "full_calls": sum(counting.calls.values()),
                         "prefix_calls": 0, "text": it.kept[0].text, "seconds": time.perf_counter() - t0})

    ca.align(lm, counting, controller.replace(num_iterations=max(ROUNDS)), [prompt], space=space, seed=seed,
             callback=read)
    return rows


def run_closed(lm, reward, factory, prompt, seed) -> dict:
    t0 = time.perf_counter()
    counting = ca.rewards.counting.CountingReward(reward)
    res = factory().run(lm, counting, [prompt], seed=seed)
    return {"reward": float(res.rewards[0]), "tokens": int(lm.tokens.sum()), "tokens_reported": int(res.tokens[0]),
            "full_calls": sum(counting.calls.values()), "prefix_calls": sum(counting.prefix_calls.values()),
            "text": res.texts[0], "seconds": time.perf_counter() - t0, "trace": res.trace_of(0)}


def family(label: str) -> str:
    """The curve a label belongs to: its name and letters after the budget (``sr-128a`` → ``sr-a``,
    ``smc-32s`` → ``smc-s``)."""
    head, tail = label.rsplit("-", 1)
    letters = re.sub(r"\d", "", tail)
    return head + (f"-{letters}" if letters else "")


def label_order(label: str) -> tuple[str, int]:
    return family(label), int(re.sub(r"\D", "", label.rsplit("-", 1)[1]))


def as_records(rows: list[dict]) -> list[dict]:
    """The rows as :mod:`ctrlalign.bench.matched` records: Best-of-N's labels ``bon-N`` become the
    reference controller ``bon`` at budget N, every other label a controller of its own."""
    out = []
    for r in rows:
        bon = r["label"].startswith("bon-")
        out.append({**r, "controller": "bon" if bon else r["label"],
                    "budget": int(r["label"].rsplit("-", 1)[1]) if bon else 0})
    return out


def paired(values: list[tuple[float, str]]) -> str:
    """A paired mean with its 95% cluster-bootstrap interval over prompts, as text."""
    if len(values) < 2:
        return ""
    c = mean_ci([v for v, _ in values], method="bootstrap", clusters=[g for _, g in values])
    return f"{c.mean:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"


#: kept responses with a distinct-2 ratio below this count as degenerate repetition (an empty one too)
DEGENERATE = 0.7


def report(rows: list[dict], heldout: dict | None = None) -> str:
    """Markdown table: each controller against Best-of-N at matched decoded tokens and at matched
    reward calls (full + prefix) by :func:`ctrlalign.bench.matched.matched_readout` (a controller
    whose every run spent more than Best-of-{POOL} reads "beyond"), and against Best-of-{POOL};
    with ``heldout`` (label|prompt|seed → scores), the kept responses' published diversity,
    held-out fluency and degenerate count."""
    labels = sorted({r["label"] for r in rows}, key=label_order)
    key = {(r["label"], r["prompt_id"], r["seed"]): r for r in rows}
    pairs = sorted({(r["prompt_id"], r["seed"]) for r in rows})
    records = as_records(rows)
    matched = {axis: {m["controller"]: m for m in matched_readout(records, "bon", axis) if m["controller"] != "bon"}
               for axis in ("tokens", "calls")}
    curve_end = {axis: float(np.mean([budget_of(r, axis) for r in rows if r["label"] == f"bon-{POOL}"] or [math.inf]))
                 for axis in ("tokens", "calls")}
    head = ["controller", "runs", "tokens / prompt", "full calls", "prefix calls", "reward",
            "Δ vs Best-of-N, matched tokens [95% CI]", "Δ vs Best-of-N, matched calls", f"Δ vs Best-of-{POOL}",
            "degenerate"]
    if heldout:
        head[-1:-1] = ["diversity", "fluency [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lb in labels:
        rs = [key[(lb, p, s)] for p, s in pairs if (lb, p, s) in key]
        if not rs:
            continue
        cells = [lb, str(len(rs))] + [f"{np.mean([r[k] for r in rs]):.0f}" for k in ("tokens", "full_calls", "prefix_calls")]
        cells.append(f"{np.mean([r['reward'] for r in rs]):.3f}")
        for axis in ("tokens", "calls"):
            m = matched[axis].get(lb)
            if lb.startswith("bon-") or m is None:
                cells.append("")
            elif m["outside"] == m["n"]:  # every run spent more than the curve's end (or less than its start)
                cells.append(f"beyond Best-of-{POOL}'s {axis}" if m["spent"] > curve_end[axis]
                             else f"below Best-of-{BON[0]}'s {axis}")
            else:
                d = m["delta"]
                cells.append(f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
        top = [(r["reward"] - key[(f"bon-{POOL}", r["prompt_id"], r["seed"])]["reward"], r["prompt_id"])
               for r in rs if (f"bon-{POOL}", r["prompt_id"], r["seed"]) in key]
        cells.append("" if lb == f"bon-{POOL}" else paired(top))
        if heldout:
            h = [heldout.get(f"{lb}|{r['prompt_id']}|{r['seed']}") for r in rs]
            h = h if all(h) else []  # a label with unscored runs gets no held-out cells
            groups = [r["prompt_id"] for r in rs]
            cells.append(f"{np.mean([x['paper_diversity'] for x in h]):.3f}" if h else "")
            flu = [(x["fluency"], g) for x, g in zip(h, groups)
                   if x.get("fluency") is not None and math.isfinite(x["fluency"])]
            c = mean_ci([v for v, _ in flu], method="bootstrap", clusters=[g for _, g in flu]) if len(flu) > 1 else None
            cells.append(f"{c.mean:.2f} [{c.low:.2f}, {c.high:.2f}]" if c else "")
        cells.append(f"{sum(distinct_n(r['text'] or '', 2) < DEGENERATE for r in rs)}/{len(rs)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heldout_cache(rows: list[dict], path: Path, policy: str) -> dict:
    """Held-out scores of every kept response (published diversity, fluency under the other
    packaged LM), cached in ``path`` by label|prompt|seed; only missing ones are computed."""
    cache = json.loads(path.read_text()) if path.exists() else {}
    todo = [r for r in rows if f"{r['label']}|{r['prompt_id']}|{r['seed']}" not in cache]
    if todo:
        prompts = {it.id: it.text for it in mt_bench()}
        scores = heldout_scores([prompts[r["prompt_id"]] for r in todo], [r["text"] or "" for r in todo],
                                policy=policy, coherence=False)
        for i, r in enumerate(todo):
            cache[f"{r['label']}|{r['prompt_id']}|{r['seed']}"] = {
                "paper_diversity": scores["paper_diversity"][i], "fluency": scores["fluency"][i]}
        path.write_text(json.dumps(cache, indent=0, sort_keys=True))
    return cache


#: the rewards' names in the goal table
REWARD_NAMES = {"steering": "steering", "reference": "reference similarity", "tradeoff": "−sentiment − 2·toxicity"}


def read_table(path: Path) -> dict[str, dict[str, str]]:
    """A report table written by :func:`report`, as label → {column: cell}."""
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in path.read_text().splitlines()]
    return {cells[0]: dict(zip(lines[0], cells)) for cells in lines[2:]}


def goal_table(model: str, labels: list[str]) -> str:
    """The goal protocol's summary across the three rewards, from their report tables: per reward
    and label, Δ against Best-of-N at matched tokens and against Best-of-{POOL}, and the held-out
    columns beside those of the Best-of-N nearest in decoded tokens (in parentheses)."""
    head = ["reward", "controller", "runs", "tokens / prompt", "Δ vs Best-of-N, matched tokens",
            f"Δ vs Best-of-{POOL}", "diversity (Best-of-N)", "fluency (Best-of-N)", "degenerate (Best-of-N)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for reward, name in REWARD_NAMES.items():
        path = RESULTS / f"closed_loop-{reward}-{model}.md"
        rows = read_table(path) if path.exists() else {}
        bons = [f"bon-{n}" for n in BON if f"bon-{n}" in rows]
        for lb in (lb for lb in labels if lb in rows and bons):
            x = rows[lb]
            tokens = int(x["tokens / prompt"])
            bon = rows[min(bons, key=lambda b: abs(int(rows[b]["tokens / prompt"]) - tokens))]
            held = [f"{x.get(c, '')} ({bon.get(c, '')})" for c in ("diversity", "fluency [95% CI]", "degenerate")]
            lines.append("| " + " | ".join([name, lb, x["runs"], f"{tokens:,}", x["Δ vs Best-of-N, matched tokens [95% CI]"],
                                            x[f"Δ vs Best-of-{POOL}"], *held]) + " |")
    return "\n".join(lines)


#: the figure's legend per curve (:func:`family`)
LEGEND = {"bon": "Best-of-N", "smc": "SMC", "smc-s": "SMC, sentence checkpoints", "sr": "speculative rejection",
          "sr-a": "speculative rejection (aggressive)",
          "srf": "speculative rejection, regrowth", "srf-w": "speculative rejection, wide regrowth", "aisp-learning": "AISP, learning preset"}


def plot(rows: list[dict], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    families: dict[str, list] = {}
    for r in rows:
        families.setdefault(family(r["label"]), []).append(r)
    for fam, rs in sorted(families.items()):
        pts = {}
        for r in rs:
            pts.setdefault(r["label"], []).append((r["tokens"], r["reward"]))
        xy = sorted((np.mean([p[0] for p in v]), np.mean([p[1] for p in v])) for v in pts.values())
        ax.plot([p[0] for p in xy], [p[1] for p in xy], marker="o", label=LEGEND.get(fam, fam))
    ax.set_xscale("log")
    ticks = [32 * n for n in BON]
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("decoded tokens per prompt (log)")
    ax.set_ylabel("kept reward (mean over prompts × seeds)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
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
    ap.add_argument("--controllers", nargs="+", default=None, metavar="LABEL",
                    help="run only these of the controllers' labels (bon-pool, sr-64, ..., aisp-learning); "
                         "the report still reads every row in the output")
    ap.add_argument("--goal", nargs="+", default=None, metavar="LABEL",
                    help="only write the goal summary of these labels across the three rewards' reports "
                         "(closed_loop-goal-MODEL.md)")
    ap.add_argument("--heldout", action="store_true",
                    help="score the kept responses' diversity and held-out fluency (cached beside the output)")
    args = ap.parse_args()
    if args.goal:
        table = goal_table(args.model, args.goal)
        print(table)
        (RESULTS / f"closed_loop-goal-{args.model}.md").write_text(table + "\n")
        return
    if args.output is None:
        args.output = RESULTS / f"closed_loop-{args.reward}-{args.model}.jsonl"
    torch.set_num_threads(1)
    rows = [json.loads(x) for x in args.output.read_text().splitlines()] if args.output.exists() else []
    done = {(r["label"], r["prompt_id"], r["seed"]) for r in rows}
    if not args.report_only:
        # tokens decoded (alive steps of every row), counted by a wrapper, not by the controllers
        lm = CountingDynamics(ca.CausalLM.from_pretrained(args.model,
                                                          sampling=ca.SamplingConfig(max_new_tokens=args.tokens)))

        @functools.cache
        def greedy_lm() -> CountingDynamics:  # the learning preset's greedy rollouts
            sampling = ca.SamplingConfig(max_new_tokens=args.tokens, greedy=True)
            return CountingDynamics(ca.CausalLM.from_pretrained(args.model, sampling=sampling))
        items = [it for it in mt_bench() if args.reward != "reference" or it.reference][: args.prompts]
        reward = build_reward([RewardTerm(**t) for t in REWARDS[args.reward]], items)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        chosen = controllers(args.tokens)
        unknown = sorted(set(args.controllers or ()) - set(chosen))
        if unknown:
            ap.error(f"unknown controller label(s) {unknown}; choose from {sorted(chosen)}")
        chosen = {k: v for k, v in chosen.items() if args.controllers is None or k in args.controllers}
        for item in items:
            for seed in args.seeds:
                for label, (kind, factory) in chosen.items():
                    last = {"pool": f"bon-{POOL}", "rounds": f"{label}-{max(ROUNDS)}"}.get(kind, label)
                    if (last, item.id, seed) in done:
                        continue
                    if kind == "pool":
                        new = run_pool(lm, reward, factory, item.text, seed)
                    elif kind == "rounds":
                        new = run_rounds(greedy_lm(), reward, factory, item.text, seed)
                    else:
                        new = [dict(run_closed(lm, reward, factory, item.text, seed), label=label)]
                    with args.output.open("a") as f:
                        for row in new:
                            row.update(prompt_id=item.id, seed=seed, T=args.tokens)
                            f.write(json.dumps(row) + "\n")
                    rows.extend(new)
                    for row in new[-1:]:
                        print(f"{row['label']:8s} {item.id:>6} seed {seed}: reward {row['reward']:.3f}, "
                              f"{row['tokens']} tokens, {row['seconds']:.1f}s", flush=True)
    cache = args.output.with_suffix(".heldout.json")
    if args.heldout:
        heldout = heldout_cache(rows, cache, args.model)
    else:  # keep the held-out columns of an earlier --heldout report (runs not yet scored get none)
        heldout = json.loads(cache.read_text()) if cache.exists() else None
    table = report(rows, heldout)
    print(table)
    args.output.with_suffix(".md").write_text(table + "\n")
    model = {"default": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270M"}.get(args.model, args.model)
    plot(rows, args.output.with_suffix(".png"), f"{model}, {args.reward} reward: matched decoded tokens")


if __name__ == "__main__":
    main()
