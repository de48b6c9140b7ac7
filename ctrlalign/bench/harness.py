r"""The matched-budget harness: ``run_bench(config) -> BenchResult``.

For every prompt batch, seed and controller the harness calls :func:`ctrlalign.align` once,
with k_max = N_max / n iterations, and reads off the result at every budget N = n·i it
was asked for (i ≤ k_max) from the per-iteration callback. This *anytime* read-out is exact,
not an approximation: every controller here (AISP, MPPI, CEM, Best-of-N, softmax sampling)
draws the same noise and makes the same updates in its first i iterations whatever k is, so
the response kept after i iterations of a k_max-iteration run is the response a run with
k = i returns (``tests/test_bench.py`` checks this against separate runs). The budget is
checked, not assumed: the optimised reward is wrapped in a :class:`CountingReward` and at each
budget N every prompt must have been scored exactly N times.

Per (controller, N, seed, prompt) a record holds: the optimised reward of the kept response,
the held-out judge's score of the same response, KL(q_U‖p) and ‖U‖ of the controller's final
proposal (its mean after the last update), the token-level log-ratio of the kept response to
the base model, its diversity and coherence, its text, and the time, tokens and reward calls
spent to reach N. :mod:`ctrlalign.bench.report` and :mod:`ctrlalign.bench.plots` turn a
:class:`BenchResult` into tables and figures.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..align import Iteration, align
from ..build import build_dynamics, build_reward, versions
from ..cost import Cost
from ..dynamics.base import Dynamics, Outcomes, Sample
from ..rewards.base import Reward, evaluate_reward, prompt_text
from ..runner import (
    ConfigChangedError,
    CorruptResultsError,
    RunInterrupted,
    config_diff,
    output_lock,
)
from . import metrics
from .config import BenchConfig, BenchController
from .heldout import heldout_scores

__all__ = ["BenchResult", "CountingReward", "compare", "finish_bench", "goal_status", "run_bench", "summarize"]


class CountingReward(Reward):
    """Wraps a reward; counts the responses scored per prompt.

    ``calls`` is a dict prompt key (:func:`ctrlalign.random.prompt_key`) → number of
    responses scored. ``reset()`` clears it.
    """

    def __init__(self, inner: Reward | Callable):
        self.inner = inner
        self.name = getattr(inner, "name", "reward")
        self.calls: dict[bytes, int] = {}

    @staticmethod
    def key(prompt: Any) -> bytes:
        """The key under which a prompt's calls are counted (its content)."""
        from ..random import prompt_key

        return prompt_key(prompt)

    def reset(self) -> None:
        """Forget all counts."""
        self.calls = {}

    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        r = evaluate_reward(self.inner, prompts, outcomes)
        for p in prompts:
            k = self.key(p)
            self.calls[k] = self.calls.get(k, 0) + outcomes.num_samples
        return r


@dataclass
class BenchResult:
    """Everything a benchmark produced (JSON-serialisable through :meth:`to_dict`).

    Attributes:
        config: the validated config as a dict.
        meta: machine, versions, model scale (‖w‖), per-controller σ and σ·‖w‖, timings.
        records: one dict per (controller, N, seed, prompt) — see the module docstring.
        traces: one dict per (controller, seed, prompt): the per-iteration trace of ``align``, each
            round with its n rewards (``"rewards"``; the pools of the reference frontier).
        runs: one dict per (controller, seed, prompt batch): wall-clock, tokens, memory.
        summary: one dict per (controller, N): means and CIs (filled by :func:`summarize`).
        comparisons: paired differences against the baselines (filled by :func:`compare`).
    """

    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    traces: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain containers."""
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (through a temporary file); returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1, default=_json_default))
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> BenchResult:
        """Read a result written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))

    def controllers(self) -> list[str]:
        """Controller labels in first-seen order."""
        return list(dict.fromkeys(r["controller"] for r in self.records))

    def budgets(self) -> list[int]:
        """The budgets N present, ascending."""
        return sorted({int(r["budget"]) for r in self.records})

    def select(self, controller: str | None = None, budget: int | None = None) -> list[dict[str, Any]]:
        """Records of one controller and/or one budget (None: any)."""
        return [r for r in self.records if (controller is None or r["controller"] == controller)
                and (budget is None or r["budget"] == budget)]


