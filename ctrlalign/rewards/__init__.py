"""Rewards: batched scorers of outcomes, shape (D, n).

Every plug-in loads its model lazily on the first call; importing this package is cheap.
"""

from .base import (
    CallableReward,
    Reward,
    WeightedSum,
    evaluate_reward,
    gather_samples,
    prompt_text,
    response_texts,
    safe_call,
    select_outcomes,
)
from .classifier import SequenceClassifierReward
from .counting import CountingReward
from .embedding import EmbeddingSimilarity, embed
from .judge import DEFAULT_JUDGE_TEMPLATE, LMJudge
from .registry import REWARDS, get_reward, register_reward
from .sentiment import LexiconSentiment
from .toxicity import Toxicity

__all__ = [
    "DEFAULT_JUDGE_TEMPLATE",
    "REWARDS",
    "CallableReward",
    "CountingReward",
    "EmbeddingSimilarity",
    "LMJudge",
    "LexiconSentiment",
    "Reward",
    "SequenceClassifierReward",
    "Toxicity",
    "WeightedSum",
    "embed",
    "evaluate_reward",
    "gather_samples",
    "get_reward",
    "prompt_text",
    "register_reward",
    "response_texts",
    "safe_call",
    "select_outcomes",
]
