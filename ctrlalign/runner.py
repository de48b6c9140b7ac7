"""Resumable, sharded runs over prompt sets (building lives in :mod:`ctrlalign.build`, solving
in :mod:`ctrlalign.solve`, the file rules in :mod:`ctrlalign.store`).

Results go to a :class:`~ctrlalign.store.Store` of kind ``"run"``: a header line with the run's
identity (:meth:`~ctrlalign.config.RunConfig.identity`) and config, then one JSON line per
prompt, appended (and fsync'ed) as each prompt batch finishes. What keeps them from mixing or
getting lost:

* **One run per output.** A run holds an exclusive ``fcntl.flock`` on ``<output>.lock``
  (:func:`~ctrlalign.store.output_lock`) until it ends; a second run on the same output
  refuses at once, naming the holder. The lock file stays behind (removing it would race);
  a stale one is harmless, since the lock dies with its process.
* **Resume by prompt id and content.** A run started again with the same command skips the
  prompts already written and never duplicates one. A written prompt whose text has changed
  since (same id, new text) is refused unless ``overwrite=True`` — never kept with the old
  answer. Adding prompts, or raising ``limit``, continues the run.
* **Corruption is reported, not repaired.** A partial *last* line (a kill mid-write) is
  dropped and truncated; an unreadable line anywhere else stops the run with its line number,
  and nothing is deleted.
* **Validate, then write.** Prompts, output location, model, reward, controller and the
  model-dependent checks (:func:`~ctrlalign.build.check_run_fits`) all pass before the
  header is written or ``overwrite`` deletes anything. A changed configuration is refused
  (naming the changed fields) only when the output already holds results, so a failed start
  never blocks the corrected config.
* **Disk full / read-only**: reported as :class:`~ctrlalign.store.OutputError`; what is written stays, and the
  same command resumes once the cause is fixed. **Ctrl-C**: :class:`~ctrlalign.store.RunInterrupted` (a
  ``KeyboardInterrupt``) says how many results are saved.

With ``run.save_candidates``, every candidate of every iteration goes to
``<output stem>.candidates.jsonl`` (a store of kind ``"candidates"``: rows of
:class:`~ctrlalign.solve.CandidateRecorder`),
written just before its prompt's result; on resume, candidate rows of prompts without a result
are dropped first, so a prompt's candidates are never duplicated. When the run ends, rank 0
writes ``<output>.summary.json`` (:func:`~ctrlalign.solve.summarize`) and logs it.

Under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE`` > 1), rank r takes prompts
i ≡ r (mod N), uses GPU ``cuda:LOCAL_RANK`` when the device is ``cuda``, and writes its own
shard ``<output stem>.rank{r}-of-{N}.jsonl`` (locked as ``<shard>.lock``; rank 0 also holds
``<output>.lock``); after a barrier, rank 0 merges the shards into ``<output>`` in prompt order.
A failure on any rank before the run starts stops every rank.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from .build import (
    build_controller,
    build_dynamics,
    build_reward,
    build_selection,
    build_space,
    check_run_fits,
    versions,
)
from .config import RunConfig
from .data import PromptItem, load_prompts
from .solve import CandidateRecorder, solve_batch, summarize
from .store import (
    PromptChangedError,
    RunError,
    RunInterrupted,
    Store,
    StoreContents,
    check_output_path,
    output_lock,
    read_results,
    remove_files,
    write_atomic,
)

__all__ = ["candidates_path", "run"]

logger = logging.getLogger("ctrlalign")


# --------------------------------------------------------------------------------------------
# files


def _shard_path(out: Path, rank: int, world: int) -> Path:
    return out if world == 1 else out.with_name(f"{out.stem}.rank{rank}-of-{world}.jsonl")


def candidates_path(out: Path, rank: int = 0, world: int = 1) -> Path:
    """``<stem>.candidates.jsonl`` (or its rank shard ``<stem>.candidates.rank{r}-of-{N}.jsonl``)."""
    tail = "" if world == 1 else f".rank{rank}-of-{world}"
    return out.with_name(f"{out.stem}.candidates{tail}.jsonl")


def _summary_path(out: Path) -> Path:
    return out.with_name(out.name + ".summary.json")


def _owned_files(out: Path) -> list[Path]:
    """Every file a run on ``out`` writes (but the locks), and the ``.meta.json`` of older versions."""
    return [out, out.with_name(out.name + ".meta.json"), _summary_path(out), candidates_path(out),
            *out.parent.glob(f"{out.stem}.rank*-of-*.jsonl"), *out.parent.glob(f"{out.stem}.candidates.rank*-of-*.jsonl")]


# --------------------------------------------------------------------------------------------
# distributed


def _dist() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; joins the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return rank, world, local


def _all_agree(ok: bool, world: int) -> bool:
    """Whether every rank reports ok (always ``ok`` alone)."""
    if world == 1:
        return ok
    flag = torch.tensor([1 if ok else 0])
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def _together(world: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on every rank; if it fails on any, every rank raises (no rank is left waiting)."""
    try:
        value, err = fn(), None
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - re-raised below on every rank
        value, err = None, exc
    if not _all_agree(err is None, world):
        raise err if err is not None else RunError("another rank failed before the run started (see its message)")
    return value


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _local_device(device: str, world: int, local_rank: int) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun (each rank on its own GPU)."""
    if world > 1 and device == "cuda":
        return f"cuda:{local_rank}"
    return device


# --------------------------------------------------------------------------------------------
# resuming


def _done(contents: dict[Path, StoreContents], items: list[PromptItem], overwrite: bool) -> dict[str, dict[str, Any]]:
    """Results already written for these items, by id (none with ``overwrite``).

    Raises:
        PromptChangedError: a written prompt's text differs from the item's (without overwrite).
    """
    if overwrite:
        return {}
    texts = {it.id: it.text for it in items}
    done: dict[str, dict[str, Any]] = {}
    for path, content in contents.items():
        for rec in content.records:
            pid = rec["id"]
            if pid in texts and rec.get("prompt") != texts[pid]:
                raise PromptChangedError(
                    f"prompt {pid!r} changed since it was answered in {path} (was {str(rec.get('prompt'))!r:.80}, "
                    f"now {texts[pid]!r:.80}); give it a new id, or rerun everything with --overwrite")
            done.setdefault(pid, rec)
    return done


def _read(stores: list[Store], identity: dict[str, Any], overwrite: bool) -> dict[Path, StoreContents]:
    """What each store holds, after refusing records of another configuration (none read with
    ``overwrite``: they are deleted before the run writes).

    Raises:
        CorruptResultsError, ConfigChangedError: see :class:`~ctrlalign.store.Store`.
    """
    contents = {}
    for store in stores:
        contents[store.path] = StoreContents() if overwrite else store.read()
        store.check_identity(contents[store.path], identity)
    return contents


def _start(stores: list[Store], contents: dict[Path, StoreContents], header: dict[str, Any]) -> None:
    """Make each store ready for appending (:meth:`~ctrlalign.store.Store.start`)."""
    for store in stores:
        store.start(contents[store.path], header)


def _prune_candidates(store: Store, done: set[str], header: dict[str, Any]) -> None:
    """Drop candidate rows of prompts without a result (written before a kill)."""
    contents = store.read()
    kept = [r for r in contents.records if r["id"] in done]
    if len(kept) != len(contents.records):
        store.rewrite(header, kept)
    else:
        store.start(contents, header)


# --------------------------------------------------------------------------------------------
# the run


class _Built:
    """The run's objects (built only when there is work)."""

    def __init__(self, cfg: RunConfig, items: list[PromptItem], dynamics: Any, device: str) -> None:
        self.controller = build_controller(cfg.controller)
        self.selection = build_selection(cfg.controller)
        self.space = build_space(cfg.space)
        self.reward = build_reward(cfg.reward, items)
        if dynamics is None:
            dynamics = build_dynamics(cfg.model.model_copy(update={"device": device}))
        self.dynamics = dynamics
        check_run_fits(dynamics, self.controller, items, self.space)


