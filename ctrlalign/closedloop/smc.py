r"""Twisted sequential Monte Carlo over partial responses.

Target: the same tilted law as AISP's q*, in token space,

.. math:: \pi^*(y) \propto p(y)\,\exp\!\big(r(x, y)/\lambda\big),\qquad
          Z = \mathbb E_{y\sim p}\big[e^{r(x,y)/\lambda}\big].

n particles per prompt are advanced b tokens at a time from a proposal q: the base model
(``controls=None``) or a fixed pre-logit control V (for example a mean AISP learned), whose
token law :math:`q(y_t\mid y_{<t}) = \mathrm{softmax}(W(z_t+v_t)+b)_{y_t}` is exact given the
prefix. At each checkpoint t the weights take the block's likelihood ratio and the change of
twist :math:`\psi_t = r(x, y_{1:t})/\lambda_t` (the reward's prefix score):

.. math:: \log w \mathrel{+}= \sum_{s\in\text{block}} \big[\log p(y_s\mid\cdot) - \log q(y_s\mid\cdot)\big]
          + \psi_t - \psi_{t_\text{prev}},\qquad \psi_0 = 0,\ \psi_T = r(x, y)/\lambda .

The twist telescopes, so the final weights are :math:`p(y)e^{r/\lambda}/q(y)` whatever the
:math:`\lambda_t` (fixed, or chosen per prompt and checkpoint so that the ESS is a target
fraction of n). When the ESS falls below κ·n the particles are resampled
(:mod:`ctrlalign.resampling`), each new particle continuing its ancestor's prefix (and control),
and the weights reset to equal; the estimate

.. math:: \hat Z = \prod_{\text{resamplings}} \overline{w}\;\cdot\;\overline{w_\text{final}}

is unbiased, :math:`\mathbb E[\hat Z] = Z`. The read-out keeps the best final particle by its
full reward (``"argmax"``, Best-of-N's rule) or draws one with probability ∝ w (``"weight"``:
an approximate sample of π*).

Special cases, bit for bit: one checkpoint at the end (b ≥ T) with no resampling is softmax
sampling (sampling–importance–resampling from p with weights softmax(r/λ), the
:class:`~ctrlalign.controllers.softmax.SoftmaxSampling` of σ = 0), and with the argmax read-out
it is Best-of-n.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from .. import theory
from .._checks import ConfigError
from ..cost import Cost
from ..declare import Hyperparameter
from ..dynamics.base import StepwiseDynamics
from ..resampling import RESAMPLERS, resample
from ..rewards.base import Reward
from ..selection import Reservoir
from .base import (
    Checkpoint,
    ClosedLoopController,
    ClosedLoopResult,
    block_bounds,
    distinct_rows,
    start_run,
)
from .particles import Particles

__all__ = ["SMC"]

READOUTS = ("argmax", "weight")


class SMC(ClosedLoopController):
    r"""Twisted SMC with n particles and a checkpoint every b tokens (see the module docstring).

    Args:
        num_particles: n >= 1, particles per prompt.
        block_size: b >= 1, tokens between checkpoints (b >= T: one checkpoint, at the end).
        temperature: λ > 0 of the target p·exp(r/λ) (the last twist is exactly r/λ).
        twist_temperature: fixed λ_t of the intermediate twists r(prefix)/λ_t (None: λ).
        twist_target_ess: instead, choose λ_t per prompt and checkpoint so that the ESS of the
            weights is this fraction of n (adaptive tempering); None: fixed.
        resample_threshold: κ in [0, 1]; resample when ESS < κ·n (0: never; 1: whenever the
            weights are not uniform).
        scheme: the resampling scheme, a name in :data:`~ctrlalign.resampling.RESAMPLERS`.
        readout: ``"argmax"`` (the best final particle by full reward) or ``"weight"`` (one drawn
            with probability ∝ its final weight).
    """

    name = "smc"
    hyperparameters = (
        Hyperparameter("num_particles", int, "particles per prompt", "n", low=1),
        Hyperparameter("block_size", int, "tokens between checkpoints (>= T: one checkpoint, at the end)", "b",
                       low=1),
        Hyperparameter("temperature", float, "λ of the target p·exp(r/λ) (the last twist is exactly r/λ)", "λ",
                       low=0, low_open=True),
        Hyperparameter("twist_temperature", float, "fixed λ_t of the intermediate twists r(prefix)/λ_t (unset: λ)",
                       "λ_t", low=0, low_open=True, nullable=True, excludes=("twist_target_ess",)),
        Hyperparameter("twist_target_ess", float, "instead, λ_t per prompt and checkpoint so that the ESS is this "
                       "fraction of n (adaptive tempering)", "ρ_ESS", low=0, high=1, low_open=True, nullable=True,
                       excludes=("twist_temperature",)),
        Hyperparameter("resample_threshold", float, "resample when ESS < κ·n (0: never; 1: whenever the weights "
                       "are not uniform)", "κ", low=0, high=1),
        Hyperparameter("scheme", str, "the resampling scheme", choices=tuple(RESAMPLERS)),
        Hyperparameter("readout", str, "'argmax': the best final particle by full reward; 'weight': one drawn "
                       "with probability ∝ its final weight", choices=READOUTS),
    )

    def __init__(self, *, num_particles: int = 16, block_size: int = 8, temperature: float = 0.1,
                 twist_temperature: float | None = None, twist_target_ess: float | None = None,
                 resample_threshold: float = 0.5, scheme: str = "systematic", readout: str = "argmax") -> None:
        if twist_temperature is not None and twist_target_ess is not None:
            raise ConfigError("set at most one of twist_temperature (fixed λ_t) and twist_target_ess (adaptive λ_t)")
        for key, value in (("num_particles", num_particles), ("block_size", block_size),
                           ("temperature", temperature), ("twist_temperature", twist_temperature),
                           ("twist_target_ess", twist_target_ess), ("resample_threshold", resample_threshold),
                           ("scheme", scheme), ("readout", readout)):
            self.set_hyperparameter(key, value)

    def twist_temperatures(self, scores: torch.Tensor, log_weights: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        r"""(D,) λ_t for prefix scores (D, n): fixed, or adaptive so that the weights
        :math:`\log w + r/\lambda_t - \psi_\text{prev}` have ESS = ``twist_target_ess``·n."""
        if self.twist_target_ess is None:
            lam = self.temperature if self.twist_temperature is None else self.twist_temperature
            return torch.full(scores.shape[:1], lam, dtype=torch.float64)
        return theory.adaptive_temperature(scores, self.twist_target_ess, offsets=previous - log_weights)

    @staticmethod
    def reweight(log_weights: torch.Tensor, ratio: torch.Tensor, twist: torch.Tensor,
                 previous: torch.Tensor) -> torch.Tensor:
        r"""The checkpoint's update, all (D, n): :math:`\log w + [\log p - \log q]_\text{block} + \psi_t - \psi_\text{prev}`."""
        return log_weights + ratio + (twist - previous)

    @staticmethod
    def renormalize(log_normalizer: torch.Tensor, log_weights: torch.Tensor,
                    resampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""After resampling the prompts flagged in ``resampled`` (D,): log Ẑ gains
        :math:`\log\overline{w}` and their weights reset to equal (0). Returns (log Ẑ (D,), ℓ (D, n))."""
        gained = torch.where(resampled, theory.log_mean_exp(log_weights, dim=-1), torch.zeros_like(log_normalizer))
        return log_normalizer + gained, torch.where(resampled.unsqueeze(-1), torch.zeros_like(log_weights), log_weights)

    def run(self, dynamics: StepwiseDynamics, cost: Cost | Reward, prompts: Sequence[Any], *, seed: int = 0,
            context: Any = None, controls: torch.Tensor | None = None) -> ClosedLoopResult:
        """Run SMC on D prompts.

        Args:
            dynamics: a :class:`~ctrlalign.dynamics.base.StepwiseDynamics`.
            cost: the reward r (or a :class:`~ctrlalign.cost.Cost`); it must score prefixes.
            prompts: D prompts.
            seed: base seed (prompt j's generators as in :func:`~ctrlalign.align`: the same
                rollout uniforms as an open-loop run of the same seed).
            context: ``dynamics.prepare(prompts)`` already done, or None.
            controls: the proposal's pre-logit control V, (D, τ, d) shared by the particles or
                (D, n, τ, d), in the dynamics' coordinates; None: the base model.

        Returns:
            :class:`~ctrlalign.closedloop.base.ClosedLoopResult` with ``log_normalizer`` log Ẑ.
        """
        t_start = time.perf_counter()
        run = start_run("SMC", dynamics, cost, prompts, seed=seed, context=context,
                        scores_prefixes=lambda T: self.block_size < T or self.twist_target_ess is not None)
        prompts = run.prompts
        D, n, lam = len(prompts), self.num_particles, self.temperature
        select_gens = [g.select for g in run.generators]
        particles = Particles(run.dynamics, run.context, prompts, run.cost, n, run.generators, controls)
        log_w = torch.zeros(D, n, dtype=torch.float64)
        psi = torch.zeros(D, n, dtype=torch.float64)
        log_z = torch.zeros(D, dtype=torch.float64)
        identity = torch.arange(n).expand(D, n)
        trace: list[Checkpoint] = []
        for t0, t1 in block_bounds(particles.horizon, self.block_size):
            ratio = particles.log_ratio(particles.advance(t0, t1))
            outcomes = particles.outcomes()
            last = t1 == particles.horizon  # not earlier when rows finish: a prompt's run must not depend on others
            scores = particles.score(outcomes, prefix=not last)
            if last:
                lam_t = torch.full((D,), lam, dtype=torch.float64)
            else:
                lam_t = self.twist_temperatures(scores, log_w + ratio, psi)
            new_psi = torch.where(torch.isinf(lam_t).unsqueeze(-1), torch.zeros_like(scores),
                                  scores / lam_t.unsqueeze(-1))
            log_w = self.reweight(log_w, ratio, new_psi, psi)
            psi = new_psi
            ess = theory.effective_sample_size(torch.log_softmax(log_w, dim=-1))
            distinct = distinct_rows(outcomes)
            resampled = torch.zeros(D, dtype=torch.bool)
            if not last and self.resample_threshold > 0:
                ancestors = resample(log_w, select_gens, self.scheme)
                resampled = ess < self.resample_threshold * n
                rows = torch.where(resampled.unsqueeze(-1), ancestors, identity)
                log_z, log_w = self.renormalize(log_z, log_w, resampled)
                psi = psi.gather(1, rows)
                particles.select(rows, carry_noise=False)
            trace.append(Checkpoint(t1, torch.full((D,), n), ess, lam_t, scores.mean(-1), resampled, distinct))
            if last:
                break
        log_z = log_z + theory.log_mean_exp(log_w, dim=-1)
        if self.readout == "argmax":
            chosen = scores.argmax(-1)
        else:
            _, chosen, _ = Reservoir().update(Reservoir().init(D), scores, log_w, select_gens)
        return ClosedLoopResult(
            prompts=prompts, responses=[outcomes.sample(j, int(chosen[j])) for j in range(D)],
            rewards=scores.gather(1, chosen.view(D, 1)).squeeze(1), trace=trace, tokens=particles.tokens,
            prefix_calls=particles.prefix_calls, full_calls=particles.full_calls, distinct=distinct, seconds=time.perf_counter() - t_start,
            controller=self.name, log_normalizer=log_z, final_rewards=scores,
            meta={"log_weights": log_w,
                  "final_tokens": None if outcomes.tokens is None else outcomes.tokens.tolist(),
                  "final_values": None if outcomes.values is None else outcomes.values.tolist()},
        )
