"""Resumable, sharded output for runs over prompt sets (building lives in :mod:`ctrlalign.build`,
solving in :mod:`ctrlalign.solve`).

Results are one JSON line per prompt, appended (and fsync'ed) as each prompt batch finishes.
What keeps them from mixing or getting lost:

* **One run per output.** A run holds an exclusive ``fcntl.flock`` on ``<output>.lock`` (its
  PID, host and start time are written in it) until it ends; a second run on the same output
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
  configuration is recorded in ``<output>.meta.json`` or ``overwrite`` deletes anything. A
  changed configuration (:meth:`~ctrlalign.config.RunConfig.identity`) is refused only when the
  output already holds results, so a failed start never blocks the corrected config.
* **Disk full / read-only**: reported as :class:`OutputError`; what is written stays, and the
  same command resumes once the cause is fixed. **Ctrl-C**: :class:`RunInterrupted` (a
  ``KeyboardInterrupt``) says how many results are saved.

With ``run.save_candidates``, every candidate of every iteration goes to
``<output stem>.candidates.jsonl`` (rows of :class:`~ctrlalign.solve.CandidateRecorder`),
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

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from ._checks import ConfigError
from .build import (
    build_controller,
    build_reward,
    build_selection,
    build_space,
    check_run_fits,
    versions,
)
from .build import build_dynamics as _build_dynamics
from .config import RunConfig, config_hash
from .data import PromptItem, load_prompts
from .solve import CandidateRecorder, solve_batch, summarize

__all__ = [
    "ConfigChangedError",
    "CorruptResultsError",
    "OutputError",
    "OutputLockedError",
    "PromptChangedError",
    "RunError",
    "RunInterrupted",
    "candidates_path",
    "check_output_path",
    "config_diff",
    "output_lock",
    "read_results",
    "run",
]

logger = logging.getLogger("ctrlalign")


class RunError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


class ConfigChangedError(RunError):
    """The output already holds results of a different configuration."""


class OutputLockedError(RunError):
    """Another run holds the output's lock."""


class PromptChangedError(RunError):
    """A prompt already answered in the output has a different text now."""


class CorruptResultsError(RunError):
    """A line of a results file (not a partial last line) cannot be read."""


class OutputError(RunError):
    """The output cannot be written (read-only, disk full, not a directory, ...)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``str()`` says what is saved and how to resume."""


# --------------------------------------------------------------------------------------------
# files


def _io_error(path: Path, exc: OSError, saved: str = "") -> OutputError:
    """An OSError on ``path`` as a one-line :class:`OutputError`."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENOTDIR: "a part of the path is a file, not a folder",
               errno.EISDIR: "it is a directory"}
    reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
    return OutputError(f"cannot write {path}: {reason}{saved}")


def check_output_path(out: Path) -> None:
    """Refuse an output that is a directory or lies under a regular file.

    Raises:
        ConfigError: naming the output and the offending path.
    """
    if out.is_dir():
        raise ConfigError(f"run.output {str(out)!r} is a directory; name a file, e.g. {str(out / 'results.jsonl')!r}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"run.output {str(out)!r}: {str(parent)!r} is a file, not a folder")
            break


def read_results(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a results (or candidates) file.

    A partial last line (no final newline: a kill mid-write) is dropped, and truncated away if
    ``repair``. Any other line that is not a JSON object with an ``id`` raises.

    Raises:
        CorruptResultsError: naming the file and line number; the file is left as it was.
    """
    p = Path(path)
    if not p.exists():
        return []
    raw = p.read_bytes()
    records: list[dict[str, Any]] = []
    good_end = 0
    for no, line in enumerate(raw.splitlines(keepends=True), 1):
        if not line.endswith(b"\n"):
            break  # partial last line
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptResultsError(
                f"{p}:{no}: corrupt line ({getattr(exc, 'msg', exc)}); nothing was changed. Fix or delete that "
                "line (its prompt is then run again), or start over with --overwrite") from None
        if not isinstance(rec, dict) or "id" not in rec:
            raise CorruptResultsError(f"{p}:{no}: not a result record (a JSON object with an 'id'); nothing was "
                                      "changed. Fix or delete that line, or start over with --overwrite")
        records.append(rec)
        good_end += len(line)
    if repair and good_end < len(raw):
        with open(p, "r+b") as fh:
            fh.truncate(good_end)
    return records