def _merge(shards: list[Path], dest: Store, header: dict[str, Any], index: dict[str, int],
           key: Callable[[dict[str, Any]], Any]) -> int:
    """Rank 0: the records of ``dest`` and the shards, deduplicated by ``key``, in prompt order."""
    merged: dict[Any, dict[str, Any]] = {key(r): r for r in read_results(dest.path)}
    for shard in shards:
        for rec in read_results(shard):
            merged.setdefault(key(rec), rec)
    ordered = sorted(merged.values(), key=lambda rec: (rec.get("index", index.get(rec["id"], 0)),
                                                      rec.get("iteration", 0), rec.get("sample", 0)))
    dest.rewrite(header, ordered)
    return len(ordered)


def run(cfg: RunConfig, *, overwrite: bool = False, progress: bool = True,
        log: Callable[[str], None] | None = None, dynamics: Any = None) -> Path:
    """Run (or resume) a configuration; returns the path of the merged results file.

    Args:
        cfg: the validated run config.
        overwrite: discard the output's results (of any configuration) and start over.
        progress: show a progress bar over prompts.
        log: where progress lines go (default: the ``ctrlalign`` logger at INFO).
        dynamics: use this system instead of building ``cfg.model``.

    Raises:
        ConfigError: bad prompts, output location, model, device, σ, or long prompts.
        RunError: the output is locked, corrupt, holds another configuration or changed
            prompts, or cannot be written (:class:`~ctrlalign.store.OutputError`); see :mod:`ctrlalign.store`.
        RunInterrupted: Ctrl-C; what is written stays and the same call resumes.
        RewardError: the reward failed on a prompt (finished prompts stay written).
    """
    say = log or logger.info
    rank, world, local_rank = _dist()
    out = Path(cfg.run.output)
    shard = _shard_path(out, rank, world)
    cands = candidates_path(out, rank, world) if cfg.run.save_candidates else None

    def prepare() -> list[PromptItem]:
        check_output_path(out)
        items = load_prompts(cfg.prompts)
        return items if cfg.limit is None else items[: cfg.limit]

    items = _together(world, prepare)
    with ExitStack() as stack:
        def lock() -> None:
            if rank == 0:
                stack.enter_context(output_lock(out))
            if shard != out:
                stack.enter_context(output_lock(shard))

        _together(world, lock)
        index = {it.id: i for i, it in enumerate(items)}
        identity = cfg.identity()
        stores = [Store(p, "run", "run.output") for p in dict.fromkeys([shard, out])]
        contents = _together(world, lambda: _read(stores, identity, overwrite))
        done = _together(world, lambda: _done(contents, items, overwrite))
        mine = [it for i, it in enumerate(items) if i % world == rank and it.id not in done]
        total_mine = sum(1 for i in range(len(items)) if i % world == rank)
        say(f"[rank {rank}/{world}] {len(items)} prompts, {total_mine} mine, {total_mine - len(mine)} already done, "
            f"writing {shard}")
        device = _local_device(cfg.model.device, world, local_rank)
        built = _together(world, lambda: _Built(cfg, items, dynamics, device) if mine or overwrite else None)
        # validated: from here on the run writes (overwrite first deletes, on rank 0, then every rank starts)
        _together(world, lambda: remove_files(_owned_files(out)) if overwrite and rank == 0 else None)
        header = stores[0].header(identity, cfg.model_dump(mode="json"))
        _together(world, lambda: _start([s for s in stores if s.path == shard or rank == 0], contents, header))
        cand_store = None if cands is None else Store(cands, "candidates", "run.output")
        if cand_store is not None:
            _prune_candidates(cand_store, set(done), cand_store.header(identity, header["config"]))
        try:
            _solve_all(cfg, built, mine, total_mine, stores[0], cand_store, index, header["hash"], rank, progress)
        except KeyboardInterrupt:
            saved = len(read_results(shard))
            raise RunInterrupted(f"interrupted: {saved} of {total_mine} results are saved in {shard}; run the same "
                                 "command to resume") from None
        if world > 1:
            _barrier(world)
            if rank == 0:
                n = _merge([_shard_path(out, r, world) for r in range(world)], stores[-1], header, index,
                           lambda r: r["id"])
                if cand_store is not None:
                    cand_shards = [candidates_path(out, r, world) for r in range(world)]
                    cand_dest = Store(candidates_path(out), "candidates")
                    _merge(cand_shards, cand_dest, cand_dest.header(identity, header["config"]), index,
                           lambda r: (r["id"], r["iteration"], r["sample"]))
                say(f"merged {n} results from {world} ranks into {out}")
            _barrier(world)
        if rank == 0:
            _write_summary(out, items, say)
    return out


