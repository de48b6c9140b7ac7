"""Controllers, one file each: AISP, MPPI, Best-of-N, softmax sampling, CEM.

Each declares its hyperparameters once (:mod:`ctrlalign.declare`); configs, the command line and
the bench look controllers up in :data:`CONTROLLERS` when they are validated, so a controller
added with :func:`register_controller` at any time before that is accepted.
"""

from ..declare import Hyperparameter, Registry, Spec
from .aisp import AISP
from .base import Controller, Proposal, StepInfo, WeightedController
from .bon import BestOfN
from .cem import CEM
from .mppi import MPPI
from .softmax import SoftmaxSampling

#: name → controller class (its ``spec()`` is its declaration)
CONTROLLERS = Registry("controller", [AISP, MPPI, BestOfN, SoftmaxSampling, CEM])


def register_controller(cls: type[Controller]) -> type[Controller]:
    """Make a controller class available to configs and the command line under ``cls.name``
    (usable as a class decorator). Its ``hyperparameters`` are validated at once."""
    return CONTROLLERS.register(cls)


__all__ = [
    "AISP",
    "CEM",
    "CONTROLLERS",
    "MPPI",
    "BestOfN",
    "Controller",
    "Hyperparameter",
    "Proposal",
    "SoftmaxSampling",
    "Spec",
    "StepInfo",
    "WeightedController",
    "register_controller",
]
