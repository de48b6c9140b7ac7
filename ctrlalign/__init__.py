"""ctrlalign: test-time alignment of language models as stochastic optimal control on pre-logits."""

__version__ = "0.1.0"
"""The package version."""

from . import closedloop, resampling, spaces, theory
from ._checks import ConfigError, RewardError
from .align import AlignmentResult, Iteration, IterationRecord, align, align_stream
from .closedloop import SMC, ClosedLoopResult, RecedingHorizon, SpeculativeRejection
from .controllers import AISP, CEM, MPPI, BestOfN, Controller, Proposal, SoftmaxSampling, StepInfo
from .cost import Cost, CostTerms
from .declare import HyperparameterError
from .diagnostics import Diagnostics
from .dynamics import CausalLM, Dynamics, Outcomes, Sample, SamplingConfig
from .dynamics.head import UnsupportedModelError
from .dynamics.toy import LinearGaussian, SoftmaxHead
from .models import default_model_path, load_default
from .random import make_generators, prompt_seed
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
from .rewards.toy import QuadraticReward, TableReward
from .selection import BestSoFar, FinalProposal, Reservoir, Selection
from .spaces import Blocks, ControlSpace, PerToken, Shared, Subspace
from .store import (
    ConfigChangedError,
    CorruptResultsError,
    OutputError,
    OutputLockedError,
    PromptChangedError,
    RunError,
    RunInterrupted,
)

__all__ = [
    "__version__",
    "theory",
    "closedloop",
    "resampling",
    # closed-loop control
    "SMC",
    "SpeculativeRejection",
    "RecedingHorizon",
    "ClosedLoopResult",
    # errors (docs/api/errors.md)
    "ConfigError",
    "HyperparameterError",
    "RewardError",
    "UnsupportedModelError",
    "RunError",
    "ConfigChangedError",
    "CorruptResultsError",
    "OutputError",
    "OutputLockedError",
    "PromptChangedError",
    "RunInterrupted",
    # dynamics
    "Dynamics",
    "Outcomes",
    "Sample",
    "CausalLM",
    "SamplingConfig",
    "LinearGaussian",
    "SoftmaxHead",
    "default_model_path",
    "load_default",
    # rewards
    "Reward",
    "CallableReward",
    "WeightedSum",
    "evaluate_reward",
    "get_reward",
    "SequenceClassifierReward",
    "LexiconSentiment",
    "EmbeddingSimilarity",
    "LMJudge",
    "Toxicity",
    "QuadraticReward",
    "TableReward",
    # controllers
    "Controller",
    "Proposal",
    "StepInfo",
    "AISP",
    "MPPI",
    "BestOfN",
    "SoftmaxSampling",
    "CEM",
    # control spaces
    "spaces",
    "ControlSpace",
    "PerToken",
    "Shared",
    "Blocks",
    "Subspace",
    # selection and diagnostics
    "Selection",
    "BestSoFar",
    "Reservoir",
    "FinalProposal",
    "Diagnostics",
    # cost and loop
    "Cost",
    "CostTerms",
    "align",
    "align_stream",
    "AlignmentResult",
    "IterationRecord",
    "Iteration",
    # seeding
    "make_generators",
    "prompt_seed",
]