def _json_default(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


# --------------------------------------------------------------------------------------------
# building blocks from the config


def _load_items(cfg: BenchConfig):
    from ..data import load_prompts

    items = load_prompts(cfg.prompts)
    if cfg.require_reference:
        items = [it for it in items if it.reference is not None]
    items = items[cfg.offset:]
    if cfg.limit is not None:
        items = items[: cfg.limit]
    if not items:
        raise ValueError("no prompts left after require_reference/offset/limit")
    return items


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["versions"] = versions()
    except Exception:  # noqa: BLE001 - informational only
        info["versions"] = {"torch": torch.__version__, "python": platform.python_version()}
    return info


def _peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


# --------------------------------------------------------------------------------------------
# the run


def _prompt_of(item: Any) -> Any:
    return getattr(item, "text", item)


def _item_id(item: Any, j: int) -> str:
    return str(getattr(item, "id", f"p{j}"))


def run_bench(
    config: BenchConfig | dict,
    *,
    dynamics: Dynamics | None = None,
    reward: Reward | None = None,
    judge: Reward | None | bool = None,
    prompts: Sequence[Any] | None = None,
    log: Callable[[str], None] | None = print,
    save: bool = True,
    overwrite: bool = False,
) -> BenchResult:
    """Run a matched-budget benchmark.

    Args:
        config: a :class:`BenchConfig` (or a dict validated into one).
        dynamics: use this system instead of building ``config.model`` (e.g. a toy system).
        reward: use this optimised reward instead of ``config.reward``.
        judge: use this held-out reward instead of ``config.judge``; ``False``: none.
        prompts: use these prompts instead of ``config.prompts`` (strings, PromptItems, or
            toy-system prompt tensors).
        log: progress lines (None: silent).
        save: write ``config.output`` after every (controller, seed, prompt batch) run, and at the end.
            While it runs, ``<output>.lock`` is held, so a second run on the same output is refused.
        overwrite: discard an existing ``config.output`` instead of resuming it.

    A run *resumes* (with ``save``): when ``config.output`` exists, the (controller, seed,
    prompt batch) runs it holds are kept and only the missing ones are run, so an interrupted
    benchmark continues where it stopped and adding a controller or raising ``limit`` runs only
    what is new. It is refused, with the differing fields named, when the file was written
    under a different configuration (anything but ``name``, ``output``, ``figures``,
    ``tables``, ``limit``, ``seeds``, ``primary`` and ``baselines``; a controller is compared by
    label; a seed or prompt may be added, not dropped), so results of two settings never mix. Resuming trusts that ``dynamics``, ``reward`` and
    ``prompts`` passed in are those of the first run.

    Returns:
        :class:`BenchResult` with records, traces, runs, summary and comparisons filled.

    Raises:
        ConfigChangedError: the output holds results of another configuration.
        CorruptResultsError: the output cannot be read as a :class:`BenchResult`.
        OutputLockedError: another run holds the output.
        RunInterrupted: on Ctrl-C, saying how many runs are saved.
    """
    cfg = config if isinstance(config, BenchConfig) else BenchConfig.model_validate(config)
    say = log or (lambda s: None)
    t_start = time.perf_counter()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    items = list(prompts) if prompts is not None else _load_items(cfg)
    if reward is None:
        reward = build_reward(cfg.reward, items)
    if judge is None:
        judge = build_reward(cfg.judge, items)
    elif judge is False:
        judge = None
    if dynamics is None:
        say(f"loading model {cfg.model.name!r} ...")
        dynamics = build_dynamics(cfg.model)
    entries = cfg.all_controllers()
    row_norm = metrics.dynamics_row_norm(dynamics)
    result = BenchResult(config=cfg.model_dump(mode="json"))
    result.meta = {
        "machine": _machine(),
        "head_row_norm": row_norm,
        "reward": getattr(reward, "name", str(reward)),
        "judge": None if judge is None else getattr(judge, "name", str(judge)),
        "num_prompts": len(items),
        "prompt_ids": [_item_id(it, j) for j, it in enumerate(items)],
        "controllers": {
            c.key: {"name": c.name, **c.hyperparameters(), "space": c.space.build().describe(),
                    "space_options": c.space.options(),
                    "selection": c.selection, "common_random_numbers": c.common_random_numbers, "greedy": c.greedy,
                    "sigma2": c.sigma_used**2, "logit_noise_scale": metrics.logit_noise_scale(c.sigma_used, row_norm)}
            for c in entries
        },
        "anytime": "results at N = n·i are read off a k_max = N_max/n run after i iterations (exact)",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": list(sys.argv),
    }
    counting = CountingReward(reward)
    cost = Cost(counting)
    N_max = max(cfg.budgets)
    D = cfg.batch_prompts
    plan = [(entry, seed, start) for start in range(0, len(items), D) for seed in cfg.seeds for entry in entries]
    ids_of = {start: [_item_id(it, start + j) for j, it in enumerate(items[start: start + D])]
              for start in range(0, len(items), D)}
    with contextlib.ExitStack() as stack:
        if save:
            stack.enter_context(output_lock(Path(cfg.output)))
            if not overwrite:
                _resume(result, cfg, [_unit(e.key, s, ids_of[b]) for e, s, b in plan], say)
        done = {_unit(r["controller"], r["seed"], r["prompt_ids"]) for r in result.runs}
        todo = [(e, s, b) for e, s, b in plan if _unit(e.key, s, ids_of[b]) not in done]
        say(f"bench {cfg.name!r}: {len(items)} prompts x {len(cfg.seeds)} seeds x {len(entries)} controllers, "
            f"budgets {cfg.budgets}; ‖w‖ = {row_norm}; {len(todo)} of {len(plan)} runs to do")
        prepared: dict[int, tuple[Any, float]] = {}
        try:
            for entry, seed, start in todo:
                batch = items[start: start + D]
                texts = [_prompt_of(it) for it in batch]
                if start not in prepared:
                    prepared.clear()  # one prompt batch's prefill held at a time
                    tb = time.perf_counter()
                    prepared[start] = (dynamics.prepare(texts), time.perf_counter() - tb)
                context, prefill_s = prepared[start]
                _run_one(result, dynamics, cost, counting, entry, texts, ids_of[start], context, seed, cfg.budgets,
                         N_max, prefill_s)
                last = result.runs[-1]
                if save:  # after every run, so a run stopped early keeps all completed runs
                    result.save(cfg.output)
                say(f"  prompts {start}-{start + len(batch) - 1} seed {seed} {entry.key:<28s} "
                    f"{last['seconds']:7.1f}s  {last['tokens_per_second']:7.1f} tok/s  "
                    f"best@N_max {last['mean_best_reward']:.4f}")
        except KeyboardInterrupt:
            where = f"; saved in {cfg.output}, rerun the same command to resume" if save else ""
            raise RunInterrupted(f"interrupted: {len(result.runs)} of {len(plan)} runs done{where}") from None
        _in_plan_order(result, [_unit(e.key, s, ids_of[b]) for e, s, b in plan])
        result.meta["seconds_runs"] = time.perf_counter() - t_start
        finish_bench(result, cfg, items=items, judge=judge, log=say)
        result.meta["seconds_total"] = time.perf_counter() - t_start
        result.meta["peak_rss_mb"] = _peak_rss_mb()
        if save:
            result.save(cfg.output)
    return result


#: config fields that change no result: a results file written under other values is resumed
_NOT_IDENTITY = ("name", "output", "figures", "tables", "limit", "seeds", "primary", "baselines", "controllers",
                 "sweep")


def _unit(controller: str, seed: int, prompt_ids: Sequence[str]) -> tuple[str, int, tuple[str, ...]]:
    """The key of one (controller, seed, prompt batch) run."""
    return controller, int(seed), tuple(prompt_ids)


def _resume(result: BenchResult, cfg: BenchConfig, plan: list[tuple[str, int, tuple[str, ...]]],
            say: Callable[[str], None]) -> None:
    """Move the runs of an existing ``cfg.output`` that this config plans into ``result``.

    Raises:
        CorruptResultsError: the file is not a readable :class:`BenchResult`.
        ConfigChangedError: it was written under another configuration: a field outside
            ``_NOT_IDENTITY`` differs, a controller label kept its name but changed its settings
            or is gone, or a seed or prompt it answered is no longer in the config.
    """
    path = Path(cfg.output)
    if not path.exists():
        return
    try:
        old = BenchResult.load(path)
        old_cfg = BenchConfig.model_validate(old.config)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CorruptResultsError(f"{path} cannot be read as a bench result ({str(exc).splitlines()[0]}); "
                                  "move it away, or rerun with --overwrite to replace it") from None
    fix = "rerun with --overwrite to replace them, or choose another --output"
    new = cfg.model_dump(mode="json")
    changed = config_diff({k: v for k, v in old.config.items() if k not in _NOT_IDENTITY},
                          {k: v for k, v in new.items() if k not in _NOT_IDENTITY})
    old_entries = {c.key: c.model_dump(mode="json") for c in old_cfg.all_controllers()}
    new_entries = {c.key: c.model_dump(mode="json") for c in cfg.all_controllers()}
    ran = {r["controller"] for r in old.runs}
    changed += [f"controllers[{k}]" for k in sorted(ran) if old_entries.get(k) != new_entries.get(k)]
    if changed:
        raise ConfigChangedError(f"{path} holds results of a different configuration (changed: "
                                 f"{', '.join(changed)}); {fix}")
    planned_ids = {i for _, _, ids in plan for i in ids}
    lost = sorted({i for r in old.runs for i in r["prompt_ids"]} - planned_ids)
    if lost:
        raise ConfigChangedError(f"{path} holds results for prompts this config no longer includes "
                                 f"({', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}); {fix}")
    gone = sorted({int(r["seed"]) for r in old.runs} - {int(s) for _, s, _ in plan})
    if gone:
        raise ConfigChangedError(f"{path} holds results for seeds this config no longer includes "
                                 f"({', '.join(map(str, gone))}); {fix}")
    wanted = set(plan)
    keep = [r for r in old.runs if _unit(r["controller"], r["seed"], r["prompt_ids"]) in wanted]
    covered = {(r["controller"], int(r["seed"]), i) for r in keep for i in r["prompt_ids"]}
    result.runs = keep
    result.records = [r for r in old.records if (r["controller"], int(r["seed"]), r["prompt_id"]) in covered]
    result.traces = [t for t in old.traces if (t["controller"], int(t["seed"]), t["prompt_id"]) in covered]
    result.meta["started"] = old.meta.get("started", result.meta["started"])
    result.meta["resumed"] = [*old.meta.get("resumed", []), time.strftime("%Y-%m-%d %H:%M:%S")]
    if keep or old.runs:
        say(f"resuming {path}: {len(keep)} finished runs kept"
            + (f", {len(old.runs) - len(keep)} of a changed prompt batching run again" if len(keep) < len(old.runs)
               else ""))


def _in_plan_order(result: BenchResult, plan: list[tuple[str, int, tuple[str, ...]]]) -> None:
    """Sort runs, records and traces by their run's place in the plan, so a resumed result is
    ordered like an uninterrupted one."""
    rank = {u: j for j, u in enumerate(plan)}
    of_prompt = {(c, s, i): j for (c, s, ids), j in rank.items() for i in ids}
    result.runs.sort(key=lambda r: rank[_unit(r["controller"], r["seed"], r["prompt_ids"])])
    result.records.sort(key=lambda r: of_prompt[(r["controller"], int(r["seed"]), r["prompt_id"])])
    result.traces.sort(key=lambda t: of_prompt[(t["controller"], int(t["seed"]), t["prompt_id"])])


def finish_bench(result: BenchResult, cfg: BenchConfig, *, items: Sequence[Any] | None = None,
                 judge: Reward | None | bool = None, log: Callable[[str], None] | None = None) -> BenchResult:
    """Score the kept responses with the held-out judge and coherence, then summarise.

    :func:`run_bench` calls it at the end; call it on a partial result (a run stopped early,
    loaded with :meth:`BenchResult.load`) to summarise what finished — only complete
    (controller, seed, prompt batch) runs are ever written, so in a stopped run the last
    prompt batch may be covered by some controllers and seeds only.
    """
    say = log or (lambda s: None)
    if items is None:
        ids = set(result.meta.get("prompt_ids", []))
        items = [it for j, it in enumerate(_load_items(cfg)) if _item_id(it, j) in ids]
    if judge is None:
        judge = build_reward(cfg.judge, items)
    elif judge is False:
        judge = None
    done = {r["prompt_id"] for r in result.records}
    items = [it for j, it in enumerate(items) if _item_id(it, j) in done]
    if judge is not None or (cfg.coherence and _has_texts(result)):
        say("scoring held-out judge / coherence on the kept responses ...")
        tj = time.perf_counter()
        _score_kept(result, items, judge, cfg.coherence)
        result.meta["judge_seconds"] = time.perf_counter() - tj
    if cfg.heldout and _has_texts(result):
        say("scoring held-out fluency, MPNet coherence and the published diversity ...")
        th = time.perf_counter()
        _score_heldout(result, items, cfg.model.name)
        result.meta["heldout_seconds"] = time.perf_counter() - th
    _add_diversity_across_seeds(result)
    result.summary = summarize(result, method=cfg.ci_method)
    result.comparisons = compare(result, cfg.baselines, method=cfg.ci_method)
    result.meta["prompts_completed"] = len(done)
    return result


def _score_heldout(result: BenchResult, items: Sequence[Any], policy: str) -> None:
    """Fluency (another packaged LM), MPNet coherence and the published diversity of every kept
    response, written into its record."""
    id_to_prompt = {_item_id(it, j): _prompt_of(it) for j, it in enumerate(items)}
    recs = [r for r in result.records if r.get("text") is not None]
    scores = heldout_scores([id_to_prompt[r["prompt_id"]] for r in recs], [r["text"] for r in recs], policy=policy)
    result.meta["fluency_model"] = scores.get("fluency_model")
    for key in ("fluency", "coherence_mpnet", "paper_diversity"):
        for r, v in zip(recs, scores.get(key, [])):
            r[key] = v


def _has_texts(result: BenchResult) -> bool:
    return any(r.get("text") is not None for r in result.records)


def _run_one(result: BenchResult, dynamics: Dynamics, cost: Cost, counting: CountingReward, entry: BenchController,
             texts: list, ids: list[str], context: Any, seed: int, budgets: list[int], N_max: int,
             prefill_s: float) -> None:
    n = entry.num_samples_used
    k_max = N_max // n
    controller = entry.build(k_max)
    counting.reset()
    Dn = len(texts)
    totals = {"seconds": 0.0, "tokens": 0}
    checkpoints = {b // n: b for b in budgets}
    snaps: list[dict[str, Any]] = []
    post: list[tuple[torch.Tensor, torch.Tensor]] = []
    round_rewards: list[torch.Tensor] = []  # (D, n) per round: the reference frontier's pools
    kept: list[Sample | None] = [None] * Dn
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    def callback(it: Iteration) -> None:
        rec = it.record
        totals["seconds"] += rec.seconds
        if it.outcomes.lengths is not None:
            totals["tokens"] += int(it.outcomes.lengths.sum())
        norm = it.state.mean.double().flatten(1).norm(dim=-1).cpu()
        kl = controller.kl(it.state).double().cpu()
        post.append((norm, kl))
        round_rewards.append(it.rewards.double().cpu())
        kept[:] = it.kept
        i = rec.iteration
        if i not in checkpoints:
            return
        N = checkpoints[i]
        for d in range(Dn):
            calls = counting.calls.get(CountingReward.key(texts[d]), 0)
            if calls != N:
                raise AssertionError(f"budget mismatch: {entry.key} used {calls} reward calls for prompt "
                                     f"{ids[d]} at N = {N}")
            s = it.kept[d]
            tkl = None
            if s.logprob is not None and s.base_logprob is not None:
                tkl = s.logprob - s.base_logprob
            snaps.append({
                "controller": entry.key, "budget": N, "seed": seed, "prompt_id": ids[d],
                "num_samples": n, "num_iterations": i,
                "reward": float(rec.kept_reward[d]),
                "control_kl": float(kl[d]), "mean_norm": float(norm[d]),
                "token_kl": tkl,
                "length": None if s.tokens is None else len(s.tokens),
                "text": s.text,
                "value": None if s.value is None else s.value.tolist(),
                # toy systems: keep the tokens for the judge (language models keep the text)
                "tokens_ids": s.tokens if s.text is None else None,
                "reward_calls": calls,
                "seconds_per_prompt": (totals["seconds"] + prefill_s) / Dn,
                "tokens": totals["tokens"] / Dn,
                "diversity": None if s.text is None else metrics.diversity(s.text),
            })

    if entry.greedy:
        dynamics = dynamics.with_sampling(greedy=True)
    res = align(dynamics, cost, controller, texts, space=entry.space.build(), seed=seed, context=context,
                callback=callback, selection=entry.build_selection(),
                common_random_numbers=entry.common_random_numbers)
    # the anytime read-out must agree with what align itself returns at k_max
    for d in range(Dn):
        if abs(float(res.rewards[d]) - snaps[-Dn + d]["reward"]) > 1e-9 or res.responses[d].text != kept[d].text:
            raise AssertionError(f"kept-response bookkeeping diverged from align() for {entry.key}, prompt {ids[d]}")
        calls = int(res.reward_calls[d])
        if calls != N_max:
            raise AssertionError(f"{entry.key} made {calls} reward calls for prompt {ids[d]}, expected {N_max}")
    result.records.extend(snaps)
    for d in range(Dn):
        trace = res.prompt_trace(d)
        for t, (norm, kl), rr in zip(trace, post, round_rewards):
            t["post_mean_norm"] = float(norm[d])
            t["post_kl"] = float(kl[d])
            t["rewards"] = rr[d].tolist()
        result.traces.append({"controller": entry.key, "seed": seed, "prompt_id": ids[d], "trace": trace})
    secs = res.seconds
    result.runs.append({
        "controller": entry.key, "seed": seed, "prompt_ids": list(ids), "num_prompts": Dn,
        "budget": N_max, "num_samples": n, "num_iterations": k_max, "seconds": secs,
        "prefill_seconds": prefill_s,
        "tokens": totals["tokens"], "tokens_per_second": totals["tokens"] / secs if secs > 0 else 0.0,
        "reward_calls_per_prompt": N_max,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "mean_best_reward": float(res.rewards.double().mean()),
    })


def _score_kept(result: BenchResult, items: Sequence[Any], judge: Reward | None, coherence: bool) -> None:
    """Held-out judge score and prompt–response coherence of every kept response."""
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for r in result.records:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    id_to_prompt = {_item_id(it, j): _prompt_of(it) for j, it in enumerate(items)}
    want_coh = coherence and _has_texts(result)
    if want_coh:
        from ..rewards.embedding import embed

        pids = list(by_prompt)
        e_prompt = embed([prompt_text(id_to_prompt[p]) for p in pids])
        e_prompt = {p: e_prompt[i] for i, p in enumerate(pids)}
    for pid, recs in by_prompt.items():
        prompt = id_to_prompt[pid]
        if recs[0].get("text") is not None:
            uniq = list(dict.fromkeys(r["text"] for r in recs))
            if judge is not None:
                out = Outcomes(num_prompts=1, num_samples=len(uniq), texts=[uniq])
                scores = evaluate_reward(judge, [prompt], out)[0].double().tolist()
                table = dict(zip(uniq, scores))
                for r in recs:
                    r["judge"] = table[r["text"]]
            if want_coh:
                from ..rewards.embedding import embed

                e = embed(uniq)
                cos = (e @ e_prompt[pid]).double().tolist()
                table = dict(zip(uniq, cos))
                for r in recs:
                    r["coherence"] = table[r["text"]]
        elif judge is not None:
            vals = torch.stack([torch.as_tensor(r["value"]) for r in recs]).unsqueeze(0)
            toks = lens = None
            if recs[0].get("tokens_ids") is not None:
                toks = torch.tensor([r["tokens_ids"] for r in recs], dtype=torch.long).unsqueeze(0)
                lens = torch.tensor([[len(r["tokens_ids"]) for r in recs]], dtype=torch.long)
            out = Outcomes(num_prompts=1, num_samples=len(recs), values=vals, tokens=toks, lengths=lens)
            scores = evaluate_reward(judge, [prompt], out)[0].double().tolist()
            for r, s in zip(recs, scores):
                r["judge"] = s


def _add_diversity_across_seeds(result: BenchResult) -> None:
    """Diversity of the kept responses of one prompt pooled over seeds, per (controller, N)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in result.records:
        if r.get("text") is not None:
            groups.setdefault((r["controller"], r["budget"], r["prompt_id"]), []).append(r)
    for recs in groups.values():
        div = metrics.diversity([r["text"] for r in recs]) if len(recs) > 1 else None
        for r in recs:
            r["diversity_across_seeds"] = div


# --------------------------------------------------------------------------------------------
# aggregation

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
                    row[f"{key}_ci"] = metrics.mean_ci([r[key] for r in sel], method=method,
                                                       clusters=[r["prompt_id"] for r in sel]).to_dict()
            calls = {r["reward_calls"] for r in recs}
            sel = [r for r in recs if r.get("fluency") is not None]
            if sel:
                row["fluency_ci"] = metrics.mean_ci([r["fluency"] for r in sel], method=method,
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
                        ci = metrics.paired_diff_ci([a for a, _ in pk], [bb for _, bb in pk], method=method,
                                                    clusters=clusters)
                        row[f"{key}_diff"] = ci.to_dict()
                        row[f"{key}_win_rate"] = sum(a > bb for a, bb in pk) / len(pk)
                        row[f"{key}_tie_rate"] = sum(a == bb for a, bb in pk) / len(pk)
                out.append(row)
    return out


def goal_status(result: BenchResult, primary: str, baselines: Sequence[str], min_budget: int = 32) -> dict[str, Any]:
    """Is ``primary``'s reward above every baseline's at every N ≥ ``min_budget`` (CI of the
    paired difference above 0), with a judge score not significantly worse (CI upper bound ≥ 0)?"""
    rows = [r for r in result.comparisons if r["controller"] == primary and r["baseline"] in baselines
            and r["budget"] >= min_budget]
    checks = []
    for r in rows:
        rd = r.get("reward_diff")
        jd = r.get("judge_diff")
        checks.append({
            "baseline": r["baseline"], "budget": r["budget"],
            "reward_better": bool(rd and rd["low"] > 0),
            "judge_not_worse": bool(jd is None or jd["high"] >= 0),
            "reward_diff": rd, "judge_diff": jd,
        })
    met = bool(checks) and all(c["reward_better"] and c["judge_not_worse"] for c in checks)
    return {"met": met, "checks": checks}
