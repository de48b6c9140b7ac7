"""Controllers, one file each: AISP, MPPI, Best-of-N, softmax sampling, CEM.

Each declares its hyperparameters once (:mod:`ctrlalign.controllers.spec`); configs, the
command line and the bench derive their fields and flags from :data:`CONTROLLERS`.
"""

from .aisp import AISP
from .base import Controller, Proposal, StepInfo, WeightedController
from .bon import BestOfN
from .cem import CEM
from .mppi import MPPI
from .softmax import SoftmaxSampling
from .spec import ControllerSpec, Hyperparameter

#: name → controller class (its ``spec()`` is its declaration)
CONTROLLERS = {"aisp": AISP, "mppi": MPPI, "bon": BestOfN, "softmax": SoftmaxSampling, "cem": CEM}


def register_controller(cls: type[Controller]) -> type[Controller]:
    """Make a controller class available to configs and the command line under ``cls.name``
    (usable as a class decorator). Its ``hyperparameters`` are validated at once."""
    cls.spec()
    CONTROLLERS[cls.name] = cls
    return cls


__all__ = [
    "AISP",
    "CEM",
    "CONTROLLERS",
    "MPPI",
    "BestOfN",
    "Controller",
    "ControllerSpec",
    "Hyperparameter",
    "Proposal",
    "SoftmaxSampling",
    "StepInfo",
    "WeightedController",
    "register_controller",
]
