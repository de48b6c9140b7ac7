r"""KL of a response or of a control, and the noise scale on the logits.

* :func:`token_kl`: :math:`\sum_t [\log p_\text{ctrl}(y_t) - \log p_\text{base}(y_t)]` over a
  response's tokens — a single-sample estimate (see its docstring for what it is and is not).
* :func:`control_kl`: :math:`\mathrm{KL}(q_U\|p) = \sum_t \|u_t\|^2 / (2\sigma^2)`.
* :func:`head_row_norm`, :func:`dynamics_row_norm`, :func:`logit_noise_scale`: σ expressed on
  the logit scale, σ·‖w‖.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["control_kl", "dynamics_row_norm", "head_row_norm", "logit_noise_scale", "token_kl"]


def token_kl(logprobs: Sequence[float] | torch.Tensor, base_logprobs: Sequence[float] | torch.Tensor,
             length: int | None = None) -> float:
    r"""Token-level log-ratio of one response: :math:`\sum_{t\le L}[\log p_\text{ctrl}(y_t) - \log p_\text{base}(y_t)]`.

    ``logprobs[t]`` is the log-probability of the generated token under the controlled head
    (with the sampled control v_t), ``base_logprobs[t]`` under the uncontrolled head; only the
    first ``length`` tokens count (default: all).

    This is a **single-sample** estimate: for a response y drawn from the controlled model it is
    an unbiased one-draw estimate of KL(p_ctrl(·|V) ‖ p_base) along that path, but it is
    noisy (it can be negative), it conditions on the drawn control V, and for a response
    *selected* by reward it is the log-ratio of that response, not the KL of any distribution.
    It is exactly 0 for the plain model (σ = 0).
    """
    lp = torch.as_tensor(logprobs, dtype=torch.float64).flatten()
    blp = torch.as_tensor(base_logprobs, dtype=torch.float64).flatten()
    if lp.shape != blp.shape:
        raise ValueError(f"logprobs and base_logprobs differ in length: {lp.numel()} vs {blp.numel()}")
    L = lp.numel() if length is None else int(length)
    return float((lp[:L] - blp[:L]).sum())


def control_kl(mean: torch.Tensor, sigma: float) -> float:
    r""":math:`\mathrm{KL}(q_U\|p) = \sum_t \|u_t\|^2/(2\sigma^2)` of one control mean U (τ, d)."""
    if sigma <= 0:
        return 0.0
    return float(mean.double().pow(2).sum() / (2 * sigma**2))


def head_row_norm(weight: torch.Tensor, statistic: str = "median") -> float:
    """Typical row norm ‖w‖ of an output head W (V, d): the median (default) or mean of ‖W[v]‖."""
    norms = weight.detach().float().norm(dim=-1)
    if statistic == "median":
        return float(norms.median())
    if statistic == "mean":
        return float(norms.mean())
    raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")


def logit_noise_scale(sigma: float, row_norm: float | None) -> float | None:
    """σ·‖w‖: the std of the logit perturbation (w·v for v ~ N(0, σ²I) has std σ‖w‖), None if unknown."""
    if row_norm is None:
        return None
    return float(sigma) * float(row_norm)


def dynamics_row_norm(dynamics) -> float | None:
    """‖w‖ (median row norm) of a dynamics' output head when it has one (CausalLM, SoftmaxHead)."""
    head = getattr(dynamics, "head", None)
    W = getattr(head, "weight", None) if head is not None else None
    if W is None:
        W = getattr(dynamics, "W", None)
    if W is None or not isinstance(W, torch.Tensor) or W.dim() != 2:
        return None
    return head_row_norm(W)
