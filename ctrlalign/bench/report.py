"""Markdown tables of a :class:`~ctrlalign.bench.result.BenchResult`, for docs and BENCHMARKS.md.

* :func:`results_table`: one row per (controller, N) — reward [95% CI], judge [95% CI],
  KL(q_U‖p), ‖U‖, token log-ratio, diversity, coherence, time, tokens/s, reward calls.
* :func:`comparison_table`: paired differences controller − baseline per N, with CIs and
  win rates.
* :func:`sweep_table`: the σ² × λ × α grid at one N, sorted by reward.
* :func:`scale_table`: σ, σ² and the logit-noise scale σ·‖w‖ per controller.
* :func:`iteration_table`: a controller's per-iteration diagnostics (ESS, ‖U‖, KL, rewards).
* :func:`frontier_table`: each controller's (KL, reward) per N against Best-of-N's frontier.
* :func:`verdict_table`, :func:`goal_table`: several runs (rewards, models) side by side at one
  N: what each controller gains over each Best-of-N baseline, at what KL and fluency, and
  whether the paper-regime goal is met per run.
* :func:`markdown_report`: all of them, with the goal check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from . import matched, verdict
from .plots import matched_reference, parse_sweep_label, plain_baseline

__all__ = [
    "comparison_table",
    "fmt_ci",
    "frontier_table",
    "heldout_table",
    "iteration_table",
    "markdown_report",
    "matched_table",
    "results_table",
    "scale_table",
    "sweep_table",
    "verdict_table",
    "goal_table",
]


def _get(result, name: str):
    return getattr(result, name) if hasattr(result, name) else result[name]


def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, (list, tuple)):
        return ",".join(str(v) for v in x)
    if isinstance(x, int):
        return str(x)
    return f"{x:.{nd}f}"


def fmt_ci(ci: dict | None, nd: int = 3, signed: bool = False) -> str:
    """``mean [low, high]``."""
    if not ci:
        return "–"
    sign = "+" if signed else ""
    return f"{ci['mean']:{sign}.{nd}f} [{ci['low']:{sign}.{nd}f}, {ci['high']:{sign}.{nd}f}]"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def results_table(result, controllers: Sequence[str] | None = None, budgets: Sequence[int] | None = None,
                  include_sweep: bool = False) -> str:
    """One row per (controller, N)."""
    rows = []
    for r in _get(result, "summary"):
        if controllers is not None and r["controller"] not in controllers:
            continue
        if not include_sweep and controllers is None and parse_sweep_label(r["controller"]) is not None:
            continue
        if budgets is not None and r["budget"] not in budgets:
            continue
        rows.append([
            r["controller"], r["budget"], f"{r['num_samples']}×{r['num_iterations']}",
            fmt_ci(r.get("reward_ci")), fmt_ci(r.get("judge_ci")),
            _f(r.get("control_kl"), 1), _f(r.get("mean_norm"), 1), _f(r.get("token_kl"), 1),
            _f(r.get("diversity")), _f(r.get("diversity_across_seeds")), _f(r.get("coherence")),
            _f(r.get("seconds_per_prompt"), 1), _f(r.get("tokens_per_second"), 0), _f(r.get("reward_calls_per_prompt")),
        ])
    header = ["controller", "N", "n×k", "reward [95% CI]", "held-out judge [95% CI]", "KL(q_U‖p)", "‖U‖",
              "token log-ratio", "div.", "div. across seeds", "coherence", "s/prompt", "tok/s", "reward calls"]
    return _table(header, rows)


def heldout_table(result) -> str:
    """One row per (controller, N) with the held-out scores nothing optimises (``heldout: true``):
    fluency (mean token log-likelihood under another LM than the policy) with its 95% CI, MPNet
    coherence and the published diversity. Empty when the run has none."""
    rows = []
    for r in _get(result, "summary"):
        if r.get("fluency") is None and r.get("coherence_mpnet") is None:
            continue
        rows.append([r["controller"], r["budget"], fmt_ci(r.get("fluency_ci")), _f(r.get("coherence_mpnet")),
                     _f(r.get("paper_diversity"))])
    if not rows:
        return ""
    model = _get(result, "meta").get("fluency_model") or "another LM"
    header = ["controller", "N", f"fluency: mean log p per token under {model} [95% CI]", "coherence (MPNet)",
              "diversity (published)"]
    return _table(header, rows)


def comparison_table(result, controllers: Sequence[str] | None = None, baselines: Sequence[str] | None = None,
                     budgets: Sequence[int] | None = None) -> str:
    """Paired differences controller − baseline (same prompt, same seed)."""
    rows = []
    for r in _get(result, "comparisons"):
        if controllers is not None and r["controller"] not in controllers:
            continue
        if controllers is None and parse_sweep_label(r["controller"]) is not None:
            continue
        if baselines is not None and r["baseline"] not in baselines:
            continue
        if budgets is not None and r["budget"] not in budgets:
            continue
        rd = r.get("reward_diff")
        jd = r.get("judge_diff")
        rows.append([
            r["controller"], r["baseline"], r["budget"], fmt_ci(rd, signed=True),
            "yes" if rd and rd["low"] > 0 else ("worse" if rd and rd["high"] < 0 else "no"),
            _f(r.get("reward_win_rate"), 2), fmt_ci(jd, signed=True),
            "–" if not jd else ("better" if jd["low"] > 0 else ("worse" if jd["high"] < 0 else "n.s.")),
        ])
    header = ["controller", "baseline", "N", "Δ reward [95% CI]", "CI > 0", "win rate", "Δ judge [95% CI]", "judge"]
    return _table(header, rows)


def sweep_table(result, key: str = "reward") -> str:
    """The AISP grid (entries labelled ``aisp[s2=..,lam=..,a=..]``) at its largest N, best first."""
    meta = _get(result, "meta")
    rows = []
    sweep_rows = [r for r in _get(result, "summary") if parse_sweep_label(r["controller"]) is not None]
    N = max((r["budget"] for r in sweep_rows), default=None)
    for r in sweep_rows:
        p = parse_sweep_label(r["controller"])
        if r["budget"] != N:
            continue
        c = meta.get("controllers", {}).get(r["controller"], {})
        rows.append((r.get(key) or float("-inf"), [
            _f(p[0], 2), _f(c.get("sigma"), 3), _f(c.get("logit_noise_scale"), 2), _f(p[1], 2), _f(p[2], 3),
            r["budget"], fmt_ci(r.get("reward_ci")), fmt_ci(r.get("judge_ci")), _f(r.get("mean_norm"), 1),
            _f(r.get("control_kl"), 1), _f(r.get("token_kl"), 1), _f(r.get("diversity")),
        ]))
    rows.sort(key=lambda x: -x[0])
    header = ["σ²", "σ", "σ·‖w‖", "λ", "α", "N", "reward [95% CI]", "judge [95% CI]", "‖U‖", "KL(q_U‖p)",
              "token log-ratio", "div."]
    return _table(header, [r for _, r in rows])


def scale_table(result) -> str:
    """σ, σ² and the logit-noise scale σ·‖w‖ of every (non-sweep) controller."""
    meta = _get(result, "meta")
    rows = []
    for k, c in meta.get("controllers", {}).items():
        if parse_sweep_label(k) is not None:
            continue
        extra = ", ".join(f"{a}={c[a]}" for a in ("temperature", "alpha", "likelihood_ratio", "step_size",
                                                  "elite_fraction", "refit_std") if c.get(a) is not None)
        rows.append([k, c["name"], _f(c.get("sigma"), 3), _f(c.get("sigma2"), 3), _f(c.get("logit_noise_scale"), 2),
                     c.get("num_samples"), extra or "–"])
    header = ["label", "controller", "σ", "σ²", "σ·‖w‖", "n", "other"]
    return _table(header, rows)


def iteration_table(result, controller: str) -> str:
    """Per-iteration means over prompts × seeds for one controller: round mean / max reward,
    best so far, ESS of the weights, weight entropy, and ‖U‖ and KL(q_U‖p) of the mean
    after the update."""
    traces = [t["trace"] for t in _get(result, "traces") if t["controller"] == controller]
    if not traces:
        return ""
    K = min(len(t) for t in traces)
    rows = []
    for i in range(K):
        def m(key: str, i: int = i) -> float:
            vals = [t[i][key] for t in traces if t[i].get(key) is not None]
            return sum(vals) / len(vals) if vals else float("nan")
        ess = [t[i]["ess"] for t in traces]
        rows.append([i + 1, _f(m("mean_reward")), _f(m("max_reward")), _f(m("best_reward")),
                     f"{m('ess'):.2f} ({min(ess):.2f}–{max(ess):.2f})", _f(m("weight_entropy"), 2),
                     _f(m("post_mean_norm"), 1), _f(m("post_kl"), 0)])
    header = ["iteration", "round mean r", "round max r", "best so far", "ESS mean (min–max)", "H(w)",
              "‖U‖ after update", "KL(q_U‖p) after update"]
    return _table(header, rows)


def frontier_table(result, baseline: str) -> str:
    """Per (controller, N): mean reward, KL on both footings and the gap above Best-of-N's
    reference curve at that KL (:mod:`~ctrlalign.bench.verdict`; "no verdict": beyond its range, above its last reward)."""
    ref_n, ref_r = verdict.reference_frontier(result, baseline)

    def gap(x: float) -> str:
        return "no verdict" if math.isnan(x) else f"{x:+.3f}"

    rows = [[p["controller"], p["budget"], _f(p["reward"]), _f(p["kl_paper"], 2), gap(p["gap_paper"]),
             _f(p["kl_charged"], 2), gap(p["gap_charged"])] for p in verdict.frontier_points(result, baseline)]
    head = ["controller", "N", "reward", "KL(q_U‖p)", "gap above BoN", "KL + log N − (N−1)/N", "gap above BoN"]
    ref = ", ".join(f"N={n:g}: {r:.3f}" for n, r in zip(ref_n, ref_r))
    return (f"Reward–KL frontier: Best-of-N reference from `{baseline}`'s samples ({ref}); a positive gap is "
            "a point above the curve.\n\n" + _table(head, rows))


def _round_means(result, controller: str) -> tuple[float, float] | None:
    """Mean round-mean reward of the first and the last round, over prompts × seeds."""
    traces = [t["trace"] for t in _get(result, "traces") if t["controller"] == controller]
    if not traces:
        return None
    return (sum(t[0]["mean_reward"] for t in traces) / len(traces),
            sum(t[-1]["mean_reward"] for t in traces) / len(traces))


def verdict_table(results: dict[str, Any], budget: int = 128) -> str:
    """One row per (run, controller) at budget N: mean reward, the paired Δ [95% CI] against
    each configured baseline (``*``: the CI excludes 0), KL(q_U‖p), the frontier gap on the
    charged footing, held-out fluency minus plain Best-of-N's, the published diversity (and its
    difference from plain Best-of-N's: likelihood under another LM *rewards* repetitive text, the
    diversity exposes it), and the round-mean reward of the first and last round (does the
    proposal learn?).

    Args:
        results: run name (e.g. "reference-answer similarity, SmolLM2") → summarised result.
        budget: N.
    """
    rows = []
    for name, res in results.items():
        cfg = _get(res, "config")
        baselines = list(cfg.get("baselines") or [])
        plain = plain_baseline(res)
        gaps = {(p["controller"], p["budget"]): p for p in verdict.frontier_points(res, plain)} if plain else {}
        summ = {(r["controller"], r["budget"]): r for r in _get(res, "summary")}
        comps = {(c["controller"], c["baseline"], c["budget"]): c for c in _get(res, "comparisons")}
        base_fl = (summ.get((plain, budget)) or {}).get("fluency") if plain else None
        for c in result_controllers(res):
            row = summ.get((c, budget))
            if row is None:
                continue
            deltas = []
            for b in baselines[:3]:
                ci = (comps.get((c, b, budget)) or {}).get("reward_diff")
                deltas.append("–" if c == b or not ci else fmt_ci(ci, signed=True) + (" *" if ci["low"] > 0 else ""))
            deltas += ["–"] * (3 - len(deltas))
            fl = row.get("fluency")
            dv, base_dv = row.get("paper_diversity"), (summ.get((plain, budget)) or {}).get("paper_diversity")
            gap = (gaps.get((c, budget)) or {}).get("gap_charged")
            rm = _round_means(res, c)
            rows.append([name, c, _f(row["reward"]), *deltas, _f(row.get("control_kl"), 1),
                         "–" if gap is None else ("no verdict" if math.isnan(gap) else f"{gap:+.3f}"),
                         "–" if fl is None or base_fl is None else f"{fl - base_fl:+.2f}",
                         "–" if dv is None or base_dv is None else f"{dv:.2f} ({dv - base_dv:+.2f})",
                         "–" if rm is None else f"{rm[0]:.3f} → {rm[1]:.3f}"])
    lists = {tuple(_get(r, "config").get("baselines") or []) for r in results.values()}
    names = list(lists.pop()) if len(lists) == 1 else []
    names = (names + [f"baseline {j}" for j in range(len(names) + 1, 4)])[:3]
    head = ["run", "controller", f"reward (N={budget})", *(f"Δ vs {b} [95% CI]" for b in names),
            "KL(q_U‖p)", "frontier gap (charged KL)", "fluency − BoN's", "diversity (− BoN's)",
            "round mean, first → last"]
    return _table(head, rows)


def goal_table(results: dict[str, Any], min_budget: int = 128) -> str:
    """Per run: the baselines (in the order of :func:`verdict_table`'s Δ columns), the primary
    controller, whether the paper-regime goal is met (:func:`~ctrlalign.bench.verdict.regime_goal`)
    and what fails."""
    rows = []
    for name, res in results.items():
        cfg = _get(res, "config")
        primary, baselines = cfg.get("primary"), list(cfg.get("baselines") or [])
        plain = plain_baseline(res)
        if not (primary and baselines and plain):
            continue
        g = verdict.regime_goal(res, primary, baselines, plain=plain, min_budget=min_budget)
        meta = _get(res, "meta")
        rows.append([name, ", ".join(baselines), primary, f"{meta.get('num_prompts')} × {len(cfg.get('seeds', []))}",
                     "**met**" if g["met"] else "not met", "; ".join(g["failing"]) or "–"])
    return _table(["run", "baselines 1, 2, 3", "primary", "prompts × seeds", "goal", "failing"], rows)


def markdown_report(result, primary: str | None = None, baselines: Sequence[str] | None = None) -> str:
    """All tables, the scale of the model and (if ``primary``) the goal check."""
    meta = _get(result, "meta")
    cfg = _get(result, "config")
    primary = primary or cfg.get("primary")
    baselines = list(baselines or cfg.get("baselines") or [])
    parts = [
        f"Reward optimised: `{meta.get('reward')}`; held-out judge: `{meta.get('judge')}`; "
        f"{meta.get('num_prompts')} prompts × {len(cfg.get('seeds', []))} seeds; "
        f"head row norm ‖w‖ (median) = {_f(meta.get('head_row_norm'), 3)}.",
        "",
        scale_table(result),
    ]
    main = results_table(result)
    if main.count("\n") > 1:
        parts += ["", main]
    held = heldout_table(result)
    if held:
        parts += ["", held]
    comp = comparison_table(result)
    if comp.count("\n") > 1:
        parts += ["", comp]
    if primary:
        it = iteration_table(result, primary)
        if it:
            parts += ["", f"Per-iteration diagnostics of `{primary}` (means over prompts × seeds):", "", it]
    plain = plain_baseline(result)
    if plain is not None and len(result_controllers(result)) > 1:
        parts += ["", frontier_table(result, plain)]
    sw = sweep_table(result)
    if sw.count("\n") > 1:
        parts += ["", sw]
    reference = matched_reference(result)
    if reference is not None and len(result_controllers(result)) > 1:
        parts += ["", matched_table(result, reference)]
    if primary and baselines and hasattr(result, "comparisons"):
        g = verdict.goal_status(result, primary, baselines)
        bad = [c for c in g["checks"] if not (c["reward_better"] and c["judge_not_worse"])]
        parts += ["", f"Goal ({primary} reward above {', '.join(baselines)} at every N ≥ 32 with the CI of the "
                      f"paired difference excluding 0, judge not significantly worse): "
                      f"**{'met' if g['met'] else 'not met'}**"
                  + ("" if not bad else " — failing: " + "; ".join(
                      f"{c['baseline']} N={c['budget']} ({'reward' if not c['reward_better'] else 'judge'})" for c in bad))]
    if primary and baselines and plain is not None and any(int(b) >= 128 for b in cfg.get("budgets", [])):
        g = verdict.regime_goal(result, primary, baselines, plain=plain)
        parts += ["", f"Paper-regime goal ({primary} beats {', '.join(baselines)} at every N ≥ 128 with the "
                      "paired CI excluding 0, fluency no worse than Best-of-N's beyond its seed-to-seed CI, "
                      f"a point above Best-of-N's frontier): **{'met' if g['met'] else 'not met'}**"
                  + ("" if g["met"] else " — failing: " + "; ".join(g["failing"]))]
    return "\n".join(parts) + "\n"


def matched_table(result, reference: str) -> str:
    """Every (controller, budget) against ``reference``'s Best-of-N curve at matched decoded
    tokens and at matched reward calls (:mod:`~ctrlalign.bench.matched`): its spend on each axis,
    its reward and the paired gain over the interpolated reference, with the 95% CI."""
    records = _get(result, "records")
    method = _get(result, "config").get("ci_method", "bootstrap")
    by_axis = {axis: {(r["controller"], r["budget"]): r for r in matched.matched_readout(records, reference, axis, method)}
               for axis in matched.AXES}
    calls = {}
    for r in records:
        calls.setdefault((r["controller"], int(r["budget"])), []).append(r)
    header = ["controller", "N", "tokens / prompt", "full calls", "prefix calls", "reward",
              "Δ at matched tokens [95% CI]", "Δ at matched reward calls [95% CI]", "outside the curve"]
    rows = []
    for key, t in by_axis["tokens"].items():
        c = by_axis["calls"].get(key)
        recs = calls[key]
        rows.append([f"`{key[0]}`", str(key[1]), _f(t["spent"], 0),
                     _f(sum(r["reward_calls"] for r in recs) / len(recs), 1),
                     _f(sum(r.get("prefix_calls") or 0 for r in recs) / len(recs), 1), _f(t["reward"]),
                     fmt_ci(t["delta"], signed=True), fmt_ci(None if c is None else c["delta"], signed=True),
                     f"{t['outside']} / {c['outside'] if c else '-'} of {t['n']}"])
    note = (f"Matched budgets: each controller's kept reward minus `{reference}`'s Best-of-N reward interpolated "
            "in log budget at the tokens it decoded (counted by a wrapper around the model) and at the reward calls "
            "it made (full + prefix), paired over prompt × seed (95% CI, prompts as clusters); outside the curve: "
            "pairs clamped to its ends (tokens / calls).")
    return note + "\n\n" + _table(header, rows)


def result_controllers(result) -> list[str]:
    """Controller labels of a result (or its dict), in first-seen order."""
    return list(dict.fromkeys(r["controller"] for r in _get(result, "records")))
