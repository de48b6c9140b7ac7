"""Dynamics: the systems under control.

* :mod:`~ctrlalign.dynamics.base` — the interfaces: :class:`Dynamics` (open loop),
  :class:`StepwiseDynamics` (start / advance / select), :class:`Outcomes`, :class:`Step`;
* :mod:`~ctrlalign.dynamics.causal_lm` — a ``transformers`` causal LM controlled on its
  pre-logits; :mod:`~ctrlalign.dynamics.head` its output head;
  :mod:`~ctrlalign.dynamics.engines` the engines that run it;
  :mod:`~ctrlalign.dynamics.decoding` the sampler they share;
* :mod:`~ctrlalign.dynamics.toy` — toy systems with closed-form answers.
"""

from .base import Dynamics, Outcomes, Sample, Step, StepwiseDynamics
from .causal_lm import CausalLM, CausalLMContext, CausalLMState
from .decoding import DecodeResult, SamplingConfig, sample_tokens, sample_with_logprobs
from .head import OutputHead, UnsupportedModelError

__all__ = [
    "CausalLM",
    "CausalLMContext",
    "CausalLMState",
    "DecodeResult",
    "Dynamics",
    "Outcomes",
    "OutputHead",
    "Sample",
    "SamplingConfig",
    "Step",
    "StepwiseDynamics",
    "UnsupportedModelError",
    "sample_tokens",
    "sample_with_logprobs",
]
