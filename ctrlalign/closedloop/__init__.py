"""Closed-loop controllers: act on partial responses (SMC, speculative rejection)."""

from .base import Checkpoint, ClosedLoopResult
from .smc import SMC

__all__ = ["SMC", "Checkpoint", "ClosedLoopResult"]
