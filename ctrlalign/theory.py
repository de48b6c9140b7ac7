r"""The mathematics of control on pre-logits, as functions that are checked by property tests.

Notation (see ``docs/concepts.md``): for a prompt :math:`x`, controls
:math:`V=[v_1..v_\tau]\in\mathbb R^{\tau\times d}` are drawn from
:math:`q(V\mid U,\sigma^2)=\mathcal N(U,\sigma^2 I)`; the uncontrolled prior is
:math:`p(V)=q(V\mid 0,\sigma^2)`. With reward :math:`r` and temperature :math:`\lambda`:

* cost :math:`J(U) = -\mathbb E_{q_U}[r] + \lambda\,\mathrm{KL}(q_U\|p)`,
  :math:`\mathrm{KL}(q_U\|p)=\sum_t \|u_t\|^2/(2\sigma^2)`;
* free energy :math:`F=\log \mathbb E_p[\exp(r/\lambda)]` and the bound
  :math:`-\lambda F \le J(U)`, with :math:`J(q) = -\lambda F + \lambda\,\mathrm{KL}(q\|q^*)` for
  every :math:`q`, where :math:`q^* = \exp(r/\lambda)\,p/\eta`, :math:`\eta = e^F`;
* importance log-weights toward :math:`q^*` from the proposal :math:`q(\cdot\mid\hat U)`:
  :math:`\log w_i = r_i/\lambda - \frac{1-\alpha}{\sigma^2}\sum_t \hat u_t^\top v_t^{(i)}`,
  self-normalised.

Shapes use the project's letters: D prompts, n samples, τ horizon, d hidden size.
Everything is computed in log space, in float64: rewards of magnitude 1e12 with λ down to
1e-296 give finite results and weights that are exactly one-hot rather than NaN; a λ so small
that r/λ overflows float64 is refused naming λ and the reward scale (:func:`tempered_logits`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._checks import ConfigError, check_interval, check_positive

__all__ = [
    "LinearGaussianOptimum",
    "TiltedGaussian",
    "adaptive_temperature",
    "effective_sample_size",
    "free_energy",
    "gaussian_class_conditional_head",
    "gaussian_kl",
    "gaussian_kl_full",
    "gaussian_kl_isotropic",
    "gaussian_tilted_state",
    "importance_weights",
    "linear_gaussian_cost",
    "linear_gaussian_optimum",
    "linear_gaussian_state_space_optimum",
    "log_mean_exp",
    "log_weights",
    "tempered_logits",
    "weight_entropy",
]


def log_mean_exp(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r""":math:`\log \frac1n\sum_i e^{x_i}` along ``dim``, computed stably (log-sum-exp)."""
    n = x.shape[dim]
    return torch.logsumexp(x, dim=dim) - math.log(n)


def tempered_logits(
    rewards: torch.Tensor, temperature: float | torch.Tensor, offsets: torch.Tensor | None = None
) -> torch.Tensor:
    r"""The unnormalised log-weights :math:`\ell_i = r_i/\lambda - c_i` in float64, refusing overflow.

    Their logsumexp is a round's log-mass (the reservoir compares it across rounds), so they are
    not shifted: :math:`r/\lambda` must be a float64 number. With :math:`|r| \le 10^{12}` that
    holds for every λ ≥ 1e-296; a smaller λ for the same rewards cannot be represented and is
    refused (nothing becomes NaN further on). Use a larger λ (its weights are already one-hot at
    the argmax) or an adaptive one (``target_ess``).

    Args:
        rewards: (D, n) rewards (any leading shape (..., n)).
        temperature: λ > 0, a float or a (D,) tensor; λ = +inf gives :math:`\ell = -c`.
        offsets: (D, n) the terms c_i, or None (zero).

    Returns:
        (D, n) float64 log-weights, finite.

    Raises:
        ConfigError: r/λ − c is not a finite float64 number for some sample; the message names
            λ, the reward scale max|r| of the prompt and the smallest λ that scale allows.
    """
    r = rewards.double()
    lam = torch.as_tensor(temperature, dtype=torch.float64, device=r.device)
    lam_b = lam.unsqueeze(-1) if lam.dim() else lam
    logits = torch.where(torch.isinf(lam_b), torch.zeros_like(r), r / lam_b)
    if offsets is not None:
        logits = logits - offsets.double()
    bad = ~torch.isfinite(logits)
    if bool(bad.any()):
        where = torch.nonzero(bad)[0]
        row = tuple(int(x) for x in where[:-1])
        value = float(lam[row]) if lam.dim() else float(lam)
        scale = float(r[row].abs().max())
        prompt = f" (prompt {row[0]})" if row else ""
        floor = scale / torch.finfo(torch.float64).max
        if offsets is not None and math.isfinite(float((r[row] / value).abs().max())):
            raise ConfigError(
                f"the log-weights r/λ − c overflow float64{prompt}: temperature (λ) = {value:g}, rewards up to "
                f"|r| = {scale:g}, offsets c up to {float(offsets.double()[row].abs().max()):g}; "
                "raise λ or sigma (σ)")
        raise ConfigError(
            f"temperature (λ) = {value:g} is too small for rewards of scale |r| = {scale:g}{prompt}: r/λ "
            f"overflows float64; λ must exceed |r|/1.8e308 = {floor:.3g} (weights are one-hot at the argmax "
            "long before that), or use an adaptive λ (target_ess)")
    return logits


def free_energy(rewards: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Monte-Carlo free energy :math:`\hat F = \log \frac1n \sum_i \exp(r_i/\lambda)`.

    Args:
        rewards: (..., n) rewards of samples drawn from the prior p.
        temperature: λ > 0.

    Returns:
        (...) the estimate of F (not multiplied by λ). It is a consistent estimator of
        :math:`F=\log\mathbb E_p[e^{r/\lambda}]` (biased low for finite n, by Jensen).
    """
    lam = check_positive("temperature", temperature, symbol="λ")
    return log_mean_exp(tempered_logits(rewards, lam), dim=-1).to(rewards.dtype)


