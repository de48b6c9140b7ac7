r"""Resampling: ancestor indices from importance weights, per prompt.

Given unnormalised log-weights ℓ (D, n) of n particles per prompt, with normalised weights
:math:`w = \mathrm{softmax}(\ell)`, a resampler returns ancestors a (D, m) (m = n unless asked
otherwise): particle i of the new population continues particle :math:`a_i` of the old one.
Every scheme here is **unbiased**, :math:`\mathbb E[\#\{i : a_i = j\}] = m\,w_j`, so a population
resampled and given equal weights represents the same distribution; they differ in variance.

Three schemes are the inverse CDF :math:`a_i = F_w^{-1}(u_i)` of m points in [0, 1), in order
of decreasing variance:

============== ============================================ ==============================
scheme          points :math:`u_i`, i = 0 … m−1              offspring of particle j
============== ============================================ ==============================
multinomial     iid :math:`U(0,1)`                           Multinomial(m, w)
stratified      :math:`(i + U_i)/m`, :math:`U_i` iid         within ±1 of the strata it covers
systematic      :math:`(i + U)/m`, one U                     :math:`\lfloor m w_j\rfloor` or :math:`\lceil m w_j\rceil`
============== ============================================ ==============================

and ``residual`` keeps :math:`\lfloor m w_j\rfloor` copies of particle j deterministically and
draws the remaining :math:`R = m - \sum_j \lfloor m w_j\rfloor` multinomially from the residual
weights :math:`\propto m w_j - \lfloor m w_j\rfloor`.

Prompt j's uniforms come from ``generators[j]`` only, so its ancestors do not depend on the
other prompts of the batch. A particle of weight 0 (ℓ = −inf) is never an ancestor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._checks import ConfigError, check_int

__all__ = ["RESAMPLERS", "inverse_cdf", "offspring_counts", "resample"]


def _uniforms(generators: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(D, *shape) float64 uniforms in [0, 1), prompt j's block from ``generators[j]``."""
    return torch.stack([torch.rand(shape, generator=g, dtype=torch.float64, device=g.device)
                        for g in generators]).to(device)


def inverse_cdf(weights: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Ancestors (D, m) = F_w^{-1}(points) for normalised weights (D, n) and points (D, m) in
    [0, 1); a point that rounding puts at or past the total mass goes to the last particle
    with positive weight."""
    cdf = weights.cumsum(-1)
    idx = torch.searchsorted(cdf, points * cdf[:, -1:], right=True)
    n = weights.shape[-1]
    last = n - 1 - (weights > 0).flip(-1).to(torch.int64).argmax(-1, keepdim=True)
    return torch.minimum(idx, last)


def _multinomial(weights: torch.Tensor, num: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
    return inverse_cdf(weights, _uniforms(generators, (num,), weights.device))


def _stratified(weights: torch.Tensor, num: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
    i = torch.arange(num, dtype=torch.float64, device=weights.device)
    return inverse_cdf(weights, (i + _uniforms(generators, (num,), weights.device)) / num)


def _systematic(weights: torch.Tensor, num: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
    i = torch.arange(num, dtype=torch.float64, device=weights.device)
    return inverse_cdf(weights, (i + _uniforms(generators, (1,), weights.device)) / num)


def _residual(weights: torch.Tensor, num: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
    scaled = weights * num
    floors = scaled.floor()
    rest = scaled - floors
    # every prompt draws the same number of uniforms (num), so its stream does not depend on R
    u = _uniforms(generators, (num,), weights.device)
    rows = []
    for j in range(weights.shape[0]):
        det = torch.repeat_interleave(torch.arange(weights.shape[1], device=weights.device), floors[j].long())
        R = num - det.numel()
        if R > 0:
            extra = inverse_cdf((rest[j] / rest[j].sum()).unsqueeze(0), u[j:j + 1, :R]).squeeze(0)
            det = torch.cat([det, extra])
        rows.append(det[:num])
    return torch.stack(rows)


#: scheme name → ``f(weights (D, n) normalised, m, generators) -> ancestors (D, m)``
RESAMPLERS: dict[str, Callable[[torch.Tensor, int, Sequence[torch.Generator]], torch.Tensor]] = {
    "multinomial": _multinomial,
    "stratified": _stratified,
    "systematic": _systematic,
    "residual": _residual,
}


def resample(log_weights: torch.Tensor, generators: Sequence[torch.Generator], scheme: str = "systematic",
             num: int | None = None) -> torch.Tensor:
    r"""Ancestor indices (D, m) from unnormalised log-weights ℓ (D, n).

    Args:
        log_weights: (D, n) unnormalised; −inf is weight 0. Each row needs one finite entry.
        generators: D generators, prompt j's uniforms from ``generators[j]``.
        scheme: a name in :data:`RESAMPLERS` (see the module docstring).
        num: m, the number of ancestors per prompt (default n).

    Returns:
        (D, m) long ancestors in [0, n), unbiased: :math:`\mathbb E[\#\{i: a_i=j\}] = m w_j`.

    Raises:
        ConfigError: an unknown scheme, m < 1, a row with no finite log-weight, or a wrong
            number of generators.
    """
    if scheme not in RESAMPLERS:
        raise ConfigError(f"unknown resampling scheme {scheme!r}; choose one of {', '.join(RESAMPLERS)}")
    if log_weights.dim() != 2:
        raise ValueError(f"log_weights must have shape (D, n), got {tuple(log_weights.shape)}")
    D, n = log_weights.shape
    m = n if num is None else check_int("num", num, minimum=1, symbol="m")
    if len(generators) != D:
        raise ConfigError(f"need one generator per prompt ({D}), got {len(generators)}")
    ell = log_weights.double()
    dead = ~torch.isfinite(ell).any(-1) | torch.isnan(ell).any(-1) | (ell == float("inf")).any(-1)
    if bool(dead.any()):
        rows = dead.nonzero().flatten().tolist()
        raise ConfigError(f"cannot resample prompts {rows}: their log-weights have no finite entry or hold "
                          "NaN/+inf (every particle has weight 0, or the weights are undefined)")
    return RESAMPLERS[scheme](torch.softmax(ell, dim=-1), m, generators)


def offspring_counts(ancestors: torch.Tensor, num_particles: int) -> torch.Tensor:
    """(D, n) how many times each of n old particles is an ancestor, from ancestors (D, m)."""
    counts = torch.zeros(ancestors.shape[0], num_particles, dtype=torch.long, device=ancestors.device)
    return counts.scatter_add_(1, ancestors, torch.ones_like(ancestors))
