"""Closed-loop controllers: act on partial responses (SMC, speculative rejection, receding horizon).

Each runs n rows per prompt on a :class:`~ctrlalign.dynamics.base.StepwiseDynamics` through
:class:`~ctrlalign.closedloop.particles.Particles` and returns a
:class:`~ctrlalign.closedloop.base.ClosedLoopResult` with its budget in tokens and reward calls.
They derive from :class:`~ctrlalign.closedloop.base.ClosedLoopController` and are registered in
:data:`~ctrlalign.controllers.CONTROLLERS` beside the open-loop ones (``smc``,
``speculative-rejection``, ``receding-horizon``), so configs, the command line and the
benchmark take them by name.
"""

from ..controllers import CONTROLLERS
from .base import Checkpoint, ClosedLoopController, ClosedLoopResult
from .particles import Particles
from .receding import RecedingHorizon
from .smc import SMC
from .speculative import SpeculativeRejection

for _cls in (SMC, SpeculativeRejection, RecedingHorizon):
    CONTROLLERS.register(_cls)

__all__ = ["SMC", "Checkpoint", "ClosedLoopController", "ClosedLoopResult", "Particles", "RecedingHorizon",
           "SpeculativeRejection"]
