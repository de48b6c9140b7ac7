"""Resumable runs over prompt sets, sharded across ``torchrun`` ranks.

Results are one JSON line per prompt, appended (and fsync'ed) as each prompt batch finishes.
A run killed at any moment and started again with the same command skips the prompts already
written and never duplicates one; a partial last line (a kill mid-write) is dropped. The run's
configuration hash is kept in ``<output>.meta.json``: a changed configuration is refused
unless ``overwrite=True``.

Under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE`` > 1), rank r takes prompts
i ≡ r (mod N) and writes its own shard ``<output stem>.rank{r}-of-{N}.jsonl``; after a
barrier, rank 0 merges the shards into ``<output>`` in prompt order.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, config_hash
from .data import PromptItem, load_prompts

__all__ = ["ConfigChangedError", "read_results", "run", "versions"]


class ConfigChangedError(RuntimeError):
    """The output already holds results of a different configuration."""


def versions() -> dict[str, str]:
    """Versions of ctrlalign, torch, transformers and Python (recorded with results)."""
    import transformers

    from . import __version__

    return {"ctrlalign": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def read_results(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """Read a results file, tolerating a partial last line (dropped; truncated if ``repair``)."""
    p = Path(path)
    if not p.exists():
        return []
    raw = p.read_bytes()
    records, good_end, pos = [], 0, 0
    for line in raw.splitlines(keepends=True):
        pos += len(line)
        if not line.endswith(b"\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good_end = pos
    if repair and good_end < len(raw):
        with open(p, "r+b") as fh:
            fh.truncate(good_end)
    return records


def _append(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
        fh.flush()
        os.fsync(fh.fileno())


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return rank, world


def _shard_path(out: Path, rank: int, world: int) -> Path:
    return out if world == 1 else out.with_name(f"{out.stem}.rank{rank}-of-{world}.jsonl")


def _check_meta(cfg: RunConfig, out: Path, overwrite: bool, rank: int, world: int) -> str:
    h = config_hash(cfg)
    meta = out.with_name(out.name + ".meta.json")
    if meta.exists() and not overwrite:
        old = json.loads(meta.read_text())
        if old.get("hash") != h:
            diffs = _diff(old.get("identity", {}), cfg.identity())
            raise ConfigChangedError(
                f"{out} holds results of a different configuration (hash {old.get('hash')} != {h}; "
                f"changed: {', '.join(diffs) or 'unknown'}). Use --overwrite to discard them, or choose "
                f"another run.output"
            )
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        if overwrite:
            for p in [out, meta, *out.parent.glob(f"{out.stem}.rank*-of-*.jsonl")]:
                if p.exists():
                    p.unlink()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_name(meta.name + ".tmp")
        tmp.write_text(json.dumps({"hash": h, "identity": cfg.identity(), "config": cfg.model_dump(mode="json")},
                                  indent=2))
        tmp.replace(meta)
    if world > 1:
        torch.distributed.barrier()
    return h


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def build_dynamics(cfg: RunConfig):
    """The CausalLM of ``cfg.model``."""
    from .dynamics import CausalLM
    from .dynamics.decoding import SamplingConfig

    m = cfg.model
    sampling = SamplingConfig(max_new_tokens=m.max_new_tokens, temperature=m.temperature, top_k=m.top_k,
                              top_p=m.top_p, greedy=m.greedy)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[m.dtype]
    kw: dict[str, Any] = dict(device=m.device, dtype=dtype, sampling=sampling, chat_template=m.chat_template,
                              system_prompt=m.system_prompt)
    if m.engine != "eager":
        kw["engine"] = m.engine
    return CausalLM.from_pretrained(m.name, **kw)


def solve_batch(dynamics, reward, controller, items: list[PromptItem], seed: int, base: bool,
                progress: bool = False, selection=None, common_random_numbers: bool = False) -> list[dict[str, Any]]:
    """Align a batch of prompts (and optionally sample the plain model); one record each."""
    from ._checks import RewardError
    from .align import align
    from .controllers import BestOfN

    texts = [it.text for it in items]
    t0 = time.perf_counter()
    context = dynamics.prepare(texts)
    try:
        res = align(dynamics, reward, controller, texts, seed=seed, context=context, progress=progress,
                    selection=selection, common_random_numbers=common_random_numbers)
        base_res = None
        if base:
            plain = BestOfN(num_samples=1, num_iterations=1, sigma=0.0, horizon=controller.horizon)
            base_res = align(dynamics, reward, plain, texts, seed=seed, context=context)
    except RewardError as exc:
        ids = ", ".join(f"{d}={it.id}" for d, it in enumerate(items))
        raise RewardError(f"{exc} [prompt index in this batch = prompt id: {ids}]") from exc
    seconds = time.perf_counter() - t0
    records = []
    for d, it in enumerate(items):
        rec: dict[str, Any] = {
            "id": it.id,
            "prompt": it.text,
            "response": res.responses[d].text,
            "reward": float(res.rewards[d]),
            "controller": controller.name,
            "space": res.space.describe(),
            "selection": res.selection,
            "reward_calls": int(res.reward_calls[d]),
            "trace": res.prompt_trace(d),
        }
        if base_res is not None:
            rec["base_response"] = base_res.responses[d].text
            rec["base_reward"] = float(base_res.rewards[d])
        rec["seconds_batch"] = seconds
        records.append(rec)
    return records


def run(cfg: RunConfig, *, overwrite: bool = False, progress: bool = True,
        log: Callable[[str], None] = print, dynamics=None) -> Path:
    """Run (or resume) a configuration; returns the path of the merged results file."""
    rank, world = _dist()
    out = Path(cfg.run.output)
    h = _check_meta(cfg, out, overwrite, rank, world)
    items = load_prompts(cfg.prompts)
    if cfg.limit is not None:
        items = items[: cfg.limit]
    index = {it.id: i for i, it in enumerate(items)}
    shard = _shard_path(out, rank, world)
    done = {r["id"] for r in read_results(shard, repair=True)} | {r["id"] for r in read_results(out)}
    mine = [it for i, it in enumerate(items) if i % world == rank and it.id not in done]
    total_mine = sum(1 for i in range(len(items)) if i % world == rank)
    log(f"[rank {rank}/{world}] {len(items)} prompts, {total_mine} mine, {total_mine - len(mine)} already done, "
        f"writing {shard}")
    if mine:
        if dynamics is None:
            dynamics = build_dynamics(cfg)
        reward = cfg.build_reward()
        controller = cfg.controller.build()
        vers = versions()
        D = cfg.run.batch_prompts
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_mine, initial=total_mine - len(mine), desc=f"rank {rank} prompts", unit="prompt")
        for start in range(0, len(mine), D):
            batch = mine[start: start + D]
            records = solve_batch(dynamics, reward, controller, batch, cfg.run.seed, cfg.run.base,
                                  selection=cfg.controller.build_selection(),
                                  common_random_numbers=cfg.controller.common_random_numbers)
            for rec in records:
                rec["index"] = index[rec["id"]]
                rec["config_hash"] = h
                rec["versions"] = vers
            _append(shard, records)
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
    if world > 1:
        torch.distributed.barrier()
        if rank == 0:
            merged: dict[str, dict[str, Any]] = {r["id"]: r for r in read_results(out)}
            for r in range(world):
                for rec in read_results(_shard_path(out, r, world)):
                    merged.setdefault(rec["id"], rec)
            ordered = sorted(merged.values(), key=lambda rec: rec.get("index", index.get(rec["id"], 0)))
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text("".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in ordered), encoding="utf-8")
            tmp.replace(out)
            log(f"merged {len(ordered)} results from {world} ranks into {out}")
        torch.distributed.barrier()
    return out
