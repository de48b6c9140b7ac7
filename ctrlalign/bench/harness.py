r"""The matched-budget harness: ``run_bench(config) -> BenchResult``.

It ties the jobs together, each in its own module: the plan of (controller, seed, prompt
batch) runs and what a results file already holds (:mod:`~ctrlalign.bench.plan`), one run with
its anytime read-out and budget checks (:mod:`~ctrlalign.bench.execute`), the store the runs
are appended to (:mod:`ctrlalign.store`, lines of :mod:`~ctrlalign.bench.result`), the held-out
scores (:mod:`~ctrlalign.bench.score`) and the aggregates (:mod:`~ctrlalign.bench.summary`).
:mod:`ctrlalign.bench.report` and :mod:`ctrlalign.bench.plots` turn a :class:`BenchResult`
into tables and figures.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..build import build_dynamics, build_reward, versions
from ..cost import Cost
from ..dynamics.base import Dynamics
from ..rewards.base import Reward
from ..rewards.counting import CountingReward
from ..store import RunInterrupted, Store, output_lock
from . import scales
from .config import BenchConfig, bench_identity
from .execute import peak_rss_mb, run_one, run_solved
from .plan import (
    PlannedRun,
    in_plan_order,
    item_id,
    kept_part,
    load_items,
    make_plan,
    prompt_of,
    resume,
)
from .result import START, BenchResult, StoredBench, finished_line, read_bench, run_key, run_lines
from .score import finish_bench

__all__ = ["finish_saved", "run_bench"]


def _machine() -> dict[str, Any]:
    """Platform, processor, CPU count, torch threads, GPU and package versions."""
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


def _meta(cfg: BenchConfig, items: Sequence[Any], dynamics: Dynamics, reward: Reward,
          judge: Reward | None) -> dict[str, Any]:
    """The run's metadata: machine, model scale ‖w‖, rewards, prompts, each controller's σ."""
    row_norm = scales.dynamics_row_norm(dynamics)
    return {
        "machine": _machine(),
        "head_row_norm": row_norm,
        "reward": getattr(reward, "name", str(reward)),
        "judge": None if judge is None else getattr(judge, "name", str(judge)),
        "num_prompts": len(items),
        "prompt_ids": [item_id(it, j) for j, it in enumerate(items)],
        "controllers": {
            c.key: {"name": c.name, **c.options(), "space": c.space.build().describe(),
                    "space_options": c.space.options(),
                    "selection": c.selection, "common_random_numbers": c.common_random_numbers, "greedy": c.greedy,
                    "sigma2": c.sigma_used**2, "logit_noise_scale": scales.logit_noise_scale(c.sigma_used, row_norm)}
            for c in cfg.all_controllers()
        },
        "anytime": "results at N = n·i are read off a k_max = N_max/n run after i iterations (exact)",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": list(sys.argv),
    }


def _start(store: Store, stored: StoredBench | None, kept: list[str], cfg: BenchConfig, result: BenchResult) -> None:
    """Make the store ready to append this run's lines: a new file (just the header); the kept
    runs of an old-format file, or of a file with runs no longer planned, rewritten once; or the
    same file with a start line appended."""
    config = cfg.model_dump(mode="json")
    header = store.header(bench_identity(config), config, meta=result.meta)
    start = {"id": START, "config": config, "meta": result.meta}
    if stored is None or not stored.result.runs:
        store.rewrite(header, [])
    elif stored.legacy or len(kept) < len(stored.result.runs):
        # resume() checked that every kept run was made with its controller's settings of now
        settings = {c.key: c.model_dump(mode="json") for c in cfg.all_controllers()}
        old_header = None if stored.contents is None else stored.contents.header
        store.rewrite(old_header or header, [*run_lines(result, settings), start])
    else:
        assert stored.contents is not None
        store.repair(stored.contents)
        store.append([start])


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
        config: a :class:`~ctrlalign.bench.config.BenchConfig` (or a dict validated into one).
        dynamics: use this system instead of building ``config.model`` (e.g. a toy system).
        reward: use this optimised reward instead of ``config.reward``.
        judge: use this held-out reward instead of ``config.judge``; ``False``: none.
        prompts: use these prompts instead of ``config.prompts`` (strings, PromptItems, or
            toy-system prompt tensors).
        log: progress lines (None: silent).
        save: append every finished (controller, seed, prompt batch) run to ``config.output``
            (a store, :mod:`~ctrlalign.bench.result`), and the scores and summary at the end.
            While it runs, ``<output>.lock`` is held, so a second run on the same output is refused.
        overwrite: discard an existing ``config.output`` instead of resuming it.

    A run *resumes* (with ``save``): the runs ``config.output`` holds are kept and only the
    missing ones are run (:func:`~ctrlalign.bench.plan.resume`: refused, with the differing
    fields named, when the file holds results of another configuration). Resuming trusts that
    ``dynamics``, ``reward`` and ``prompts`` passed in are those of the first run.

    Returns:
        :class:`BenchResult` with records, traces, runs, summary and comparisons filled.

    Raises:
        ConfigChangedError: the output holds results of another configuration.
        CorruptResultsError: the output cannot be read (the file and line named).
        OutputLockedError: another run holds the output.
        RunInterrupted: on Ctrl-C, saying how many runs are saved.
    """
    cfg = config if isinstance(config, BenchConfig) else BenchConfig.model_validate(config)
    say = log or (lambda s: None)
    t_start = time.perf_counter()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    items = list(prompts) if prompts is not None else load_items(cfg)
    if reward is None:
        reward = build_reward(cfg.reward, items)
    if judge is None:
        judge = build_reward(cfg.judge, items)
    elif judge is False:
        judge = None
    if dynamics is None:
        say(f"loading model {cfg.model.name!r} ...")
        dynamics = build_dynamics(cfg.model)
    result = BenchResult(config=cfg.model_dump(mode="json"), meta=_meta(cfg, items, dynamics, reward, judge))
    plan = make_plan(cfg, items)
    store = Store(cfg.output, "bench", "--output")
    with contextlib.ExitStack() as stack:
        if save:
            stack.enter_context(output_lock(store.path))
            stored = None if overwrite else read_bench(store.path)
            if stored is not None and stored.result.runs:
                kept = resume(stored, store, cfg, plan)
                result.runs, result.records, result.traces = kept_part(stored.result, kept)
                old_meta = stored.result.meta
                result.meta["started"] = old_meta.get("started", result.meta["started"])
                result.meta["resumed"] = [*old_meta.get("resumed", []), time.strftime("%Y-%m-%d %H:%M:%S")]
                dropped = len(stored.result.runs) - len(kept)
                say(f"resuming {store.path}: {len(kept)} finished runs kept"
                    + (f", {dropped} of a changed prompt batching run again" if dropped else ""))
            else:
                kept = []
            _start(store, stored, kept, cfg, result)
        done = {run_key(r["controller"], r["seed"], r["prompt_ids"]) for r in result.runs}
        todo = [p for p in plan if p.key not in done]
        say(f"bench {cfg.name!r}: {len(items)} prompts x {len(cfg.seeds)} seeds x {len(cfg.all_controllers())} "
            f"controllers, budgets {cfg.budgets}; ‖w‖ = {result.meta['head_row_norm']}; {len(todo)} of {len(plan)} "
            "runs to do")
        try:
            _run_all(todo, items, dynamics, reward, cfg, result, store if save else None, say)
        except KeyboardInterrupt:
            where = f"; saved in {cfg.output}, rerun the same command to resume" if save else ""
            raise RunInterrupted(f"interrupted: {len(result.runs)} of {len(plan)} runs done{where}") from None
        in_plan_order(result, plan)
        result.meta["seconds_runs"] = time.perf_counter() - t_start
        finish_bench(result, cfg, items=items, judge=judge, log=say)
        result.meta["seconds_total"] = time.perf_counter() - t_start
        result.meta["peak_rss_mb"] = peak_rss_mb()
        if save:
            store.append([finished_line(result)])
    return result


