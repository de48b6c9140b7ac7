r"""Toy systems whose answers are known in closed form or by enumeration.

* :class:`LinearGaussian`: outcome :math:`y = x + A\,\mathrm{vec}(V)`; with the quadratic
  reward :class:`~ctrlalign.rewards.toy.QuadraticReward`, q*, its mean, η and F are
  closed form (:func:`ctrlalign.theory.linear_gaussian_optimum`).
* :class:`SoftmaxHead`: a synthetic autoregressive pre-logit system with a (W, b) head and
  K categories; small enough that the distribution of outcomes under p and under q* can be
  enumerated exactly (:meth:`SoftmaxHead.outcome_distribution`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._checks import check_int, check_positive
from .base import Dynamics, Outcomes

__all__ = ["LinearGaussian", "SoftmaxHead"]


def _as_prompt_tensor(p: Any, shape: tuple[int, ...], name: str) -> torch.Tensor:
    t = torch.as_tensor(p, dtype=torch.float64)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} prompts must have shape {shape}, got {tuple(t.shape)}")
    return t


class LinearGaussian(Dynamics):
    r"""Outcome :math:`y = x + A\,\mathrm{vec}(V)`, a deterministic linear map of the controls.

    A prompt is a vector :math:`x\in\mathbb R^p`. Controls V (D, n, τ, d) are flattened to
    m = τ·d. ``controls=None`` gives y = x.

    Args:
        A: (p, τ·d) the outcome map.
        horizon: τ.
        hidden_size: d.
    """

    def __init__(self, A: torch.Tensor, horizon: int, hidden_size: int):
        self.horizon = check_int("horizon", horizon, minimum=1, symbol="τ")
        self.hidden_size = check_int("hidden_size", hidden_size, minimum=1, symbol="d")
        A = torch.as_tensor(A, dtype=torch.float64)
        if A.dim() != 2 or A.shape[1] != self.horizon * self.hidden_size:
            raise ValueError(
                f"A must have shape (p, horizon*hidden_size = {self.horizon * self.hidden_size}), "
                f"got {tuple(A.shape)}"
            )
        self.A = A
        self.max_horizon = self.horizon
        self.outcome_size = A.shape[0]

    def prepare(self, prompts: Sequence[Any]) -> torch.Tensor:
        """Stack D prompt vectors into (D, p)."""
        return torch.stack([_as_prompt_tensor(p, (self.outcome_size,), "LinearGaussian") for p in prompts])

    def rollout(self, context, controls, generators, num_samples) -> Outcomes:
        """y (D, n, p) = x + A vec(V). Deterministic: the generators are unused."""
        D = context.shape[0]
        self.check_controls(controls, D, num_samples)
        y = context.unsqueeze(1).expand(D, num_samples, -1).clone()
        if controls is not None:
            if controls.shape[2] != self.horizon:
                raise ValueError(f"LinearGaussian needs horizon τ = {self.horizon}, got {controls.shape[2]}")
            y = y + controls.to(torch.float64).flatten(-2) @ self.A.T
        return Outcomes(num_prompts=D, num_samples=num_samples, values=y)


class SoftmaxHead(Dynamics):
    r"""A synthetic autoregressive pre-logit system with a softmax head.

    For a prompt :math:`x\in\mathbb R^{\tau\times d}` (one base pre-logit per step) and token
    embeddings E (K+1, d) (row K is the start token):

    .. math::
        z_t = x_t + E[y_{t-1}],\qquad
        y_t \sim \mathrm{softmax}\big(W(z_t + v_t) + b\big),\quad t = 1..\tau .

    Outcomes are token sequences (D, n, τ) in ``tokens`` (and ``values``). With K^τ small,
    :meth:`outcome_distribution` computes the exact outcome probabilities under
    :math:`v_t\sim\mathcal N(u_t,\sigma^2 I)` by Gauss–Hermite quadrature (exact to
    quadrature precision for the small d used in tests).

    Args:
        W: (K, d) head weights; b: (K,) head bias; embeddings: (K+1, d) or None (zeros).
        horizon: τ.
    """

    def __init__(self, W: torch.Tensor, b: torch.Tensor, horizon: int, embeddings: torch.Tensor | None = None):
        self.W = torch.as_tensor(W, dtype=torch.float64)
        self.b = torch.as_tensor(b, dtype=torch.float64)
        if self.W.dim() != 2 or self.b.shape != (self.W.shape[0],):
            raise ValueError(f"W must be (K, d) and b (K,), got {tuple(self.W.shape)} and {tuple(self.b.shape)}")
        self.num_classes, self.hidden_size = self.W.shape
        self.horizon = check_int("horizon", horizon, minimum=1, symbol="τ")
        self.max_horizon = self.horizon
        K, d = self.num_classes, self.hidden_size
        self.E = torch.zeros(K + 1, d, dtype=torch.float64) if embeddings is None else torch.as_tensor(embeddings, dtype=torch.float64)
        if self.E.shape != (K + 1, d):
            raise ValueError(f"embeddings must be (K+1, d) = {(K + 1, d)}, got {tuple(self.E.shape)}")

    def prepare(self, prompts: Sequence[Any]) -> torch.Tensor:
        """Stack D prompts into (D, τ, d)."""
        return torch.stack([_as_prompt_tensor(p, (self.horizon, self.hidden_size), "SoftmaxHead") for p in prompts])

    def rollout(self, context, controls, generators, num_samples) -> Outcomes:
        """Sample token sequences (D, n, τ); prompt j uses only ``generators[j]``."""
        D, n, K = context.shape[0], num_samples, self.num_classes
        self.check_controls(controls, D, n)
        if len(generators) != D:
            raise ValueError(f"need one generator per prompt ({D}), got {len(generators)}")
        tokens = torch.empty(D, n, self.horizon, dtype=torch.long)
        logp = torch.zeros(D, n, self.horizon)
        base_logp = torch.zeros(D, n, self.horizon)
        for j in range(D):
            u = torch.rand(n, self.horizon, generator=generators[j], dtype=torch.float64)
            prev = torch.full((n,), K, dtype=torch.long)
            for t in range(self.horizon):
                z = context[j, t] + self.E[prev]  # (n, d)
                base = z @ self.W.T + self.b
                logits = base if controls is None else (z + controls[j, :, t].to(torch.float64)) @ self.W.T + self.b
                lsm = torch.log_softmax(logits, -1)
                cdf = lsm.exp().cumsum(-1)
                y = torch.searchsorted(cdf, (u[:, t] * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1).clamp_max(K - 1)
                tokens[j, :, t] = y
                logp[j, :, t] = lsm.gather(-1, y[:, None]).squeeze(-1).float()
                base_logp[j, :, t] = torch.log_softmax(base, -1).gather(-1, y[:, None]).squeeze(-1).float()
                prev = y
        return Outcomes(
            num_prompts=D, num_samples=n, values=tokens.clone(), tokens=tokens,
            lengths=torch.full((D, n), self.horizon, dtype=torch.long),
            logprobs=logp, base_logprobs=base_logp,
        )

    # ------------------------------------------------------------------ exact enumeration
    def step_probabilities(self, z: np.ndarray, mean: np.ndarray, sigma: float, nodes: int = 40) -> np.ndarray:
        r""":math:`\mathbb E_{v\sim\mathcal N(u,\sigma^2I)}[\mathrm{softmax}(W(z+v)+b)]` by
        Gauss–Hermite quadrature on a tensor grid (d ≤ 3 recommended).

        Args:
            z: (d,) pre-logit; mean: (d,) control mean u; sigma: σ ≥ 0 (0: no noise).

        Returns:
            (K,) probabilities.
        """
        W, b = self.W.numpy(), self.b.numpy()
        if sigma == 0:
            logits = W @ (z + mean) + b
            e = np.exp(logits - logits.max())
            return e / e.sum()
        x, w = np.polynomial.hermite_e.hermegauss(nodes)  # weight exp(-x²/2)
        w = w / math.sqrt(2 * math.pi)
        d = z.shape[0]
        grid = np.stack(np.meshgrid(*([x] * d), indexing="ij"), -1).reshape(-1, d)
        gw = np.prod(np.stack(np.meshgrid(*([w] * d), indexing="ij"), -1).reshape(-1, d), axis=1)
        logits = (z + mean + sigma * grid) @ W.T + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return gw @ p

    def outcome_distribution(self, prompt: Any, sigma: float, mean: torch.Tensor | None = None, nodes: int = 40) -> dict[tuple[int, ...], float]:
        r"""Exact probability of every token sequence (K^τ of them) for one prompt under
        controls :math:`v_t\sim\mathcal N(u_t,\sigma^2 I)`.

        Args:
            prompt: (τ, d); sigma: σ ≥ 0; mean: (τ, d) control mean U (default 0).

        Returns:
            dict mapping each sequence tuple to its probability (sums to 1).
        """
        x = _as_prompt_tensor(prompt, (self.horizon, self.hidden_size), "SoftmaxHead").numpy()
        u = np.zeros_like(x) if mean is None else torch.as_tensor(mean, dtype=torch.float64).numpy()
        K, E = self.num_classes, self.E.numpy()
        out: dict[tuple[int, ...], float] = {}
        cache: dict[tuple[int, ...], np.ndarray] = {}
        for seq in itertools.product(range(K), repeat=self.horizon):
            prob, prev = 1.0, K
            for t, y in enumerate(seq):
                key = seq[:t]
                if key not in cache:
                    cache[key] = self.step_probabilities(x[t] + E[prev], u[t], sigma, nodes)
                prob *= cache[key][y]
                prev = y
            out[seq] = prob
        return out


def tilted_distribution(base: dict, reward: dict, temperature: float) -> dict:
    r""":math:`P^*(y)\propto P_p(y)\exp(r(y)/\lambda)`: the outcome law under q*, from the
    outcome law under p. Both dicts are keyed by outcome."""
    lam = check_positive("temperature", temperature, symbol="λ")
    keys = list(base)
    logs = np.array([math.log(base[k]) + reward[k] / lam if base[k] > 0 else -np.inf for k in keys])
    logs -= logs.max()
    w = np.exp(logs)
    w /= w.sum()
    return dict(zip(keys, w.tolist()))