def _append(path: Path, records: Iterable[dict[str, Any]], saved: Callable[[], str]) -> None:
    """Append JSON lines and fsync; an OSError becomes an :class:`OutputError`."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise _io_error(path, exc, saved()) from None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise _io_error(path, exc) from None


def _shard_path(out: Path, rank: int, world: int) -> Path:
    return out if world == 1 else out.with_name(f"{out.stem}.rank{rank}-of-{world}.jsonl")


def candidates_path(out: Path, rank: int = 0, world: int = 1) -> Path:
    """``<stem>.candidates.jsonl`` (or its rank shard ``<stem>.candidates.rank{r}-of-{N}.jsonl``)."""
    tail = "" if world == 1 else f".rank{rank}-of-{world}"
    return out.with_name(f"{out.stem}.candidates{tail}.jsonl")


def _meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def _summary_path(out: Path) -> Path:
    return out.with_name(out.name + ".summary.json")


def _owned_files(out: Path) -> list[Path]:
    """Every file a run on ``out`` writes (but the locks)."""
    return [out, _meta_path(out), _summary_path(out), candidates_path(out),
            *out.parent.glob(f"{out.stem}.rank*-of-*.jsonl"), *out.parent.glob(f"{out.stem}.candidates.rank*-of-*.jsonl")]


# --------------------------------------------------------------------------------------------
# locking


@contextmanager
def output_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking ``flock`` on ``<target>.lock`` (holder info inside).

    Raises:
        OutputLockedError: another process holds it (named by the info it wrote).
        OutputError: the lock file cannot be created (read-only, permission, ...).
    """
    lock = target.with_name(target.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fh: IO[str] = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    except OSError as exc:
        raise _io_error(lock, exc) from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise OutputLockedError(f"{target} is in use by another run ({holder}); wait for it to finish, or "
                                    "choose another run.output") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the flock


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


def _done(paths: list[Path], items: list[PromptItem], overwrite: bool) -> dict[str, dict[str, Any]]:
    """Results already written for these items, by id (none with ``overwrite``).

    Raises:
        PromptChangedError: a written prompt's text differs from the item's (without overwrite).
        CorruptResultsError: see :func:`read_results`.
    """
    if overwrite:
        return {}
    texts = {it.id: it.text for it in items}
    done: dict[str, dict[str, Any]] = {}
    for i, path in enumerate(dict.fromkeys(paths)):
        for rec in read_results(path, repair=i == 0):
            pid = rec["id"]
            if pid in texts and rec.get("prompt") != texts[pid]:
                raise PromptChangedError(
                    f"prompt {pid!r} changed since it was answered in {path} (was {str(rec.get('prompt'))!r:.80}, "
                    f"now {texts[pid]!r:.80}); give it a new id, or rerun everything with --overwrite")
            done.setdefault(pid, rec)
    return done


def _check_meta(cfg: RunConfig, out: Path, has_results: bool, overwrite: bool) -> str:
    """The config hash, after refusing a changed configuration when results exist."""
    h = config_hash(cfg)
    meta = _meta_path(out)
    if overwrite or not has_results or not meta.exists():
        return h
    try:
        old = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptResultsError(f"{meta} cannot be read ({exc}); it records the configuration of the results "
                                  f"in {out}. Restore it, or start over with --overwrite") from None
    if old.get("hash") != h:
        diffs = config_diff(old.get("identity", {}), cfg.identity())
        raise ConfigChangedError(
            f"{out} holds results of a different configuration (hash {old.get('hash')} != {h}; "
            f"changed: {', '.join(diffs) or 'unknown'}). Use --overwrite to discard them, or choose "
            f"another run.output")
    return h


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted paths at which two nested dicts differ (``[]``: equal), e.g. ``["model.name"]``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _prune_candidates(path: Path, done: set[str]) -> None:
    """Drop candidate rows of prompts without a result (written before a kill)."""
    rows = read_results(path, repair=True)
    kept = [r for r in rows if r["id"] in done]
    if len(kept) != len(rows):
        _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))