def _run_all(todo: list[PlannedRun], items: Sequence[Any], dynamics: Dynamics, reward: Reward, cfg: BenchConfig,
             result: BenchResult, store: Store | None, say: Callable[[str], None]) -> None:
    """Make the runs ``todo`` in order, adding each to ``result`` and appending it to ``store``."""
    counting = CountingReward(reward)
    cost = Cost(counting)
    prepared: dict[int, tuple[Any, float]] = {}
    for p in todo:
        batch = items[p.start: p.start + cfg.batch_prompts]
        texts = [prompt_of(it) for it in batch]
        if p.start not in prepared:
            prepared.clear()  # one prompt batch's prefill held at a time
            tb = time.perf_counter()
            prepared[p.start] = (dynamics.prepare(texts), time.perf_counter() - tb)
        context, prefill_s = prepared[p.start]
        if p.entry.instance.anytime:  # read off at every budget N of one run
            out = run_one(dynamics, cost, counting, p.entry, texts, list(p.prompt_ids), context, p.seed, cfg.budgets,
                          prefill_s)
        else:  # a controller whose own settings fix its cost: run once
            out = run_solved(dynamics, cost, counting, p.entry, texts, list(p.prompt_ids), context, p.seed, prefill_s)
        if store is not None:  # after every run, so a run stopped early keeps all completed runs
            store.append([{"id": p.key, "settings": p.entry.model_dump(mode="json"), "run": out.run,
                           "records": out.records, "traces": out.traces}])
        result.runs.append(out.run)
        result.records.extend(out.records)
        result.traces.extend(out.traces)
        say(f"  prompts {p.start}-{p.start + len(batch) - 1} seed {p.seed} {p.entry.key:<28s} "
            f"{out.run['seconds']:7.1f}s  {out.run['tokens_per_second']:7.1f} tok/s  "
            f"best@N_max {out.run['mean_best_reward']:.4f}")


def finish_saved(cfg: BenchConfig, *, log: Callable[[str], None] | None = None) -> BenchResult:
    """The result saved in ``cfg.output``, scored and summarised (``ctrlalign bench --report-only``).

    A result that is not summarised yet (a run stopped early) is finished now
    (:func:`~ctrlalign.bench.score.finish_bench`: judge and coherence of what finished) and its
    finished line appended, under the output's lock; a file of the format before the store is
    rewritten as a store then.

    Raises:
        FileNotFoundError: ``cfg.output`` does not exist.
        CorruptResultsError: it cannot be read (the file and line named).
        OutputLockedError: it has to be finished while another run holds it.
    """
    store = Store(cfg.output, "bench", "--output")
    stored = read_bench(store.path)
    if stored is None:
        raise FileNotFoundError(errno.ENOENT, "no bench results here; run the benchmark first", str(store.path))
    if stored.result.summary:
        return stored.result
    with output_lock(store.path):
        stored = read_bench(store.path)
        assert stored is not None
        result = stored.result
        finish_bench(result, cfg, log=log)
        if stored.contents is None:
            result.save(store.path)
        else:
            store.repair(stored.contents)
            store.append([finished_line(result)])
    return result
