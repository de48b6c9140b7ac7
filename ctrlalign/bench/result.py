"""What a benchmark produced (:class:`BenchResult`) and how it is kept on disk.

A benchmark's output is a :class:`~ctrlalign.store.Store` of kind ``"bench"`` (JSON Lines):

* the **header** (line 1): the identity (the config fields that determine results,
  :func:`~ctrlalign.bench.config.bench_identity`), the config and the run metadata (``meta``);
* one **run line** per finished (controller, seed, prompt batch) run, appended as it finishes:
  ``{"id": run_key, "settings": {controller's config}, "run": {...}, "records": [...],
  "traces": [...]}`` (:func:`run_key`; the records and traces are those of
  :attr:`BenchResult.records` and :attr:`BenchResult.traces`, before scoring);
* a **start line** ``{"id": "start", "config", "meta"}`` each time a run resumes the file;
* a **finished line** ``{"id": "finished", "config", "meta", "order", "scores", "summary",
  "comparisons"}`` when a benchmark is scored and summarised: ``order`` lists the run keys in
  plan order, ``scores`` holds, for every record in that order, the fields
  :func:`~ctrlalign.bench.score.finish_bench` added (:data:`SCORE_FIELDS`).

Reading takes the config and meta of the last start or finished line, and applies the finished
line only when no run line follows it. A results file of the format before the store (one JSON
object with ``config``, ``meta``, ``records``, ``traces``, ``runs``, ``summary``,
``comparisons``) is still read; the first run that resumes it rewrites it as a store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..store import CorruptResultsError, Store, StoreContents, is_store
from .config import bench_identity

__all__ = ["FINISHED", "SCORE_FIELDS", "START", "BenchResult", "StoredBench", "finished_line", "read_bench", "run_key",
           "run_lines"]

#: ids of the store lines that are not runs
START, FINISHED = "start", "finished"
#: the fields :func:`~ctrlalign.bench.score.finish_bench` adds to records
SCORE_FIELDS = ("judge", "coherence", "fluency", "coherence_mpnet", "paper_diversity", "diversity_across_seeds")


def run_key(controller: str, seed: int, prompt_ids: Sequence[str]) -> str:
    """The key of one (controller, seed, prompt batch) run: ``'["aisp", 0, ["p0", "p1"]]'``."""
    return json.dumps([controller, int(seed), list(prompt_ids)], ensure_ascii=False)


@dataclass
class BenchResult:
    """Everything a benchmark produced (JSON-serialisable through :meth:`to_dict`).

    Attributes:
        config: the validated config as a dict.
        meta: machine, versions, model scale (‖w‖), per-controller σ and σ·‖w‖, timings.
        records: one dict per (controller, N, seed, prompt) (:mod:`~ctrlalign.bench.execute`).
        traces: one dict per (controller, seed, prompt): the per-iteration trace of ``align``, each
            round with its n rewards (``"rewards"``; the pools of the reference frontier).
        runs: one dict per (controller, seed, prompt batch): wall-clock, tokens, memory.
        summary: one dict per (controller, N): means and CIs (filled by
            :func:`~ctrlalign.bench.summary.summarize`).
        comparisons: paired differences against the baselines (filled by
            :func:`~ctrlalign.bench.summary.compare`).
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
        """Write the whole result as a store (module docstring), atomically; returns the path.

        A benchmark appends as it runs and never needs this; it is for results built or
        finished in memory (e.g. a stopped run summarised afterwards).
        """
        store = Store(path, "bench")
        header = store.header(bench_identity(self.config), self.config, meta=self.meta)
        lines = run_lines(self)
        if self.summary:
            lines.append(finished_line(self))
        store.rewrite(header, lines)
        return store.path

    @classmethod
    def load(cls, path: str | Path) -> BenchResult:
        """Read a result written by a benchmark (a store, or the format before it).

        Raises:
            FileNotFoundError: there is no such file.
            CorruptResultsError: it cannot be read (the file and, in a store, the line named).
        """
        stored = read_bench(path)
        if stored is None:
            raise FileNotFoundError(f"no bench result at {path}")
        return stored.result

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


# --------------------------------------------------------------------------------------------
# lines of the store


def _of_run(result: BenchResult) -> dict[tuple[str, int, str], str]:
    """(controller, seed, prompt id) → the key of the run that produced it."""
    return {(r["controller"], int(r["seed"]), i): run_key(r["controller"], r["seed"], r["prompt_ids"])
            for r in result.runs for i in r["prompt_ids"]}


