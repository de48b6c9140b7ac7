r"""Toy systems whose answers are known in closed form or by enumeration.

* :class:`LinearGaussian`: the linear-Gaussian state-space system
  :math:`x_t = F x_{t-1} + A_t v_t + \sigma w_t`, outcome :math:`y = x_\tau`; by default
  (F = I, σ = 0) :math:`y = x_0 + A\,\mathrm{vec}(V)`, for which, with the quadratic
  reward :class:`~ctrlalign.rewards.toy.QuadraticReward`, q*, its mean, η and F are
  closed form (:func:`ctrlalign.theory.linear_gaussian_optimum`).
* :class:`SoftmaxHead`: a synthetic autoregressive pre-logit system with a (W, b) head and
  K categories, optionally with an end token that finishes a row early; small enough that the
  distribution of outcomes under p and under q* can be enumerated exactly
  (:meth:`SoftmaxHead.outcome_distribution`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._checks import check_int, check_positive
from .base import Outcomes, Step, StepwiseDynamics
from .engines.protocol import check_rows

__all__ = ["LinearGaussian", "SoftmaxHead", "ToyState"]


def _as_prompt_tensor(p: Any, shape: tuple[int, ...], name: str) -> torch.Tensor:
    t = torch.as_tensor(p, dtype=torch.float64)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} prompts must have shape {shape}, got {tuple(t.shape)}")
    return t


@dataclass(frozen=True)
class ToyState:
    """B = D·n rows of a toy system after t steps (what ``start``/``advance``/``select`` return).

    Attributes:
        num_prompts: D.
        num_samples: n.
        prompts: (B, ...) the prompt of each row (x_0 for :class:`LinearGaussian`, the base
            pre-logits (τ, d) for :class:`SoftmaxHead`).
        controls: (B, t, d) float64, the controls applied so far (0 where none was given).
        controlled: whether any step so far had controls.
        noise: (B, t, p) float64 process noise so far (:class:`LinearGaussian`), or None.
        tokens: (B, t) long, tokens so far (:class:`SoftmaxHead`), or None.
        logprobs: (B, t) float32 log q of the tokens (:class:`SoftmaxHead`), or None.
        base_logprobs: (B, t) float32 log p (:class:`SoftmaxHead`), or None.
        horizon: T = τ, the number of steps of the system.
        end_token: the token that finishes a row (:class:`SoftmaxHead` with an end token), or
            None: every row runs to τ.
    """

    num_prompts: int
    num_samples: int
    prompts: torch.Tensor
    controls: torch.Tensor
    controlled: bool
    horizon: int
    noise: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    base_logprobs: torch.Tensor | None = None
    end_token: int | None = None

    @property
    def position(self) -> int:
        """t, steps taken."""
        return self.controls.shape[1]

    @property
    def finished(self) -> torch.Tensor:
        """(D, n) bool: every row finishes at t = τ, and a row of a system with an end token
        once it has emitted it."""
        done = self.position >= self.horizon
        if self.end_token is None or self.tokens is None or done:
            return torch.full((self.num_prompts, self.num_samples), done, dtype=torch.bool)
        return self.ended().reshape(self.num_prompts, self.num_samples)

    def ended(self) -> torch.Tensor:
        """(B,) bool: the row has emitted the end token (all False without one)."""
        if self.end_token is None or self.tokens is None:
            return torch.zeros(self.prompts.shape[0], dtype=torch.bool)
        return (self.tokens == self.end_token).any(1)

    def lengths(self) -> torch.Tensor:
        """(B,) long, tokens up to and including the end token (t for a row that has not ended)."""
        t = self.position
        if self.end_token is None or self.tokens is None or t == 0:
            return torch.full((self.prompts.shape[0],), t, dtype=torch.long)
        hit = self.tokens == self.end_token
        first = hit.to(torch.long).argmax(1) + 1
        return torch.where(hit.any(1), first, torch.full_like(first, t))

    def gather(self, flat: torch.Tensor, num_samples: int) -> ToyState:
        """Rows ``flat`` (D·n',) of this state, n' = ``num_samples``."""
        pick = lambda x: None if x is None else x[flat]
        return dataclasses.replace(
            self, num_samples=num_samples, prompts=self.prompts[flat], controls=self.controls[flat],
            noise=pick(self.noise), tokens=pick(self.tokens), logprobs=pick(self.logprobs),
            base_logprobs=pick(self.base_logprobs),
        )


def _check_toy_advance(state: ToyState, controls: torch.Tensor | None, noise: torch.Tensor, d: int) -> int:
    """Shapes of a toy advance: noise (D, n, b, ...), controls (D, n, b, d); returns b."""
    D, n = state.num_prompts, state.num_samples
    if noise.dim() < 3 or tuple(noise.shape[:2]) != (D, n):
        raise ValueError(f"noise must have shape (D={D}, n={n}, b, ...), got {tuple(noise.shape)}")
    b = noise.shape[2]
    if state.position + b > state.horizon:
        raise ValueError(f"cannot advance {b} steps at t={state.position}: horizon τ={state.horizon}")
    if controls is not None and tuple(controls.shape) != (D, n, b, d):
        raise ValueError(f"controls must have shape (D, n, b, d) = {(D, n, b, d)}, got {tuple(controls.shape)}")
    return b


def _start_toy(context: torch.Tensor, num_samples: int, horizon: int, d: int) -> ToyState:
    """Rows ``j*n + i`` repeating prompt j; no step yet."""
    n = check_int("num_samples", num_samples, minimum=1, symbol="n")
    D = context.shape[0]
    return ToyState(num_prompts=D, num_samples=n, prompts=context.repeat_interleave(n, 0),
                    controls=torch.zeros(D * n, 0, d, dtype=torch.float64), controlled=False, horizon=horizon)


def _with_controls(state: ToyState, controls: torch.Tensor | None, b: int) -> ToyState:
    """The state with b more steps of controls (zeros for None) in its history."""
    B, d = state.controls.shape[0], state.controls.shape[2]
    v = torch.zeros(B, b, d, dtype=torch.float64) if controls is None else controls.to(torch.float64).reshape(B, b, d)
    return dataclasses.replace(state, controls=torch.cat([state.controls, v], 1),
                               controlled=state.controlled or controls is not None)


class LinearGaussian(StepwiseDynamics):
    r"""A linear-Gaussian state-space system observed at its final state.

    A prompt is :math:`x_0\in\mathbb R^p`; controls V = [v_1..v_τ] (D, n, τ, d); for t = 1..τ

    .. math::
        x_t = F x_{t-1} + A_t v_t + \sigma w_t,\qquad w_t\sim\mathcal N(0, I_p),

    with :math:`A_t` = ``A[:, (t-1)d : t d]`` (p, d), and the outcome is :math:`y = x_\tau`.
    The state is Gaussian and linear in V:

    .. math::
        x_t = F^t x_0 + M_t\,\mathrm{vec}(V_{1:t}) + \sigma N_t\,\mathrm{vec}(W_{1:t}),\quad
        M_t = [F^{t-1}A_1, \dots, A_t],\ N_t = [F^{t-1}, \dots, I],

    so :math:`x_t\sim\mathcal N(F^t x_0 + M_t\mathrm{vec}(V_{1:t}),\ \sigma^2 N_tN_t^\top)`.
    The defaults F = I and σ = 0 give :math:`y = x_0 + A\,\mathrm{vec}(V)`, a deterministic
    linear map of the controls, for which :func:`ctrlalign.theory.linear_gaussian_optimum` is
    the closed form of q*, η and F with the quadratic reward
    :class:`~ctrlalign.rewards.toy.QuadraticReward`.

    A state (:class:`ToyState`) keeps x_0 and the control and noise histories; the value
    :math:`x_t` is evaluated by the closed form above, so it does not depend on how the τ steps
    were split into advances (bitwise). ``controls=None`` means v = 0.

    Args:
        A: (p, τ·d), the control maps A_1..A_τ side by side.
        horizon: τ.
        hidden_size: d.
        transition: F (p, p), or None for the identity.
        noise_std: σ ≥ 0; with σ = 0 the system is deterministic and draws no random numbers.
    """

    def __init__(self, A: torch.Tensor, horizon: int, hidden_size: int, *,
                 transition: torch.Tensor | None = None, noise_std: float = 0.0):
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
        self.outcome_size = p = A.shape[0]
        self.transition = None if transition is None else torch.as_tensor(transition, dtype=torch.float64)
        if self.transition is not None and tuple(self.transition.shape) != (p, p):
            raise ValueError(f"transition F must have shape (p, p) = {(p, p)}, got {tuple(self.transition.shape)}")
        if noise_std < 0:
            raise ValueError(f"noise_std σ must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)

    def power(self, k: int) -> torch.Tensor | None:
        """F^k (p, p), or None when F is the identity."""
        if self.transition is None:
            return None
        return torch.linalg.matrix_power(self.transition, k)

    def control_map(self, t: int) -> torch.Tensor:
        r""":math:`M_t = [F^{t-1}A_1, \dots, A_t]` (p, t·d)."""
        d = self.hidden_size
        if self.transition is None:
            return self.A[:, : t * d]
        return torch.cat([self.power(t - s) @ self.A[:, (s - 1) * d: s * d] for s in range(1, t + 1)], 1)

    def noise_map(self, t: int) -> torch.Tensor:
        r""":math:`N_t = [F^{t-1}, \dots, I]` (p, t·p)."""
        p = self.outcome_size
        eye = torch.eye(p, dtype=torch.float64)
        return torch.cat([eye if self.transition is None else self.power(t - s) for s in range(1, t + 1)], 1)

    def final_state(self, prompt: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""The final state's pieces for one prompt x_0 (p,): :math:`(F^\tau x_0,\ M_\tau,\ N_\tau)`,
        so that :math:`x_\tau = F^\tau x_0 + M_\tau\mathrm{vec}(V) + \sigma N_\tau\mathrm{vec}(W)`
        (the arguments of :func:`ctrlalign.theory.linear_gaussian_state_space_optimum`)."""
        x0 = _as_prompt_tensor(prompt, (self.outcome_size,), "LinearGaussian")
        F_tau = self.power(self.horizon)
        return (x0 if F_tau is None else F_tau @ x0), self.control_map(self.horizon), self.noise_map(self.horizon)

    def prepare(self, prompts: Sequence[Any]) -> torch.Tensor:
        """Stack D prompt vectors into (D, p)."""
        return torch.stack([_as_prompt_tensor(p, (self.outcome_size,), "LinearGaussian") for p in prompts])

    def draw_noise(self, generators, num_samples, steps=None) -> torch.Tensor:
        """W (D, n, steps, p) standard normals from ``generators[j]`` for prompt j; zeros (no
        draw at all) when σ = 0. steps defaults to τ."""
        steps = self.horizon if steps is None else steps
        if self.noise_std == 0:
            return torch.zeros(len(generators), num_samples, steps, self.outcome_size, dtype=torch.float64)
        return torch.stack([torch.randn(num_samples, steps, self.outcome_size, generator=g, dtype=torch.float64)
                            for g in generators])

    def start(self, context: torch.Tensor, num_samples: int) -> ToyState:
        """x_0 of every row (D·n, p); no step yet."""
        state = _start_toy(context, num_samples, self.horizon, self.hidden_size)
        return dataclasses.replace(state, noise=torch.zeros(state.prompts.shape[0], 0, self.outcome_size,
                                                            dtype=torch.float64))

    def state_value(self, state: ToyState, t: int | None = None) -> torch.Tensor:
        """x_t (B, p) of every row by the closed form (t defaults to the state's position)."""
        t = state.position if t is None else t
        F_t = self.power(t)
        x = state.prompts.clone() if F_t is None else state.prompts @ F_t.T
        if state.controlled and t > 0:
            x = x + state.controls[:, :t].flatten(1) @ self.control_map(t).T
        if self.noise_std > 0 and t > 0:
            x = x + self.noise_std * (state.noise[:, :t].flatten(1) @ self.noise_map(t).T)
        return x

    def advance(self, state: ToyState, controls: torch.Tensor | None, noise: torch.Tensor) -> tuple[ToyState, Step]:
        """b more steps; the step's ``values`` are x_{t+1..t+b} (B, b, p)."""
        b = _check_toy_advance(state, controls, noise, self.hidden_size)
        B, p = state.prompts.shape[0], self.outcome_size
        new = _with_controls(state, controls, b)
        new = dataclasses.replace(new, noise=torch.cat([state.noise, noise.to(torch.float64).reshape(B, b, p)], 1))
        t0 = state.position
        values = torch.stack([self.state_value(new, t0 + s + 1) for s in range(b)], 1) if b else \
            torch.zeros(B, 0, p, dtype=torch.float64)
        return new, Step(values=values)

    def select(self, state: ToyState, rows: torch.Tensor) -> ToyState:
        """New row (j, i) continues old row (j, rows[j, i])."""
        rows = torch.as_tensor(rows)
        return state.gather(check_rows(rows, state.num_prompts, state.num_samples), rows.shape[1])

    def outcomes(self, state: ToyState) -> Outcomes:
        """values x_t (D, n, p)."""
        D, n = state.num_prompts, state.num_samples
        return Outcomes(num_prompts=D, num_samples=n, values=self.state_value(state).reshape(D, n, -1))

    def rollout(self, context, controls, generators, num_samples) -> Outcomes:
        """y (D, n, p) = x_τ (see :meth:`StepwiseDynamics.rollout`); controls must have τ steps."""
        if controls is not None and controls.dim() == 4 and controls.shape[2] != self.horizon:
            raise ValueError(f"LinearGaussian needs horizon τ = {self.horizon}, got {controls.shape[2]}")
        return super().rollout(context, controls, generators, num_samples)


class SoftmaxHead(StepwiseDynamics):
    r"""A synthetic autoregressive pre-logit system with a softmax head.

    For a prompt :math:`x\in\mathbb R^{\tau\times d}` (one base pre-logit per step) and token
    embeddings E (K+1, d) (row K is the start token):

    .. math::
        z_t = x_t + E[y_{t-1}],\qquad
        y_t \sim \mathrm{softmax}\big(W(z_t + v_t) + b\big),\quad t = 1..\tau .

    The state is the tokens so far; each step draws one token per row by inverse CDF with a
    pre-drawn uniform. Outcomes are token sequences (D, n, τ) in ``tokens`` (and ``values``).

    With an ``end_token`` e (one of the K), a row that emits e is finished: every later step
    gives it the token e again as padding, log-probabilities 0 and ``alive`` False (it still
    consumes its uniform), and its outcome's ``lengths`` stop at e (inclusive). The responses
    are then the sequences of non-end tokens of length τ and those ended by e at any t ≤ τ.
    With K^τ small, :meth:`outcome_distribution` computes the exact outcome probabilities under
    :math:`v_t\sim\mathcal N(u_t,\sigma^2 I)` by Gauss–Hermite quadrature (exact to
    quadrature precision for the small d used in tests).

    Args:
        W: (K, d) head weights; b: (K,) head bias; embeddings: (K+1, d) or None (zeros).
        horizon: τ.
        end_token: e in 0..K−1, the token that finishes a row, or None (rows run to τ).
        sentence_token: a token in 0..K−1 that ends a "sentence" (:meth:`sentence_ends` counts
            it), or None (no sentences).
    """

    def __init__(self, W: torch.Tensor, b: torch.Tensor, horizon: int, embeddings: torch.Tensor | None = None,
                 end_token: int | None = None, sentence_token: int | None = None):
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
        if end_token is not None and not (isinstance(end_token, int) and 0 <= end_token < K):
            raise ValueError(f"end_token must be a token in 0..{K - 1} or None, got {end_token!r}")
        self.end_token = end_token
        if sentence_token is not None and not (isinstance(sentence_token, int) and 0 <= sentence_token < K):
            raise ValueError(f"sentence_token must be a token in 0..{K - 1} or None, got {sentence_token!r}")
        self.sentence_token = sentence_token

    def head_weight(self) -> torch.Tensor:
        """W (K, d)."""
        return self.W

    def prepare(self, prompts: Sequence[Any]) -> torch.Tensor:
        """Stack D prompts into (D, τ, d)."""
        return torch.stack([_as_prompt_tensor(p, (self.horizon, self.hidden_size), "SoftmaxHead") for p in prompts])

    def draw_noise(self, generators, num_samples, steps=None) -> torch.Tensor:
        """Uniforms (D, n, steps) float64, prompt j's from ``generators[j]``; steps defaults to τ."""
        steps = self.horizon if steps is None else steps
        return torch.stack([torch.rand(num_samples, steps, generator=g, dtype=torch.float64) for g in generators])

    def start(self, context: torch.Tensor, num_samples: int) -> ToyState:
        """No token yet (the previous token is the start token K)."""
        state = _start_toy(context, num_samples, self.horizon, self.hidden_size)
        B = state.prompts.shape[0]
        return dataclasses.replace(state, tokens=torch.zeros(B, 0, dtype=torch.long),
                                   logprobs=torch.zeros(B, 0), base_logprobs=torch.zeros(B, 0),
                                   end_token=self.end_token)

    def advance(self, state: ToyState, controls: torch.Tensor | None, noise: torch.Tensor) -> tuple[ToyState, Step]:
        """b more tokens per row, prompt by prompt (row blocks of n); a row that has emitted the
        end token repeats it with log-probabilities 0, not alive."""
        b = _check_toy_advance(state, controls, noise, self.hidden_size)
        D, n, K, t0 = state.num_prompts, state.num_samples, self.num_classes, state.position
        tokens = torch.empty(D, n, b, dtype=torch.long)
        logp = torch.zeros(D, n, b)
        base_logp = torch.zeros(D, n, b)
        alive = torch.ones(D, n, b, dtype=torch.bool)
        x = state.prompts.reshape(D, n, self.horizon, self.hidden_size)[:, 0]  # (D, τ, d)
        last = state.tokens[:, -1] if t0 > 0 else torch.full((D * n,), K, dtype=torch.long)
        ended_before = state.ended().reshape(D, n)
        for j in range(D):
            u = noise[j]
            prev = last[j * n:(j + 1) * n]
            ended = ended_before[j].clone()
            for s in range(b):
                t = t0 + s
                z = x[j, t] + self.E[prev]  # (n, d)
                base = z @ self.W.T + self.b
                logits = base if controls is None else (z + controls[j, :, s].to(torch.float64)) @ self.W.T + self.b
                lsm = torch.log_softmax(logits, -1)
                cdf = lsm.exp().cumsum(-1)
                y = torch.searchsorted(cdf, (u[:, s] * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1).clamp_max(K - 1)
                lq = lsm.gather(-1, y[:, None]).squeeze(-1).float()
                lp = torch.log_softmax(base, -1).gather(-1, y[:, None]).squeeze(-1).float()
                if self.end_token is not None:
                    alive[j, :, s] = ~ended
                    y = torch.where(ended, self.end_token, y)
                    lq, lp = torch.where(ended, 0.0, lq), torch.where(ended, 0.0, lp)
                    ended = ended | (y == self.end_token)
                tokens[j, :, s] = y
                logp[j, :, s] = lq
                base_logp[j, :, s] = lp
                prev = y
        B = D * n
        step = Step(tokens=tokens.reshape(B, b), logprobs=logp.reshape(B, b), base_logprobs=base_logp.reshape(B, b),
                    alive=alive.reshape(B, b))
        new = _with_controls(state, controls, b)
        new = dataclasses.replace(new, tokens=torch.cat([state.tokens, step.tokens], 1),
                                  logprobs=torch.cat([state.logprobs, step.logprobs], 1),
                                  base_logprobs=torch.cat([state.base_logprobs, step.base_logprobs], 1))
        return new, step

    def select(self, state: ToyState, rows: torch.Tensor) -> ToyState:
        """New row (j, i) continues old row (j, rows[j, i])."""
        rows = torch.as_tensor(rows)
        return state.gather(check_rows(rows, state.num_prompts, state.num_samples), rows.shape[1])

    def outcomes(self, state: ToyState) -> Outcomes:
        """Token sequences (D, n, t) in ``tokens`` and ``values``, with their log-probabilities;
        ``lengths`` stop at the end token."""
        D, n, t = state.num_prompts, state.num_samples, state.position
        tokens = state.tokens.reshape(D, n, t)
        return Outcomes(
            num_prompts=D, num_samples=n, values=tokens.clone(), tokens=tokens,
            lengths=state.lengths().reshape(D, n),
            logprobs=state.logprobs.reshape(D, n, t), base_logprobs=state.base_logprobs.reshape(D, n, t),
        )

    def sentence_ends(self, state: ToyState) -> torch.Tensor | None:
        """(D, n) long: how often each row has emitted ``sentence_token`` before its end (None
        without a sentence token)."""
        if self.sentence_token is None:
            return None
        D, n, t = state.num_prompts, state.num_samples, state.position
        before_end = torch.arange(t).view(1, t) < state.lengths().view(-1, 1)
        return ((state.tokens == self.sentence_token) & before_end).sum(-1).reshape(D, n)

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
        controls :math:`v_t\sim\mathcal N(u_t,\sigma^2 I)`; with an end token, of every
        response (a sequence cut after its first end token).

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
            if self.end_token is not None and self.end_token in seq:
                seq = seq[:seq.index(self.end_token) + 1]
                if seq in out:
                    continue
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
