"""The plan of a benchmark: which (controller, seed, prompt batch) runs it makes, and which of
them a results file already holds.

A benchmark over P prompts in batches of D, S seeds and C controllers makes
⌈P/D⌉·S·C runs, batch-major (all seeds and controllers of one prompt batch, whose prefill is
computed once, before the next batch). Each run is named by its :func:`~ctrlalign.bench.result.run_key`.

**Resuming** (:func:`resume`): the runs of an existing results file that the plan still makes
are kept and only the others are run, so an interrupted benchmark continues where it stopped,
and adding a controller, a seed or prompts (raising ``limit``) runs only what is new. A file is
refused, with the differing fields named, when its results would mix with others: a field of
:func:`~ctrlalign.bench.config.bench_identity` differs, a controller label that ran has other
settings now or is gone, or a seed or prompt it answered is no longer in the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..data import load_prompts
from ..store import ConfigChangedError, CorruptResultsError, Store, config_diff
from .config import BenchConfig, BenchController, bench_identity
from .result import SCORE_FIELDS, BenchResult, StoredBench, run_key

__all__ = ["PlannedRun", "in_plan_order", "item_id", "kept_part", "load_items", "make_plan", "prompt_of", "resume"]


def load_items(cfg: BenchConfig) -> list[Any]:
    """The config's prompts after ``require_reference``, ``offset`` and ``limit``.

    Raises:
        ValueError: none are left.
    """
    items = load_prompts(cfg.prompts)
    if cfg.require_reference:
        items = [it for it in items if it.reference is not None]
    items = items[cfg.offset:]
    if cfg.limit is not None:
        items = items[: cfg.limit]
    if not items:
        raise ValueError("no prompts left after require_reference/offset/limit")
    return items


def prompt_of(item: Any) -> Any:
    """What the dynamics and rewards see of a prompt item (its text; a toy prompt as is)."""
    return getattr(item, "text", item)


def item_id(item: Any, j: int) -> str:
    """A prompt item's id (``p{j}`` for items without one, j its place in the prompt list)."""
    return str(getattr(item, "id", f"p{j}"))


@dataclass(frozen=True)
class PlannedRun:
    """One (controller, seed, prompt batch) run of the plan.

    Attributes:
        entry: the controller's config.
        seed: the seed.
        start: the index of the batch's first prompt.
        prompt_ids: the ids of the batch's D prompts.
    """

    entry: BenchController
    seed: int
    start: int
    prompt_ids: tuple[str, ...]

    @property
    def key(self) -> str:
        """:func:`~ctrlalign.bench.result.run_key` of this run."""
        return run_key(self.entry.key, self.seed, self.prompt_ids)


def make_plan(cfg: BenchConfig, items: Sequence[Any]) -> list[PlannedRun]:
    """Every run, batch-major: for each prompt batch, for each seed, for each controller."""
    D = cfg.batch_prompts
    plan = []
    for start in range(0, len(items), D):
        ids = tuple(item_id(it, start + j) for j, it in enumerate(items[start: start + D]))
        plan += [PlannedRun(entry, seed, start, ids) for seed in cfg.seeds for entry in cfg.all_controllers()]
    return plan


def _old_settings(stored: StoredBench, path: str) -> dict[str, Any]:
    """Controller label → settings, from the config of a file of the format before the store."""
    try:
        old_cfg = BenchConfig.model_validate(stored.result.config)
    except ValueError as exc:
        raise CorruptResultsError(f"{path} cannot be read as a bench result ({str(exc).splitlines()[0]}); "
                                  "move it away, or rerun with --overwrite to replace it") from None
    return {c.key: c.model_dump(mode="json") for c in old_cfg.all_controllers()}


def resume(stored: StoredBench, store: Store, cfg: BenchConfig, plan: list[PlannedRun]) -> list[str]:
    """The keys of the runs in ``stored`` to keep (the plan still makes them).

    Raises:
        ConfigChangedError: the results would mix with this config's (module docstring); the
            message names what changed and says to use ``--overwrite`` or another ``--output``.
        CorruptResultsError: a file of the old format whose config is not a bench config.
    """
    old = stored.result
    identity = stored.identity if stored.identity is not None else bench_identity(old.config)
    changed = config_diff(identity, bench_identity(cfg.model_dump(mode="json")))
    settings = {r["controller"]: stored.settings.get(run_key(r["controller"], r["seed"], r["prompt_ids"]))
                for r in old.runs}
    if any(v is None for v in settings.values()):
        settings = {**_old_settings(stored, str(store.path)), **{k: v for k, v in settings.items() if v is not None}}
    new = {c.key: c.model_dump(mode="json") for c in cfg.all_controllers()}
    changed += [f"controllers[{k}]" for k in sorted({r["controller"] for r in old.runs})
                if settings.get(k) != new.get(k)]
    if changed:
        raise ConfigChangedError(store.refusal(changed))
    fix = f"use --overwrite to discard them, or choose another {store.option}"
    lost = sorted({i for r in old.runs for i in r["prompt_ids"]} - {i for p in plan for i in p.prompt_ids})
    if lost:
        raise ConfigChangedError(f"{store.path} holds results for prompts this config no longer includes "
                                 f"({', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}); {fix}")
    gone = sorted({int(r["seed"]) for r in old.runs} - {int(p.seed) for p in plan})
    if gone:
        raise ConfigChangedError(f"{store.path} holds results for seeds this config no longer includes "
                                 f"({', '.join(map(str, gone))}); {fix}")
    wanted = {p.key for p in plan}
    return [k for k in (run_key(r["controller"], r["seed"], r["prompt_ids"]) for r in old.runs) if k in wanted]


def kept_part(old: BenchResult, keys: list[str]) -> tuple[list[dict[str, Any]], ...]:
    """The runs, records (without their scores, :data:`~ctrlalign.bench.result.SCORE_FIELDS`) and
    traces of ``old`` that belong to the runs ``keys``."""
    keep = set(keys)
    runs = [r for r in old.runs if run_key(r["controller"], r["seed"], r["prompt_ids"]) in keep]
    covered = {(r["controller"], int(r["seed"]), i) for r in runs for i in r["prompt_ids"]}
    records = [{k: v for k, v in r.items() if k not in SCORE_FIELDS} for r in old.records
               if (r["controller"], int(r["seed"]), r["prompt_id"]) in covered]
    traces = [t for t in old.traces if (t["controller"], int(t["seed"]), t["prompt_id"]) in covered]
    return runs, records, traces


def in_plan_order(result: BenchResult, plan: list[PlannedRun]) -> None:
    """Sort runs, records and traces by their run's place in the plan, so a resumed result is
    ordered like an uninterrupted one."""
    rank = {p.key: j for j, p in enumerate(plan)}
    of_prompt = {(p.entry.key, int(p.seed), i): j for j, p in enumerate(plan) for i in p.prompt_ids}
    result.runs.sort(key=lambda r: rank[run_key(r["controller"], r["seed"], r["prompt_ids"])])
    result.records.sort(key=lambda r: of_prompt[(r["controller"], int(r["seed"]), r["prompt_id"])])
    result.traces.sort(key=lambda t: of_prompt[(t["controller"], int(t["seed"]), t["prompt_id"])])