def _start_fresh(cfg: RunConfig, out: Path, h: str, overwrite: bool) -> None:
    """Rank 0: with ``overwrite``, delete the run's files; then record the config."""
    if overwrite:
        for p in _owned_files(out):
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:
                raise _io_error(p, exc) from None
    _write_atomic(_meta_path(out), json.dumps(
        {"hash": h, "identity": cfg.identity(), "config": cfg.model_dump(mode="json")}, indent=2))


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
            dynamics = _build_dynamics(cfg.model.model_copy(update={"device": device}))
        self.dynamics = dynamics
        check_run_fits(dynamics, self.controller, items)


def _merge(paths: list[Path], dest: Path, index: dict[str, int], key: Callable[[dict[str, Any]], Any]) -> int:
    """Rank 0: the records of ``dest`` and the shards, deduplicated by ``key``, in prompt order."""
    merged: dict[Any, dict[str, Any]] = {key(r): r for r in read_results(dest)}
    for p in paths:
        for rec in read_results(p):
            merged.setdefault(key(rec), rec)
    ordered = sorted(merged.values(), key=lambda rec: (rec.get("index", index.get(rec["id"], 0)),
                                                      rec.get("iteration", 0), rec.get("sample", 0)))
    _write_atomic(dest, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in ordered))
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
            prompts, or cannot be written (:class:`OutputError`).
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
        done = _together(world, lambda: _done([shard, out], items, overwrite))
        h = _together(world, lambda: _check_meta(cfg, out, bool(done) or _has_results(out), overwrite))
        mine = [it for i, it in enumerate(items) if i % world == rank and it.id not in done]
        total_mine = sum(1 for i in range(len(items)) if i % world == rank)
        say(f"[rank {rank}/{world}] {len(items)} prompts, {total_mine} mine, {total_mine - len(mine)} already done, "
            f"writing {shard}")
        device = _local_device(cfg.model.device, world, local_rank)
        built = _together(world, lambda: _Built(cfg, items, dynamics, device) if mine or overwrite else None)
        if rank == 0:
            _together(world, lambda: _start_fresh(cfg, out, h, overwrite))
        else:
            _together(world, lambda: None)
        if cands is not None:
            _prune_candidates(cands, set(done))
        try:
            _solve_all(cfg, built, mine, total_mine, shard, cands, index, h, rank, progress)
        except KeyboardInterrupt:
            saved = len(read_results(shard))
            raise RunInterrupted(f"interrupted: {saved} of {total_mine} results are saved in {shard}; run the same "
                                 "command to resume") from None
        if world > 1:
            _barrier(world)
            if rank == 0:
                shards = [_shard_path(out, r, world) for r in range(world)]
                n = _merge(shards, out, index, lambda r: r["id"])
                if cfg.run.save_candidates:
                    _merge([candidates_path(out, r, world) for r in range(world)], candidates_path(out), index,
                           lambda r: (r["id"], r["iteration"], r["sample"]))
                say(f"merged {n} results from {world} ranks into {out}")
            _barrier(world)
        if rank == 0:
            _write_summary(out, items, say)
    return out


def _has_results(out: Path) -> bool:
    return out.exists() and out.stat().st_size > 0 or any(
        p.stat().st_size > 0 for p in out.parent.glob(f"{out.stem}.rank*-of-*.jsonl"))


def _solve_all(cfg: RunConfig, built: _Built | None, mine: list[PromptItem], total_mine: int, shard: Path,
               cands: Path | None, index: dict[str, int], h: str, rank: int, progress: bool) -> None:
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
        return (f"; {len(read_results(shard))} results are saved in {shard} (a partial last line is repaired on "
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
                _append(cands, recorder.rows, saved)
            _append(shard, records, saved)
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
    _write_atomic(_summary_path(out), json.dumps(summary, indent=2))
    for line in summary["lines"]:
        say(line)


def build_dynamics(cfg: RunConfig) -> Any:
    """Deprecated: use :func:`ctrlalign.build.build_dynamics` with ``cfg.model``. Kept only
    until the bench harness calls ``ctrlalign.build.build_dynamics(cfg.model)`` directly."""
    return _build_dynamics(cfg.model)
