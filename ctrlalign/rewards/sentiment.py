"""Lexicon sentiment: VADER's compound score."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import ConfigError
from ..dynamics.base import Outcomes
from .base import Reward, response_texts

__all__ = ["LexiconSentiment"]

_ANALYZER = None


def _analyzer():
    global _ANALYZER
    if _ANALYZER is None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as exc:
            raise ImportError("LexiconSentiment needs VADER: pip install vaderSentiment") from exc

        _ANALYZER = SentimentIntensityAnalyzer()
    return _ANALYZER


class LexiconSentiment(Reward):
    r"""r(x, y) = s · c(y), with c(y) ∈ [−1, 1] the VADER compound sentiment of the response.

    s = +1 for ``target="positive"`` (default), −1 for ``target="negative"``. The prompt is
    not used. Returns (D, n). Cheap (a lexicon), but saturates near 1 on instruction-tuned
    models: see "Reward headroom" on the Design page of the docs.
    """

    name = "sentiment"

    def __init__(self, target: str = "positive", *, name: str | None = None):
        if target not in ("positive", "negative"):
            raise ConfigError(f"target must be 'positive' or 'negative', got {target!r}")
        self.target = target
        self.sign = 1.0 if target == "positive" else -1.0
        if name is not None:
            self.name = name

    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        texts = response_texts(outcomes, f"reward {self.name!r}")
        a = _analyzer()
        vals = [[self.sign * a.polarity_scores(t)["compound"] for t in row] for row in texts]
        return torch.tensor(vals, dtype=torch.float32).reshape(outcomes.num_prompts, outcomes.num_samples)
