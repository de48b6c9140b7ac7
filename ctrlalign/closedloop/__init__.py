"""Closed-loop controllers: act on partial responses (SMC, speculative rejection, receding horizon).

Each runs n rows per prompt on a :class:`~ctrlalign.dynamics.base.StepwiseDynamics` through
:class:`~ctrlalign.closedloop.particles.Particles` and returns a
:class:`~ctrlalign.closedloop.base.ClosedLoopResult` with its budget in tokens and reward calls.
"""

from .base import Checkpoint, ClosedLoopResult
from .particles import Particles
from .receding import RecedingHorizon
from .smc import SMC
from .speculative import SpeculativeRejection

__all__ = ["SMC", "Checkpoint", "ClosedLoopResult", "Particles", "RecedingHorizon", "SpeculativeRejection"]
