"""Scoring the kept responses of a benchmark with what nothing optimised, then summarising.

:func:`finish_bench` adds to every record the held-out judge's score (``judge``), the
prompt–response coherence (``coherence``, MiniLM), with ``heldout`` the fluency under another
packaged LM, MPNet coherence and the published diversity, and the diversity of one prompt's
kept responses pooled over seeds (``diversity_across_seeds``); then it fills the summary and
the comparisons (:mod:`~ctrlalign.bench.summary`). These are the fields of
:data:`~ctrlalign.bench.result.SCORE_FIELDS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..build import build_reward
from ..dynamics.base import Outcomes
from ..rewards.base import Reward, evaluate_reward, prompt_text
from ..rewards.embedding import embed
from . import diversity
from .config import BenchConfig
from .heldout import heldout_scores
from .plan import item_id, load_items, prompt_of
from .result import BenchResult
from .summary import compare, summarize

__all__ = ["finish_bench"]


def finish_bench(result: BenchResult, cfg: BenchConfig, *, items: Sequence[Any] | None = None,
                 judge: Reward | None | bool = None, log: Callable[[str], None] | None = None) -> BenchResult:
    """Score the kept responses with the held-out judge and coherence, then summarise.

    :func:`~ctrlalign.bench.harness.run_bench` calls it at the end; call it on a partial
    result (a run stopped early, loaded with :meth:`~ctrlalign.bench.result.BenchResult.load`) to summarise what finished — only complete
    (controller, seed, prompt batch) runs are ever written, so in a stopped run the last
    prompt batch may be covered by some controllers and seeds only.
    """
    say = log or (lambda s: None)
    if items is None:
        ids = set(result.meta.get("prompt_ids", []))
        items = [it for j, it in enumerate(load_items(cfg)) if item_id(it, j) in ids]
    if judge is None:
        judge = build_reward(cfg.judge, items)
    elif judge is False:
        judge = None
    done = {r["prompt_id"] for r in result.records}
    items = [it for j, it in enumerate(items) if item_id(it, j) in done]
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
    id_to_prompt = {item_id(it, j): prompt_of(it) for j, it in enumerate(items)}
    recs = [r for r in result.records if r.get("text") is not None]
    scores = heldout_scores([id_to_prompt[r["prompt_id"]] for r in recs], [r["text"] for r in recs], policy=policy)
    result.meta["fluency_model"] = scores.get("fluency_model")
    for key in ("fluency", "coherence_mpnet", "paper_diversity"):
        for r, v in zip(recs, scores.get(key, [])):
            r[key] = v


def _has_texts(result: BenchResult) -> bool:
    return any(r.get("text") is not None for r in result.records)


def _score_kept(result: BenchResult, items: Sequence[Any], judge: Reward | None, coherence: bool) -> None:
    """Held-out judge score and prompt–response coherence of every kept response."""
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for r in result.records:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    id_to_prompt = {item_id(it, j): prompt_of(it) for j, it in enumerate(items)}
    want_coh = coherence and _has_texts(result)
    if want_coh:
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
        div = diversity.diversity([r["text"] for r in recs]) if len(recs) > 1 else None
        for r in recs:
            r["diversity_across_seeds"] = div
