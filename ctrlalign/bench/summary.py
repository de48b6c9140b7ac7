"""Aggregates of a benchmark result: one summary row per (controller, N), and paired
differences against the baselines.

Confidence intervals are over prompts × seeds with prompts as clusters
(:func:`~ctrlalign.bench.stats.mean_ci`, :func:`~ctrlalign.bench.stats.paired_diff_ci`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import stats
from .result import BenchResult

__all__ = ["compare", "summarize"]

#: the record fields averaged in every summary row
_FIELDS = ["reward", "judge", "control_kl", "mean_norm", "token_kl", "diversity", "diversity_across_seeds",
           "coherence", "fluency", "coherence_mpnet", "paper_diversity", "length", "seconds_per_prompt", "tokens"]


def _vals(recs: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in recs if r.get(key) is not None]


def summarize(result: BenchResult, method: str = "bootstrap") -> list[dict[str, Any]]:
    """One row per (controller, N): mean of every metric, 95% CIs of reward and judge.

    CIs are over prompts × seeds with prompts as clusters (the seeds of one prompt move
    together in the bootstrap; the t interval is over per-prompt means).
    """
    rows = []
    runs_by_ctrl: dict[str, list[dict[str, Any]]] = {}
    for run in result.runs:
        runs_by_ctrl.setdefault(run["controller"], []).append(run)
    for c in result.controllers():
        for N in result.budgets():
            recs = result.select(c, N)
            if not recs:
                continue
            row: dict[str, Any] = {"controller": c, "budget": N, "n": len(recs),
                                   "num_samples": recs[0]["num_samples"], "num_iterations": recs[0]["num_iterations"]}
            for key in _FIELDS:
                v = _vals(recs, key)
                row[key] = sum(v) / len(v) if v else None
            for key in ("reward", "judge"):
                sel = [r for r in recs if r.get(key) is not None]
                if sel:
                    row[f"{key}_ci"] = stats.mean_ci([r[key] for r in sel], method=method,
                                                       clusters=[r["prompt_id"] for r in sel]).to_dict()
            calls = {r["reward_calls"] for r in recs}
            sel = [r for r in recs if r.get("fluency") is not None]
            if sel:
                row["fluency_ci"] = stats.mean_ci([r["fluency"] for r in sel], method=method,
                                                    clusters=[r["prompt_id"] for r in sel]).to_dict()
            row["reward_calls_per_prompt"] = calls.pop() if len(calls) == 1 else sorted(calls)
            runs = runs_by_ctrl.get(c, [])
            tok = sum(r["tokens"] for r in runs)
            sec = sum(r["seconds"] for r in runs)
            row["tokens_per_second"] = tok / sec if sec > 0 else None
            row["peak_rss_mb"] = max((r["peak_rss_mb"] for r in runs), default=None)
            cuda = [r["peak_cuda_mb"] for r in runs if r.get("peak_cuda_mb") is not None]
            row["peak_cuda_mb"] = max(cuda) if cuda else None
            rows.append(row)
    return rows


def compare(result: BenchResult, baselines: Sequence[str], method: str = "bootstrap") -> list[dict[str, Any]]:
    """Paired differences (controller − baseline) of reward and judge, per N, paired by (prompt, seed)."""
    out = []
    idx = {(r["controller"], r["budget"], r["seed"], r["prompt_id"]): r for r in result.records}
    baselines = list(baselines)
    for bi, b in enumerate(baselines):
        for c in result.controllers():
            if c == b or (c in baselines and baselines.index(c) < bi):
                continue  # each pair of baselines once (later − earlier is not repeated)
            for N in result.budgets():
                pairs = [(r, idx.get((b, N, r["seed"], r["prompt_id"]))) for r in result.select(c, N)]
                pairs = [(x, y) for x, y in pairs if y is not None]
                if not pairs:
                    continue
                row: dict[str, Any] = {"controller": c, "baseline": b, "budget": N, "n": len(pairs)}
                for key in ("reward", "judge"):
                    pk = [(x[key], y[key]) for x, y in pairs if x.get(key) is not None and y.get(key) is not None]
                    if pk:
                        clusters = [x["prompt_id"] for x, y in pairs if x.get(key) is not None and y.get(key) is not None]
                        ci = stats.paired_diff_ci([a for a, _ in pk], [bb for _, bb in pk], method=method,
                                                    clusters=clusters)
                        row[f"{key}_diff"] = ci.to_dict()
                        row[f"{key}_win_rate"] = sum(a > bb for a, bb in pk) / len(pk)
                        row[f"{key}_tie_rate"] = sum(a == bb for a, bb in pk) / len(pk)
                out.append(row)
    return out
