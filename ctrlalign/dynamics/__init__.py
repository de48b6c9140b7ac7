"""Dynamics: the systems under control."""

from .base import Dynamics, Outcomes, Sample
from .causal_lm import CausalLM, CausalLMContext, OutputHead, UnsupportedModelError
from .decoding import DecodeResult, SamplingConfig, sample_tokens, sample_with_logprobs

__all__ = [
    "CausalLM",
    "CausalLMContext",
    "DecodeResult",
    "Dynamics",
    "Outcomes",
    "OutputHead",
    "Sample",
    "SamplingConfig",
    "UnsupportedModelError",
    "sample_tokens",
    "sample_with_logprobs",
]
