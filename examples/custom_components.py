"""Extending: your own Dynamics, Reward and Controller, used together with ``align``.

* ``SquashedLinear`` — a Dynamics: y = x + tanh(A vec(V)) plus optional observation noise
  drawn from the prompt's own generator (a nonlinear cousin of ``LinearGaussian``);
* ``L1Distance`` — a Reward: r = −‖y − y*‖₁ on numeric outcomes, shape (D, n);
* ``GreedyMean`` — a Controller: move the mean a step β toward the single best sample.

``tests/test_examples.py`` runs the controller contract (:mod:`ctrlalign.testing`) on
``GreedyMean`` in every control space and on the ``SquashedLinear`` + ``L1Distance`` system.

Run: ``python examples/custom_components.py``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import ctrlalign as ca
from ctrlalign.controllers import Hyperparameter


# --8<-- [start:SquashedLinear]
class SquashedLinear(ca.Dynamics):
    """y = x + tanh(A vec(V)) + noise·ε, ε ~ N(0, I) from the prompt's generator.

    Args:
        A: (p, τ·d) the outcome map.
        horizon: τ.
        hidden_size: d.
        noise: observation noise scale (0: deterministic).
    """

    def __init__(self, A: torch.Tensor, horizon: int, hidden_size: int, noise: float = 0.0):
        self.A = torch.as_tensor(A, dtype=torch.float64)
        self.horizon = self.max_horizon = horizon
        self.hidden_size = hidden_size  # d: the contract's controls are (D, n, τ, d)
        self.noise = noise

    @property
    def dtype(self) -> torch.dtype:
        """Controls are created in float64 (the toy systems' dtype)."""
        return torch.float64

    def prepare(self, prompts: Sequence[Any]) -> torch.Tensor:
        """Once per run: stack the D prompt vectors into (D, p)."""
        return torch.stack([torch.as_tensor(p, dtype=torch.float64) for p in prompts])

    def rollout(self, context, controls, generators, num_samples) -> ca.Outcomes:
        """(D, n, p) outcomes; prompt j's noise comes only from ``generators[j]``."""
        D = context.shape[0]
        self.check_controls(controls, D, num_samples)  # raises on a wrong shape
        y = context.unsqueeze(1).expand(D, num_samples, -1).clone()
        if controls is not None:  # None = the uncontrolled system
            y = y + torch.tanh(controls.to(torch.float64).flatten(-2) @ self.A.T)
        if self.noise > 0:
            eps = torch.stack([torch.randn(num_samples, y.shape[-1], generator=g, dtype=torch.float64)
                               for g in generators])
            y = y + self.noise * eps
        return ca.Outcomes(num_prompts=D, num_samples=num_samples, values=y)
# --8<-- [end:SquashedLinear]


# --8<-- [start:L1Distance]
class L1Distance(ca.Reward):
    """r(y) = −‖y − y*‖₁, (D, n). Higher is better.

    Args:
        target: (p,) y*.
    """

    name = "l1"

    def __init__(self, target: torch.Tensor):
        self.target = torch.as_tensor(target, dtype=torch.float64)

    def __call__(self, prompts: Sequence[Any], outcomes: ca.Outcomes) -> torch.Tensor:
        """(D, n) rewards from ``outcomes.values`` (D, n, p)."""
        return -(outcomes.values.to(torch.float64) - self.target).abs().sum(-1)
# --8<-- [end:L1Distance]


# --8<-- [start:GreedyMean]
class GreedyMean(ca.Controller):
    """Move the mean a step β toward the best sample of each round: θ̂ ← θ̂ + β (θ_best − θ̂).

    Args:
        num_samples: n.
        num_iterations: k.
        sigma: σ > 0.
        step_size: β in (0, 1].

    The control space is not the controller's: ``align(..., space=ca.Shared())`` chooses it.
    """

    name = "greedy"
    # declare what the base does not: configs, the CLI and the docs read this
    hyperparameters = (Hyperparameter("step_size", float, "step toward the best sample", "β", low=0, high=1,
                                      low_open=True),)

    def __init__(self, *, num_samples: int = 8, num_iterations: int = 4, sigma: float = 0.3,
                 step_size: float = 0.5):
        super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma)
        self.set_hyperparameter("step_size", step_size)  # validated against the declaration

    def step(self, state, theta, rewards):
        """θ (D, n, *θ), rewards (D, n) → (new state, StepInfo); inputs are not modified."""
        self.check_step_inputs(state, theta, rewards)
        best = rewards.argmax(-1)  # (D,)
        # one-hot log-weights at the argmax (the diagnostics turn them into ESS, entropy, ...)
        log_w = torch.full(rewards.shape, float("-inf"), dtype=torch.float64, device=rewards.device)
        log_w.scatter_(-1, best.unsqueeze(-1), 0.0)
        best_theta = theta[torch.arange(theta.shape[0]), best]  # (D, *θ)
        new_mean = state.mean + self.step_size * (best_theta - state.mean)
        # the info carries the log-weights (no temperature here: λ = NaN)
        return state.replace(mean=new_mean), ca.StepInfo.untempered(log_w)
# --8<-- [end:GreedyMean]


def make_system(seed: int = 0, noise: float = 0.05):
    """(dynamics, reward, 4 prompts): the shape ``ControllerContract.systems`` expects."""
    g = torch.Generator().manual_seed(seed)
    tau, d, p = 3, 2, 4
    A = torch.randn(p, tau * d, generator=g, dtype=torch.float64)
    target = torch.randn(p, generator=g, dtype=torch.float64)
    prompts = [torch.randn(p, generator=g, dtype=torch.float64) for _ in range(4)]
    return SquashedLinear(A, tau, d, noise=noise), L1Distance(target), prompts


def main(out: Path | None = None, num_samples: int = 32, num_iterations: int = 5) -> dict:
    dyn, reward, prompts = make_system()
    rows = {}
    for ctrl in (GreedyMean(num_samples=num_samples, num_iterations=num_iterations, sigma=0.5),
                 ca.AISP(num_samples=num_samples, num_iterations=num_iterations, sigma=0.5, temperature=0.2),
                 ca.BestOfN(num_samples=num_samples, num_iterations=num_iterations, sigma=0.5)):
        res = ca.align(dyn, reward, ctrl, prompts, seed=0)
        rows[ctrl.name] = res.rewards.tolist()
        print(f"{ctrl.name:<7} best reward per prompt:", " ".join(f"{r:7.3f}" for r in res.rewards.tolist()),
              f"| final ‖U‖ {res.trace[-1].diagnostics.mean_norm.mean():.2f}")
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="unused (no plot); accepted for uniformity")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--num-iterations", type=int, default=5)
    args = ap.parse_args()
    main(args.out, args.num_samples, args.num_iterations)
