"""ctrlalign: test-time alignment of language models as stochastic optimal control on pre-logits."""

__version__ = "0.1.0"

from . import theory
from ._checks import ConfigError, RewardError
from .dynamics import Dynamics, Outcomes, Sample
from .random import make_generators, prompt_seed
from .rewards.toy import QuadraticReward, TableReward
from .dynamics.toy import LinearGaussian, SoftmaxHead
from .controllers import AISP, CEM, MPPI, BestOfN, Controller, ControllerState, SoftmaxSampling, StepInfo
from .cost import Cost, CostTerms
from .align import AlignmentResult, IterationRecord, align
from .rewards import (
    CallableReward,
    EmbeddingSimilarity,
    LexiconSentiment,
    LMJudge,
    Reward,
    SequenceClassifierReward,
    Toxicity,
    WeightedSum,
    evaluate_reward,
    get_reward,
)

__all__ = [
    "__version__",
    "theory",
    "ConfigError",
    "RewardError",
    "Dynamics",
    "Outcomes",
    "Sample",
    "make_generators",
    "prompt_seed",
    "Reward",
    "CallableReward",
    "WeightedSum",
    "QuadraticReward",
    "TableReward",
    "LinearGaussian",
    "SoftmaxHead",
    "Controller",
    "ControllerState",
    "StepInfo",
    "AISP",
    "MPPI",
    "BestOfN",
    "SoftmaxSampling",
    "CEM",
    "Cost",
    "CostTerms",
    "align",
    "AlignmentResult",
    "IterationRecord",
    "evaluate_reward",
    "get_reward",
    "SequenceClassifierReward",
    "LexiconSentiment",
    "EmbeddingSimilarity",
    "LMJudge",
    "Toxicity",
]
