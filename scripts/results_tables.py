"""Write the markdown tables of results that are not written by ``ctrlalign bench`` itself.

Reads the JSON a run wrote and writes ``benchmarks/results/NAME.md``; BENCHMARKS.md copies the
table, and the docs build (``scripts/mkdocs_hooks.py``) fails if the copy no longer matches.
Also draws the paper-regime overview figure (``docs/img/paper-regime-overview.png``).

    python scripts/results_tables.py            # every table below
"""

from __future__ import annotations

import json
from pathlib import Path

from ctrlalign.bench import BenchResult
from ctrlalign.bench.plots import plot_runs_overview
from ctrlalign.bench.report import goal_table, verdict_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

#: configuration of examples/learning_controllers.py → (space, λ, rollout) in words
LEARNING_ROWS = {
    "head-subspace": ("head-subspace (the `align` default)", "head's top-32 singular directions, shared over time (32)",
                      "adaptive, ESS = n/4"),
    "steer": ("steer", "head rows of the target's tokens", "adaptive, ESS = n/2"),
    "shared": ("shared", "one vector for all tokens (d = 576)", "adaptive, ESS = n/2"),
    "head-subspace-crn": ("head-subspace, sampled + common random numbers", "as head-subspace", "adaptive, ESS = n/4"),
    "head-subspace-sampled": ("head-subspace, sampled", "as head-subspace", "adaptive, ESS = n/4"),
    "paper": ("paper (AISP as published)", "per token (τ·d)", "fixed 0.3, α = 0.999"),
}


def learning_table() -> str:
    """From docs/snippets/learning_controllers.json (``scripts/docs_outputs.py learning_controllers``)."""
    data = json.loads((ROOT / "docs" / "snippets" / "learning_controllers.json").read_text())["result"]
    rows = ["| configuration | space (coordinates) | λ | rollout | round 1 | round k | rise | best kept (mean) "
            "| ESS (first round) | KL of the last proposal |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, (label, space, lam) in LEARNING_ROWS.items():
        r = data["configurations"].get(key)
        if r is None:
            continue
        rows.append(f"| {label} | {space} | {lam} | {r['rollout']} | {r['round_mean'][0]:.3f} | "
                    f"{r['round_mean'][-1]:.3f} | ×{r['rise']:.2f} | {r['best']:.3f} | {r['ess'][0]:.1f} | "
                    f"{r['kl'][-1]:,.0f} |")
    return "\n".join(rows) + "\n"


def batched_table() -> str:
    """From benchmarks/results/batched_aisp_cpu.json (``benchmarks/batched_aisp.py``)."""
    data = json.loads((RESULTS / "batched_aisp_cpu.json").read_text())
    st = data["settings"]
    labels = {"bon": f"Best-of-N (D = {st['D_bon']}, N = {st['N']})",
              "aisp-stream": f"Batched AISP (S = {st['S_stream']}, n = {st['n']}, k = {st['k']})",
              "aisp-plain": f"AISP without the scheduler (D = {st['D_bon']}, n = {st['n']})"}
    rows = ["| run | best s | tokens/s | / Best-of-N |", "|---|---|---|---|"]
    for key, label in labels.items():
        s = data["best_seconds"][key]
        rows.append(f"| {label} | {s:.2f} | {data['tokens_per_second'][key]:.0f} | "
                    f"{s / data['best_seconds']['bon']:.3f} |")
    return "\n".join(rows) + "\n"


#: stage-2 paper-regime runs (benchmarks/configs/paper-regime-*.yaml) → their name in the verdict
PAPER_REGIME_RUNS = {
    "paper-regime-reference": "reference similarity, SmolLM2",
    "paper-regime-steering": "steering (ocean), SmolLM2",
    "paper-regime-tradeoff": "−sentiment − 2·toxicity, SmolLM2",
    "paper-regime-gemma": "reference similarity, Gemma-3-270M",
}


def paper_regime_runs() -> dict[str, BenchResult]:
    """The finished (summarised) stage-2 paper-regime runs, by their name in the verdict."""
    runs = {label: BenchResult.load(RESULTS / f"{name}.json") for name, label in PAPER_REGIME_RUNS.items()
            if (RESULTS / f"{name}.json").exists()}
    return {k: r for k, r in runs.items() if r.summary}


def paper_regime_table() -> str:
    """From the stage-2 paper-regime runs' JSON (``ctrlalign bench benchmarks/configs/paper-regime-*.yaml``):
    the verdict per run and controller at N = 128, then the goal per run; draws the overview figure."""
    runs = paper_regime_runs()
    if runs:
        plot_runs_overview(runs, ROOT / "docs" / "img" / "paper-regime-overview.png")
    return verdict_table(runs, budget=128) + "\n\n" + goal_table(runs, min_budget=128) + "\n"


def main() -> None:
    for name, fn in (("learning_controllers", learning_table), ("batched_aisp_cpu", batched_table),
                     ("paper-regime-verdict", paper_regime_table)):
        path = RESULTS / f"{name}.md"
        path.write_text(fn())
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
