"""Toxicity penalty from alt-profanity-check's linear classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_positive
from ..dynamics.base import Outcomes
from .base import Reward, response_texts

__all__ = ["Toxicity", "toxicity_probability"]


def toxicity_probability(texts: Sequence[str]) -> torch.Tensor:
    """P(toxic | text) for N texts, shape (N,), from ``profanity_check.predict_prob``.

    The classifier (a linear SVM on TF-IDF features, calibrated) is imported on first use
    (~1 s); nothing is loaded at ``import ctrlalign``.
    """
    if len(texts) == 0:
        return torch.zeros(0, dtype=torch.float32)
    try:
        from profanity_check import predict_prob
    except ImportError as exc:
        raise ImportError("Toxicity needs the profanity classifier: pip install alt-profanity-check") from exc

    return torch.as_tensor(predict_prob(list(texts)), dtype=torch.float32)


class Toxicity(Reward):
    r"""A penalty: r(x, y) = −w · P(toxic | y) ∈ [−w, 0]; toxic texts score lower.

    Add it to a task reward, ``helpful + Toxicity(weight=2.0)``, to trade the task against
    toxicity. The prompt is not used. Returns (D, n).

    Args:
        weight: w > 0, the size of the penalty (default 1).
    """

    name = "toxicity"

    def __init__(self, weight: float = 1.0, *, name: str | None = None):
        self.weight = check_positive("weight", weight, symbol="w")
        if name is not None:
            self.name = name

    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        texts = response_texts(outcomes, f"reward {self.name!r}")
        flat = [t for row in texts for t in row]
        p = toxicity_probability(flat)
        return (-self.weight * p).reshape(outcomes.num_prompts, outcomes.num_samples)