def log_weights(
    rewards: torch.Tensor,
    temperature: float,
    *,
    controls: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    sigma: float | None = None,
    alpha: float = 1.0,
) -> torch.Tensor:
    r"""Self-normalised importance log-weights toward :math:`q^*`.

    .. math::
        \log \tilde w_i = \frac{r_i}{\lambda}
            - \frac{1-\alpha}{\sigma^2}\sum_t \hat u_t^\top v_t^{(i)},\qquad
        \log w_i = \log \tilde w_i - \operatorname{logsumexp}_j \log \tilde w_j .

    α = 0 is exact importance sampling from :math:`q(\cdot\mid\hat U)` toward :math:`q^*`;
    α = 1 drops the likelihood-ratio term, leaving softmax(r/λ) (classic MPPI, and exact at
    :math:`\hat U=0`).

    Args:
        rewards: (D, n) rewards (any leading shape ``(...)`` works: (..., n)).
        temperature: λ > 0.
        controls: (D, n, τ, d) the sampled controls V; required when α < 1.
        mean: (D, τ, d) the proposal mean Û that generated ``controls``; required when α < 1.
        sigma: σ > 0, the proposal standard deviation; required when α < 1.
        alpha: α in [0, 1].

    Returns:
        (D, n) normalised log-weights; ``exp`` of them sums to one along the last axis.
    """
    lam = check_positive("temperature", temperature, symbol="λ")
    a = check_interval("alpha", alpha, 0.0, 1.0, symbol="α")
    offsets = None
    if a < 1.0:
        if controls is None or mean is None or sigma is None:
            raise ValueError("log_weights with alpha < 1 needs controls, mean and sigma")
        s = check_positive("sigma", sigma, symbol="σ")
        # Σ_t û_tᵀ v_t for each sample: (D, n)
        inner = torch.einsum("...ntd,...td->...n", controls.double(), mean.double())
        offsets = (1.0 - a) / (s * s) * inner
    return torch.log_softmax(tempered_logits(rewards, lam, offsets), dim=-1).to(rewards.dtype)


