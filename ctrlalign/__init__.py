"""ctrlalign: test-time alignment of language models as stochastic optimal control on pre-logits."""

__version__ = "0.1.0"

from . import theory
from ._checks import ConfigError, RewardError
from .dynamics import CausalLM, Dynamics, Outcomes, Sample, SamplingConfig
from .models import default_model_path, load_default
from .random import make_generators, prompt_seed
from .rewards import CallableReward, Reward, WeightedSum

__all__ = [
    "CallableReward",
    "CausalLM",
    "ConfigError",
    "Dynamics",
    "Outcomes",
    "Reward",
    "RewardError",
    "Sample",
    "SamplingConfig",
    "WeightedSum",
    "__version__",
    "default_model_path",
    "load_default",
    "make_generators",
    "prompt_seed",
    "theory",
]
