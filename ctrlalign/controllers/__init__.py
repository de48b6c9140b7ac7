"""Controllers, one file each: AISP, MPPI, Best-of-N, softmax sampling, CEM."""

from .aisp import AISP
from .base import Controller, ControllerState, StepInfo
from .bon import BestOfN
from .cem import CEM
from .mppi import MPPI
from .softmax import SoftmaxSampling

CONTROLLERS = {"aisp": AISP, "mppi": MPPI, "bon": BestOfN, "softmax": SoftmaxSampling, "cem": CEM}

__all__ = ["Controller", "ControllerState", "StepInfo", "AISP", "MPPI", "BestOfN", "SoftmaxSampling", "CEM",
           "CONTROLLERS"]