def importance_weights(rewards: torch.Tensor, temperature: float, **kwargs) -> torch.Tensor:
    """``exp(log_weights(...))``: (D, n) weights that sum to one. Same arguments as
    :func:`log_weights`."""
    return log_weights(rewards, temperature, **kwargs).exp()


def gaussian_kl(mean: torch.Tensor, sigma: float) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(U,\sigma^2I)\|\mathcal N(0,\sigma^2I)) = \sum_t\|u_t\|^2/(2\sigma^2)`.

    Args:
        mean: (..., τ, d) the control mean U.
        sigma: σ > 0.

    Returns:
        (...) the KL divergence in nats.
    """
    s = check_positive("sigma", sigma, symbol="σ")
    return mean.pow(2).sum(dim=(-2, -1)) / (2.0 * s * s)


def gaussian_kl_isotropic(
    mean: torch.Tensor, std: torch.Tensor | float, prior_std: float
) -> torch.Tensor:
    r"""KL between isotropic Gaussians :math:`\mathcal N(U, s^2 I)` and :math:`\mathcal N(0, \sigma^2 I)`.

    .. math:: \tfrac12\Big[m\frac{s^2}{\sigma^2} + \frac{\|U\|^2}{\sigma^2} - m
              + m\log\frac{\sigma^2}{s^2}\Big],\quad m=\tau d.

    Args:
        mean: (..., τ, d).
        std: s, a float or a tensor broadcastable to (...).
        prior_std: σ > 0.

    Returns:
        (...) KL in nats; equals :func:`gaussian_kl` when s = σ.
    """
    sig = check_positive("prior_std", prior_std, symbol="σ")
    m = mean.shape[-1] * mean.shape[-2]
    s2 = torch.as_tensor(std, dtype=mean.dtype, device=mean.device) ** 2
    ratio = s2 / (sig * sig)
    return 0.5 * (m * ratio + mean.pow(2).sum(dim=(-2, -1)) / (sig * sig) - m - m * torch.log(ratio))


def gaussian_kl_full(
    mean_q: torch.Tensor, cov_q: torch.Tensor, mean_p: torch.Tensor, cov_p: torch.Tensor
) -> torch.Tensor:
    r"""KL(N(μ_q, Σ_q) ‖ N(μ_p, Σ_p)) for full covariances.

    Args:
        mean_q: (m,) mean of q.
        cov_q: (m, m) covariance of q, symmetric positive definite.
        mean_p: (m,) mean of p.
        cov_p: (m, m) covariance of p, symmetric positive definite.

    Returns:
        () KL in nats.
    """
    m = mean_q.shape[-1]
    lp = torch.linalg.cholesky(cov_p)
    lq = torch.linalg.cholesky(cov_q)
    diff = (mean_p - mean_q).unsqueeze(-1)
    sol = torch.cholesky_solve(cov_q, lp)
    trace = torch.diagonal(sol, dim1=-2, dim2=-1).sum(-1)
    maha = (diff.transpose(-2, -1) @ torch.cholesky_solve(diff, lp)).squeeze(-1).squeeze(-1)
    logdet_p = 2 * torch.log(torch.diagonal(lp, dim1=-2, dim2=-1)).sum(-1)
    logdet_q = 2 * torch.log(torch.diagonal(lq, dim1=-2, dim2=-1)).sum(-1)
    return 0.5 * (trace + maha - m + logdet_p - logdet_q)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    r"""Kish effective sample size :math:`1/\sum_i w_i^2` from normalised log-weights.

    Args:
        log_w: (D, n) normalised log-weights.

    Returns:
        (D,) values in [1, n].
    """
    return torch.exp(-torch.logsumexp(2.0 * log_w, dim=-1))


def weight_entropy(log_w: torch.Tensor) -> torch.Tensor:
    r"""Shannon entropy :math:`-\sum_i w_i\log w_i` (nats) of normalised weights; (D, n) -> (D,).

    Zero for one-hot weights, log n for uniform ones. Entries with w = 0 contribute 0.
    """
    w = log_w.exp()
    return -(torch.where(w > 0, w * log_w, torch.zeros_like(w))).sum(dim=-1)


def adaptive_temperature(
    rewards: torch.Tensor,
    target_ess: float,
    *,
    offsets: torch.Tensor | None = None,
    bracket: tuple[float, float] = (1e-6, 1e6),
    iterations: int = 100,
) -> torch.Tensor:
    r"""λ per prompt such that the weights :math:`\log w_i = r_i/\lambda - c_i` (normalised)
    have Kish ESS = ``target_ess``·n: the adaptive tempering of sequential Monte Carlo.

    The rewards are standardised per prompt, :math:`z = (r - \bar r)/s_r`, and
    :math:`\lambda' = \lambda/s_r` is found by bisection on :math:`\log\lambda'` in
    ``bracket``; then :math:`\lambda = \lambda' s_r`. Since :math:`r/\lambda = z/\lambda' +
    \bar r/\lambda` and the constant cancels in the normalisation, the weights are invariant to
    any affine change :math:`a r + c` (a > 0) of the rewards. Without offsets the ESS increases
    monotonically with λ (its log-derivative in β = 1/λ is
    :math:`2(\mathbb E_\beta[r]-\mathbb E_{2\beta}[r])\le 0`), so the target is met to
    floating-point precision whenever it lies between the ESS at the bracket's ends; otherwise
    the nearer end is returned. Prompts whose rewards are all equal get λ = +inf (uniform
    weights up to the offsets).

    Args:
        rewards: (D, n) rewards.
        target_ess: the target ESS as a fraction of n, in (0, 1].
        offsets: (D, n) the terms c_i subtracted from r/λ (AISP's likelihood-ratio term
            :math:`\frac{1-\alpha}{\sigma^2}\langle\hat\theta,\theta_i\rangle`), or None.
        bracket: (low, high) search range for λ' = λ / s_r.
        iterations: bisection steps (100 halve a bracket of e^27.6 far below float64 precision).

    Returns:
        (D,) float64 temperatures λ > 0 (+inf where the rewards do not vary).
    """
    frac = check_interval("target_ess", target_ess, 0.0, 1.0)
    if frac == 0.0:
        raise ValueError("target_ess must be in (0, 1], got 0")
    r = rewards.double()
    n = r.shape[-1]
    c = torch.zeros_like(r) if offsets is None else offsets.double()
    scale = r.std(dim=-1, correction=0, keepdim=True)
    flat = scale.squeeze(-1) <= 1e-12 * (1.0 + r.abs().amax(dim=-1))
    z = (r - r.mean(dim=-1, keepdim=True)) / torch.where(flat.unsqueeze(-1), torch.ones_like(scale), scale)
    target = frac * n

    def ess(log_lam: torch.Tensor) -> torch.Tensor:
        return effective_sample_size(torch.log_softmax(z / log_lam.exp().unsqueeze(-1) - c, dim=-1))

    lo = torch.full(r.shape[:-1], math.log(bracket[0]), dtype=torch.float64, device=r.device)
    hi = torch.full_like(lo, math.log(bracket[1]))
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        small = ess(mid) < target  # ESS too small: raise λ
        lo = torch.where(small, mid, lo)
        hi = torch.where(small, hi, mid)
    lam = 0.5 * (lo + hi)
    lam = torch.where(ess(torch.full_like(lo, math.log(bracket[1]))) < target, math.log(bracket[1]), lam)
    lam = torch.where(ess(torch.full_like(lo, math.log(bracket[0]))) >= target, math.log(bracket[0]), lam)
    out = lam.exp() * scale.squeeze(-1)
    return torch.where(flat, torch.full_like(out, math.inf), out)


# ----------------------------------------------------------------------------------------
# Closed forms for the linear-Gaussian system (see ctrlalign.dynamics.LinearGaussian)
# ----------------------------------------------------------------------------------------


class TiltedGaussian(NamedTuple):
    """A Gaussian state tilted by a quadratic reward, in closed form.

    Attributes:
        log_normalizer: () log Z = log E[exp(r(X)/λ)].
        mean: (p,) the tilted mean.
        cov: (p, p) the tilted covariance.
    """

    log_normalizer: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor


def gaussian_tilted_state(mean: torch.Tensor, cov: torch.Tensor, Q: torch.Tensor, target: torch.Tensor,
                          temperature: float) -> TiltedGaussian:
    r"""The law of :math:`X\sim\mathcal N(m, S)` tilted by :math:`e^{r(X)/\lambda}`,
    :math:`r(x) = -\tfrac12 (x-y^\star)^\top Q (x-y^\star)`: a Kalman update with the target as
    an observation of precision :math:`A = Q/\lambda`.

    .. math::
        \log Z = -\tfrac12\log|I + SA| - \tfrac12 (m-y^\star)^\top (I + AS)^{-1}A\,(m-y^\star),\qquad
        K = S(I + AS)^{-1}A,\quad \mu^* = m + K(y^\star - m),\quad \Sigma^* = S - KS .

    This is the final state of :class:`~ctrlalign.dynamics.toy.LinearGaussian` without control
    (m = F^τ x_0, S = σ² N_τ N_τᵀ from :meth:`~ctrlalign.dynamics.toy.LinearGaussian.final_state`),
    the target SMC samples in token space; S may be singular.

    Args:
        mean: m (p,); cov: S (p, p) PSD; Q: (p, p) PSD; target: y* (p,); temperature: λ > 0.
    """
    lam = check_positive("temperature", temperature, symbol="λ")
    m, S, Q, t = (x.to(torch.float64) for x in (mean, cov, Q, target))
    eye = torch.eye(m.shape[0], dtype=torch.float64)
    A = Q / lam
    inner = torch.linalg.solve(eye + A @ S, A)  # (I + AS)^{-1} A
    e = m - t
    log_z = -0.5 * torch.logdet(eye + S @ A) - 0.5 * e @ inner @ e
    K = S @ inner
    return TiltedGaussian(log_normalizer=log_z, mean=m + K @ (t - m), cov=S - K @ S)


class LinearGaussianOptimum(NamedTuple):
    r"""The optimal control distribution of the linear-Gaussian system, in closed form.

    Attributes:
        mean: (m,) mean μ* of q* (m = τ·d, controls flattened). It is also the minimiser of
            J(U) over the mean-shift family N(U, σ²I).
        cov: (m, m) covariance P⁻¹ of q*.
        log_eta: () the free energy F = log η = log E_p[exp(r/λ)].
    """

    mean: torch.Tensor
    cov: torch.Tensor
    log_eta: torch.Tensor


def _lg_check(A: torch.Tensor, Q: torch.Tensor, target: torch.Tensor, x: torch.Tensor) -> None:
    p, m = A.shape
    if Q.shape != (p, p) or target.shape != (p,) or x.shape != (p,):
        raise ValueError(
            f"linear-Gaussian shapes: A (p, m)={tuple(A.shape)}, Q must be (p, p), target and x "
            f"(p,); got Q {tuple(Q.shape)}, target {tuple(target.shape)}, x {tuple(x.shape)}"
        )


def linear_gaussian_optimum(
    A: torch.Tensor,
    Q: torch.Tensor,
    target: torch.Tensor,
    x: torch.Tensor,
    sigma: float,
    temperature: float,
) -> LinearGaussianOptimum:
    r"""Closed-form q*, its mean, η and F for outcome y = x + A·vec(V) and reward
    :math:`r(y) = -\tfrac12 (y-y^\star)^\top Q (y-y^\star)`.

    With :math:`M=Q/\lambda`, :math:`c = x-y^\star` and :math:`P = I/\sigma^2 + A^\top M A`:

    .. math::
        q^* = \mathcal N(\mu^*, P^{-1}),\quad \mu^* = -P^{-1}A^\top M c,\\
        F = \log\eta = -\tfrac m2\log\sigma^2 - \tfrac12\log|P| + \tfrac12\mu^{*\top}P\mu^*
            - \tfrac12 c^\top M c .

    Args:
        A: (p, m) outcome map.
        Q: (p, p) symmetric PSD.
        target: (p,) y*.
        x: (p,) the prompt.
        sigma: σ > 0.
        temperature: λ > 0.

    Returns:
        :class:`LinearGaussianOptimum` in float64.
    """
    s = check_positive("sigma", sigma, symbol="σ")
    lam = check_positive("temperature", temperature, symbol="λ")
    A, Q, target, x = (t.to(torch.float64) for t in (A, Q, target, x))
    _lg_check(A, Q, target, x)
    m = A.shape[1]
    M = Q / lam
    c = x - target
    P = torch.eye(m, dtype=torch.float64) / (s * s) + A.T @ M @ A
    L = torch.linalg.cholesky(P)
    mu = -torch.cholesky_solve((A.T @ M @ c).unsqueeze(-1), L).squeeze(-1)
    logdet_P = 2 * torch.log(torch.diagonal(L)).sum()
    log_eta = -0.5 * m * math.log(s * s) - 0.5 * logdet_P + 0.5 * mu @ P @ mu - 0.5 * c @ M @ c
    cov = torch.cholesky_inverse(L)
    return LinearGaussianOptimum(mean=mu, cov=cov, log_eta=log_eta)


def linear_gaussian_state_space_optimum(
    control_map: torch.Tensor,
    noise_map: torch.Tensor,
    noise_std: float,
    Q: torch.Tensor,
    target: torch.Tensor,
    x: torch.Tensor,
    sigma: float,
    temperature: float,
) -> LinearGaussianOptimum:
    r"""Closed-form open-loop q*, η and F for a final state with process noise:
    :math:`y = x + M\,\mathrm{vec}(V) + \sigma_w N\,\mathrm{vec}(W)`, W ~ N(0, I), and
    :math:`r(y) = -\tfrac12 (y-y^\star)^\top Q (y-y^\star)`.

    This is :class:`~ctrlalign.dynamics.toy.LinearGaussian`'s final state
    :math:`x_\tau = F^\tau x_0 + M_\tau\mathrm{vec}(V) + \sigma_w N_\tau\mathrm{vec}(W)` (pass
    x = F^τ x_0, M = M_τ, N = N_τ, see :meth:`~ctrlalign.dynamics.toy.LinearGaussian.final_state`).
    The control law is open loop (V does not see W): :math:`q^*(V)\propto p(V)\,
    \mathbb E_W[e^{r(y)/\lambda}]`. Integrating W out, with :math:`M_\lambda = Q/\lambda` and
    :math:`K = I/\sigma_w^2 + N^\top M_\lambda N`,

    .. math::
        \mathbb E_W[e^{r/\lambda}] = |I + \sigma_w^2 N^\top M_\lambda N|^{-1/2}
        \exp\big(-\tfrac12 a^\top M'_\lambda a\big),\quad
        M'_\lambda = M_\lambda - M_\lambda N K^{-1} N^\top M_\lambda,

    a = x + M vec(V) − y*: the noise-free problem of :func:`linear_gaussian_optimum` with
    Q' = λ M'_λ, and F gains :math:`-\tfrac12\log|I + \sigma_w^2 N^\top M_\lambda N|`.

    Args:
        control_map: M (p, m), m = τ·d.
        noise_map: N (p, k), k the noise dimension (τ·p).
        noise_std: σ_w ≥ 0 (0: :func:`linear_gaussian_optimum` itself).
        Q: (p, p) symmetric PSD; target: (p,) y*; x: (p,) the noise-free, uncontrolled final state.
        sigma: σ > 0, the prior std of the controls; temperature: λ > 0.

    Returns:
        :class:`LinearGaussianOptimum` in float64.
    """
    lam = check_positive("temperature", temperature, symbol="λ")
    if noise_std < 0:
        raise ValueError(f"noise_std σ_w must be >= 0, got {noise_std}")
    Q = Q.to(torch.float64)
    if noise_std == 0:
        return linear_gaussian_optimum(control_map, Q, target, x, sigma, lam)
    N = noise_map.to(torch.float64)
    if N.dim() != 2 or N.shape[0] != Q.shape[0]:
        raise ValueError(f"noise_map must be (p={Q.shape[0]}, k), got {tuple(N.shape)}")
    M = Q / lam
    G = N.T @ M @ N
    k = N.shape[1]
    K = torch.eye(k, dtype=torch.float64) / noise_std**2 + G
    M_eff = M - M @ N @ torch.linalg.solve(K, N.T @ M)
    M_eff = 0.5 * (M_eff + M_eff.T)
    base = linear_gaussian_optimum(control_map, lam * M_eff, target, x, sigma, lam)
    logdet = torch.linalg.slogdet(torch.eye(k, dtype=torch.float64) + noise_std**2 * G).logabsdet
    return base._replace(log_eta=base.log_eta - 0.5 * logdet)


def linear_gaussian_cost(
    A: torch.Tensor,
    Q: torch.Tensor,
    target: torch.Tensor,
    x: torch.Tensor,
    sigma: float,
    temperature: float,
    mean: torch.Tensor,
    cov: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Exact cost :math:`J(q) = -\mathbb E_q[r] + \lambda\,\mathrm{KL}(q\|p)` for
    :math:`q = \mathcal N(\text{mean}, \text{cov})` on the linear-Gaussian system.

    .. math:: -\mathbb E_q[r] = \tfrac12\big[(c+A\mu)^\top Q (c+A\mu) + \operatorname{tr}(QA\Sigma A^\top)\big]

    Args:
        A: (p, m) outcome map, as in :func:`linear_gaussian_optimum`.
        Q: (p, p) symmetric PSD.
        target: (p,) y*.
        x: (p,) the prompt.
        sigma: σ > 0.
        temperature: λ > 0.
        mean: (m,) or (τ, d) mean of q.
        cov: (m, m) covariance of q; default σ²I (the mean-shift family, whose KL is
            ‖U‖²/(2σ²)).

    Returns:
        () J in float64.
    """
    s = check_positive("sigma", sigma, symbol="σ")
    lam = check_positive("temperature", temperature, symbol="λ")
    A, Q, target, x = (t.to(torch.float64) for t in (A, Q, target, x))
    _lg_check(A, Q, target, x)
    m = A.shape[1]
    mu = mean.to(torch.float64).reshape(m)
    prior_cov = torch.eye(m, dtype=torch.float64) * s * s
    if cov is None:
        cov = prior_cov
        kl = mu @ mu / (2 * s * s)
    else:
        cov = cov.to(torch.float64)
        kl = gaussian_kl_full(mu, cov, torch.zeros_like(mu), prior_cov)
    e = x - target + A @ mu
    neg_expected_reward = 0.5 * (e @ Q @ e + torch.trace(Q @ A @ cov @ A.T))
    return neg_expected_reward + lam * kl


# ----------------------------------------------------------------------------------------
# The Gaussian / softmax link
# ----------------------------------------------------------------------------------------


def gaussian_class_conditional_head(
    class_means: torch.Tensor, variance: float, log_priors: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The softmax head implied by class-conditional Gaussian pre-logits.

    If :math:`z\mid c\sim\mathcal N(\mu_c, s^2 I)` with prior :math:`\pi_c`, Bayes' rule gives
    :math:`P(c\mid z)=\mathrm{softmax}(Wz+b)_c` exactly, with

    .. math:: W_c = \mu_c/s^2,\qquad b_c = -\|\mu_c\|^2/(2s^2) + \log\pi_c .

    Args:
        class_means: (K, d) the means μ_c.
        variance: s² > 0, the shared isotropic variance.
        log_priors: (K,) log π_c (normalised or not); default uniform.

    Returns:
        (W, b) with shapes (K, d) and (K,).
    """
    v = check_positive("variance", variance, symbol="s²")
    W = class_means / v
    b = -class_means.pow(2).sum(-1) / (2 * v)
    if log_priors is not None:
        b = b + log_priors
    return W, b
