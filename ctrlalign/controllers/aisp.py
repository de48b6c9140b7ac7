r"""AISP: adaptive importance sampling on pre-logits (Kanai et al., arXiv 2510.26219).

Each iteration draws n controls from :math:`\mathcal N(\hat\theta,\sigma^2 I)`, scores the
responses, and moves the mean to the self-normalised importance estimate of the optimal mean:

.. math::
    \log w_i = \frac{r_i}{\lambda} - \frac{1-\alpha}{\sigma^2}\langle\hat\theta, \theta^{(i)}\rangle,
    \qquad \hat\theta \leftarrow \sum_i w_i \theta^{(i)} .

α = 0 is exact importance sampling toward q* (whose mean is the optimum); α = 1 gives
softmax(r/λ) weights (classic MPPI). With the default per-token space (θ = V (τ, d)), a fixed
λ and one iteration (zero mean updates) AISP is the paper's method and Best-of-n from the prior
p, draw for draw. AISP is :class:`~ctrlalign.controllers.mppi.MPPI` with γ = 1 − α and β = 1.
"""

from __future__ import annotations

from ..declare import Hyperparameter
from .mppi import MPPI

__all__ = ["AISP"]


class AISP(MPPI):
    """Adaptive importance sampling on pre-logits.

    Args:
        num_samples: n >= 1 samples per iteration.
        num_iterations: k >= 1 iterations (budget n·k).
        sigma: σ > 0, control noise scale (compare σ·‖w‖, the logit-noise scale, across models).
        temperature: λ > 0 (fixed); None with ``target_ess``.
        target_ess: adaptive λ so that the ESS is this fraction of n; None: fixed λ.
        alpha: α in [0, 1], how much of the likelihood-ratio term to drop.
    """

    name = "aisp"
    hyperparameters = (
        Hyperparameter("alpha", float, "share of the likelihood-ratio term dropped (0: exact IS, 1: MPPI)", "α",
                       low=0, high=1),
    )

    def __init__(self, *, num_samples: int = 8, num_iterations: int = 4, sigma: float = 0.3,
                 temperature: float | None = 0.3, target_ess: float | None = None, alpha: float = 0.999):
        self.set_hyperparameter("alpha", alpha)
        super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma,
                         temperature=temperature, target_ess=target_ess, likelihood_ratio=1.0 - self.alpha,
                         step_size=1.0)
