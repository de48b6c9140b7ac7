r"""Held-out scores of kept responses in one call: fluency, coherence, the published diversity.

For m kept (prompt, response) pairs — e.g. every record of a benchmark result, one per
(controller, prompt, seed) — :func:`heldout_scores` returns per-pair lists:

* ``fluency``: mean per-token log-likelihood under a packaged LM other than the policy
  (:func:`ctrlalign.models.fluency_model_for`, :class:`~ctrlalign.bench.fluency.FluencyScorer`),
  with ``fluency_tokens`` its token counts;
* ``coherence_mpnet``: :math:`\cos(e(x), e(y))` with all-mpnet-base-v2
  (:func:`ctrlalign.bench.coherence.coherence`), not the reward's MiniLM;
* ``paper_diversity``: the published per-response diversity
  (:func:`ctrlalign.bench.diversity.paper_diversity_one`); the mean over a controller's responses
  is the protocol's number.

Each distinct (prompt, response) pair is scored once. Loaded scorers are kept for the process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from . import diversity

__all__ = ["heldout_scores"]

_SCORERS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def _fluency_scorer(name: str, device: str) -> Any:
    from .fluency import FluencyScorer

    with _LOCK:
        key = (name, str(device))
        if key not in _SCORERS:
            _SCORERS[key] = FluencyScorer.packaged(name, device=device)
        return _SCORERS[key]


def heldout_scores(
    prompts: Sequence[Any],
    texts: Sequence[str],
    *,
    policy: str = "smollm2-135m",
    fluency: bool = True,
    coherence: bool = True,
    fluency_scorer: Any | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    r"""Held-out scores of m (prompt, response) pairs; ``prompts[i]`` is the prompt of ``texts[i]``.

    Args:
        prompts: m prompts (strings, or chat messages: their last user turn is embedded).
        texts: m responses.
        policy: the policy's name (packaged name or hub id): the fluency LM is
            :func:`~ctrlalign.models.fluency_model_for` (policy), never the policy itself.
        fluency: compute the fluency (loads the fluency LM: ~10 s the first time).
        coherence: compute the MPNet coherence (loads MPNet).
        fluency_scorer: a ready :class:`~ctrlalign.bench.fluency.FluencyScorer` to use instead
            (its model must not be the policy).
        device: where a packaged fluency LM is loaded.

    Returns:
        ``{"fluency": [m], "fluency_tokens": [m], "fluency_model": name, "coherence_mpnet": [m],
        "paper_diversity": [m]}`` (keys of what was computed; fluency is NaN for an empty
        response).
    """
    from ..rewards.base import prompt_text

    texts = [str(t) for t in texts]
    if len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts for {len(texts)} responses")
    ptext = [prompt_text(p) for p in prompts]
    pairs = list(dict.fromkeys(zip(ptext, texts)))
    where = {pr: k for k, pr in enumerate(pairs)}
    idx = [where[pr] for pr in zip(ptext, texts)]
    first_prompt = {}
    for p, pt in zip(prompts, ptext):
        first_prompt.setdefault(pt, p)
    out: dict[str, Any] = {"paper_diversity": [diversity.paper_diversity_one(t) for t in texts]}
    if fluency and texts:
        from ..models import fluency_model_for

        if fluency_scorer is None:
            name = fluency_model_for(policy)
            fluency_scorer = _fluency_scorer(name, device)
        else:
            name = type(fluency_scorer.model).__name__
        s = fluency_scorer.score([first_prompt[pt] for pt, _ in pairs], [t for _, t in pairs])
        mean, count = s.mean_logprob.tolist(), s.num_tokens.tolist()
        out.update(fluency=[mean[k] for k in idx], fluency_tokens=[count[k] for k in idx], fluency_model=name)
    if coherence and texts:
        from .coherence import coherence as coh

        c = coh([pt for pt, _ in pairs], [t for _, t in pairs]).tolist()
        out["coherence_mpnet"] = [c[k] for k in idx]
    return out