def run_lines(result: BenchResult, settings: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One run line per run of ``result`` (module docstring), records and traces grouped by run,
    without the fields of :data:`SCORE_FIELDS`. ``settings``: controller label → its config."""
    of_run = _of_run(result)
    lines = {run_key(r["controller"], r["seed"], r["prompt_ids"]): {
        "id": run_key(r["controller"], r["seed"], r["prompt_ids"]),
        "settings": (settings or {}).get(r["controller"]), "run": r, "records": [], "traces": []}
        for r in result.runs}
    for rec in result.records:
        lines[of_run[(rec["controller"], int(rec["seed"]), rec["prompt_id"])]]["records"].append(
            {k: v for k, v in rec.items() if k not in SCORE_FIELDS})
    for t in result.traces:
        lines[of_run[(t["controller"], int(t["seed"]), t["prompt_id"])]]["traces"].append(t)
    return list(lines.values())


def finished_line(result: BenchResult) -> dict[str, Any]:
    """The finished line of a scored, summarised result (module docstring)."""
    return {"id": FINISHED, "config": result.config, "meta": result.meta,
            "order": [run_key(r["controller"], r["seed"], r["prompt_ids"]) for r in result.runs],
            "scores": [{k: rec[k] for k in SCORE_FIELDS if k in rec} for rec in result.records],
            "summary": result.summary, "comparisons": result.comparisons}


@dataclass
class StoredBench:
    """What a bench results file holds.

    Attributes:
        result: its runs, records and traces (with scores, summary and comparisons when finished).
        identity: the identity it was written under (None: a file of the format before the store).
        settings: run key → the controller's config that produced it (empty for the old format).
        contents: the store's lines (None for the old format).
    """

    result: BenchResult
    identity: dict[str, Any] | None = None
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: StoreContents | None = None

    @property
    def legacy(self) -> bool:
        """Whether the file is of the format before the store (rewritten when resumed)."""
        return self.contents is None


#: the fields of each kind of store line, and their JSON types (checked when a file is read)
_LINE_FIELDS: dict[str, dict[str, type]] = {
    START: {"config": dict, "meta": dict},
    FINISHED: {"config": dict, "meta": dict, "order": list, "scores": list, "summary": list, "comparisons": list},
    "run": {"run": dict, "records": list, "traces": list},
}
_LIST_OF_DICTS = ("records", "traces", "runs", "scores", "summary", "comparisons")
#: the keys every record, trace and run must have (what results are grouped and paired by)
_KEYS = {"records": ("controller", "budget", "seed", "prompt_id", "reward"),
         "traces": ("controller", "seed", "prompt_id"), "runs": ("controller", "seed", "prompt_ids"),
         "run": ("controller", "seed", "prompt_ids")}


def _check_fields(obj: dict[str, Any], fields: dict[str, type], where: str) -> None:
    """Refuse ``obj`` unless it has each field of ``fields`` with its JSON type (lists of records
    holding objects), naming ``where`` (the file and line) and the field."""
    for key, kind in fields.items():
        value = obj.get(key)
        if not isinstance(value, kind) or (kind is list and key in _LIST_OF_DICTS
                                           and not all(isinstance(x, dict) for x in value)):
            what = "missing" if key not in obj else f"of type {type(value).__name__}"
            want = "a list of objects" if kind is list and key in _LIST_OF_DICTS else f"an object of type {kind.__name__}"
            raise CorruptResultsError(f"{where}: field {key!r} is {what}, expected {want}: not a bench result. "
                                      "Move the file away, or rerun with --overwrite to replace it")
        items = value if isinstance(value, list) else [value]
        for j, item in enumerate(items):
            missing = [k for k in _KEYS.get(key, ()) if k not in item]
            if missing:
                at = f"{key}[{j}]" if isinstance(value, list) else key
                raise CorruptResultsError(f"{where}: {at} has no {', '.join(map(repr, missing))}: not a bench result. "
                                          "Move the file away, or rerun with --overwrite to replace it")


def _from_lines(contents: StoreContents, path: Path) -> StoredBench:
    header = contents.header or {}
    config, meta = header.get("config", {}), header.get("meta", {})
    runs: dict[str, dict[str, Any]] = {}
    finished = None
    for no, line in enumerate(contents.records, 2 if contents.headed else 1):
        _check_fields(line, _LINE_FIELDS.get(line["id"], _LINE_FIELDS["run"]), f"{path}:{no}")
        if line["id"] in (START, FINISHED):
            config, meta = line["config"], line["meta"]
            finished = line if line["id"] == FINISHED else None
        else:
            runs.pop(line["id"], None)
            runs[line["id"]] = line
            finished = None
    keys = list(runs)
    if finished is not None:
        rank = {k: j for j, k in enumerate(finished["order"])}
        keys.sort(key=lambda k: rank.get(k, len(rank)))
    result = BenchResult(config=config, meta=meta)
    for k in keys:
        result.runs.append(runs[k]["run"])
        result.records += runs[k]["records"]
        result.traces += runs[k]["traces"]
    if finished is not None and len(finished["scores"]) == len(result.records):
        for rec, scores in zip(result.records, finished["scores"]):
            rec.update(scores)
        result.summary, result.comparisons = finished["summary"], finished["comparisons"]
    return StoredBench(result, header.get("identity"), {k: runs[k].get("settings") for k in keys}, contents)


def read_bench(path: str | Path) -> StoredBench | None:
    """What the bench results file ``path`` holds (None: no file).

    Raises:
        CorruptResultsError: naming the file (and, in a store, the line) that cannot be read.
    """
    p = Path(path)
    if not p.exists():
        return None
    if is_store(p):
        return _from_lines(Store(p, "bench").read(), p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        result = BenchResult(**data)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CorruptResultsError(f"{p} cannot be read as a bench result ({str(exc).splitlines()[0]}); "
                                  "move it away, or rerun with --overwrite to replace it") from None
    _check_fields(vars(result), {"config": dict, "meta": dict, "records": list, "traces": list, "runs": list,
                                 "summary": list, "comparisons": list}, str(p))
    return StoredBench(result)

