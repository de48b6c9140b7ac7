r"""AISP: adaptive importance sampling on pre-logits (Kanai et al., arXiv 2510.26219).

Each iteration draws n controls from :math:`\mathcal N(\hat U,\sigma^2 I)`, scores the
responses, and moves the mean to the self-normalised importance estimate of the optimal mean:

.. math::
    \log w_i = \frac{r_i}{\lambda} - \frac{1-\alpha}{\sigma^2}\sum_t \hat u_t^\top v_t^{(i)},
    \qquad U \leftarrow \sum_i w_i V^{(i)} .

α = 0 is exact importance sampling toward q* (whose mean is the optimum); α = 1 gives
softmax(r/λ) weights (classic MPPI). The best response seen so far is kept. With one
iteration (zero mean updates) AISP is Best-of-n from the prior p, draw for draw.
AISP is :class:`~ctrlalign.controllers.mppi.MPPI` with γ = 1 − α and β = 1.
"""

from __future__ import annotations

from typing import Sequence

from .._checks import check_interval
from .mppi import MPPI

__all__ = ["AISP"]


class AISP(MPPI):
    """Adaptive importance sampling on pre-logits.

    Args:
        num_samples: n >= 1 samples per iteration.
        num_iterations: k >= 1 iterations (budget n·k).
        sigma: σ > 0, control noise scale (compare σ·‖w‖, the logit-noise scale, across models).
        temperature: λ > 0.
        alpha: α in [0, 1], how much of the likelihood-ratio term to drop.
        horizon: τ, controlled tokens (None: the dynamics' maximum).
    """

    name = "aisp"

    def __init__(self, *, num_samples: int = 8, num_iterations: int = 4, sigma: float = 0.3,
                 temperature: float = 0.3, alpha: float = 0.999, horizon: int | None = None):
        self.alpha = check_interval("alpha", alpha, 0.0, 1.0, symbol="α")
        super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma,
                         temperature=temperature, likelihood_ratio=1.0 - self.alpha, step_size=1.0,
                         horizon=horizon)

    def _extra_repr(self) -> Sequence[str]:
        return ("temperature", "alpha")