def _solve_all(cfg: RunConfig, built: _Built | None, mine: list[PromptItem], total_mine: int, shard: Store,
               cands: Store | None, index: dict[str, int], h: str, rank: int, progress: bool) -> None:
    """Solve this rank's remaining prompts batch by batch, appending as each batch finishes."""
    if not mine or built is None:
        return
    vers = versions()
    D = cfg.run.batch_prompts
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_mine, initial=total_mine - len(mine), desc=f"rank {rank} prompts", unit="prompt")

    def saved() -> str:
        return (f"; {len(read_results(shard.path))} results are saved in {shard.path} (a partial last line is repaired on "
                "the next run); fix the cause and run the same command to resume")

    try:
        for start in range(0, len(mine), D):
            batch = mine[start: start + D]
            recorder = CandidateRecorder([it.id for it in batch]) if cands is not None else None
            records = solve_batch(built.dynamics, built.reward, built.controller, batch, cfg.run.seed, cfg.run.base,
                                  selection=built.selection, common_random_numbers=cfg.controller.common_random_numbers,
                                  candidates=recorder, space=built.space)
            for rec in records:
                rec["index"] = index[rec["id"]]
                rec["config_hash"] = h
                rec["versions"] = vers
            if recorder is not None and cands is not None:
                cands.append(recorder.rows, saved)
            shard.append(records, saved)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()


def _write_summary(out: Path, items: list[PromptItem], say: Callable[[str], None]) -> None:
    """Summarise the results of these items into ``<output>.summary.json`` and the log."""
    ids = {it.id for it in items}
    records = [r for r in read_results(out) if r["id"] in ids]
    summary = summarize(records)
    write_atomic(_summary_path(out), json.dumps(summary, indent=2))
    for line in summary["lines"]:
        say(line)
