"""Rollout engines for :class:`~ctrlalign.dynamics.causal_lm.CausalLM`, one job per module:
the protocol (:mod:`.protocol`), the name registry (:mod:`.registry`), the eager engine
(:mod:`.eager`, any ``transformers`` architecture) and the static-cache engine (:mod:`.static`,
CUDA graphs on a GPU)."""

from .eager import EagerEngine
from .protocol import Decoded, Engine, EngineState
from .registry import ENGINES, make_engine, register_engine
from .static import StaticEngine

__all__ = ["ENGINES", "Decoded", "EagerEngine", "Engine", "EngineState", "StaticEngine", "make_engine",
           "register_engine"]
