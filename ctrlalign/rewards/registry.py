"""Rewards by config name: ``get_reward("sentiment", target="negative")``."""

from __future__ import annotations

from typing import Any

from .._checks import ConfigError
from .base import Reward
from .classifier import SequenceClassifierReward
from .embedding import EmbeddingSimilarity
from .judge import LMJudge
from .sentiment import LexiconSentiment
from .toxicity import Toxicity

__all__ = ["REWARDS", "get_reward", "register_reward"]

#: config name → reward class. Extend with :func:`register_reward`.
REWARDS: dict[str, type[Reward]] = {
    "sentiment": LexiconSentiment,
    "embedding": EmbeddingSimilarity,
    "judge": LMJudge,
    "toxicity": Toxicity,
    "classifier": SequenceClassifierReward,
}


def register_reward(name: str, cls: type[Reward]) -> None:
    """Make ``cls`` available to :func:`get_reward` (and configs) under ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Reward)):
        raise TypeError(f"register_reward needs a Reward subclass, got {cls!r}")
    REWARDS[str(name)] = cls


def get_reward(name: str, **kwargs: Any) -> Reward:
    """The reward called ``name`` in configs, built with ``kwargs``. Nothing heavy loads here.

    ``"classifier"`` takes ``model=`` (a Hugging Face id or local path, loaded on first call)
    plus the keywords of :class:`SequenceClassifierReward`.

    Raises:
        ConfigError: for an unknown name (listing the allowed ones) or bad keywords.
    """
    key = str(name).strip().lower()
    if key not in REWARDS:
        raise ConfigError(f"unknown reward {name!r}; allowed: {sorted(REWARDS)}")
    cls = REWARDS[key]
    try:
        if key == "classifier" and "model" in kwargs and isinstance(kwargs["model"], str):
            return SequenceClassifierReward.from_pretrained(kwargs.pop("model"), **kwargs)
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad options for reward {name!r} ({cls.__name__}): {exc}") from None
