r"""Every controller read out against plain Best-of-N at matched budgets, on two axes.

Plain Best-of-N's reward as a function of N, for one (prompt, seed), is a curve through the
points (x_N, r_N), where x_N is what Best-of-N spent at N: its decoded tokens, or its reward
calls (full + prefix; N for Best-of-N). A controller's record for that (prompt, seed) spent x
and kept reward r; its gain at matched budget is

.. math:: \Delta = r - \hat r_{\text{BoN}}(x),\qquad
          \hat r_{\text{BoN}}(x) = \text{linear interpolation of } r_N \text{ in } \log x_N ,

clamped to the curve's ends outside its range (such records are counted, ``outside``). The
gains are paired by (prompt, seed) and their mean's 95% interval is
:func:`~ctrlalign.bench.stats.mean_ci`'s (prompts as clusters), so seeds of one prompt are not
counted as independent.

Pure functions of records (dicts with ``controller``, ``budget``, ``seed``, ``prompt_id``,
``reward``, ``tokens``, ``reward_calls`` (or ``full_calls``), ``prefix_calls``), usable by any
script that writes such records.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import stats

__all__ = ["AXES", "budget_of", "default_reference", "log_interp", "matched_readout", "reference_curves"]

#: the budget axes: name → (how to read a record's spend, label)
AXES = {
    "tokens": "decoded tokens",
    "calls": "reward calls (full + prefix)",
}


def budget_of(record: dict[str, Any], axis: str) -> float:
    """What a record spent on ``axis``: its decoded tokens, or its full + prefix reward calls."""
    if axis == "tokens":
        return float(record["tokens"])
    if axis == "calls":
        full = record["reward_calls"] if "reward_calls" in record else record["full_calls"]
        return float(full) + float(record.get("prefix_calls") or 0)
    raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")


def log_interp(xs: Sequence[float], ys: Sequence[float], x: float) -> tuple[float, bool]:
    """The curve through (xs, ys) (xs > 0) linearly interpolated in log x at ``x``, and whether
    ``x`` lies within [min xs, max xs] (outside, the value is clamped to the nearest end).
    Points of equal x are averaged."""
    pts: dict[float, list[float]] = {}
    for a, b in zip(xs, ys):
        if a <= 0:
            raise ValueError(f"budgets on a log axis must be > 0, got {a}")
        pts.setdefault(float(a), []).append(float(b))
    lx = np.log(sorted(pts))
    ly = [float(np.mean(pts[a])) for a in sorted(pts)]
    lo = math.log(x) if x > 0 else -math.inf
    return float(np.interp(lo, lx, ly)), bool(lx[0] - 1e-12 <= lo <= lx[-1] + 1e-12)


def reference_curves(records: Iterable[dict[str, Any]], reference: str,
                     axis: str) -> dict[tuple[int, str], tuple[list[float], list[float]]]:
    """(seed, prompt id) → the reference controller's curve (budgets spent on ``axis``, rewards)
    over its budgets N."""
    curves: dict[tuple[int, str], tuple[list[float], list[float]]] = {}
    for r in records:
        if r["controller"] == reference:
            xs, ys = curves.setdefault((int(r["seed"]), str(r["prompt_id"])), ([], []))
            xs.append(budget_of(r, axis))
            ys.append(float(r["reward"]))
    return curves


def matched_readout(records: Sequence[dict[str, Any]], reference: str, axis: str,
                    method: str = "bootstrap") -> list[dict[str, Any]]:
    """One row per (controller, budget) with records paired to a reference curve of at least
    two points: ``controller``, ``budget``, ``axis``, ``n`` (pairs), ``spent`` (mean budget on
    the axis), ``reward`` (mean), ``reference_reward`` (mean interpolated reference), ``delta``
    (:class:`~ctrlalign.bench.stats.CI` as a dict of the mean gain Δ) and ``outside`` (pairs
    outside the reference curve's range)."""
    curves = reference_curves(records, reference, axis)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["controller"], int(r["budget"])), []).append(r)
    rows = []
    for (controller, budget), recs in groups.items():
        spent, got, ref, deltas, clusters, outside = [], [], [], [], [], 0
        for r in recs:
            xs, ys = curves.get((int(r["seed"]), str(r["prompt_id"])), ([], []))
            if len(set(xs)) < 2:
                continue
            x = budget_of(r, axis)
            value, inside = log_interp(xs, ys, x)
            outside += not inside
            spent.append(x)
            got.append(float(r["reward"]))
            ref.append(value)
            deltas.append(float(r["reward"]) - value)
            clusters.append(str(r["prompt_id"]))
        if not deltas:
            continue
        ci = stats.mean_ci(deltas, method=method, clusters=clusters)
        rows.append({"controller": controller, "budget": budget, "axis": axis, "n": len(deltas),
                     "spent": float(np.mean(spent)), "reward": float(np.mean(got)),
                     "reference_reward": float(np.mean(ref)), "delta": ci.to_dict(), "outside": outside})
    rows.sort(key=lambda row: (row["controller"] != reference, row["controller"], row["spent"]))
    return rows


def default_reference(config: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """The label of the reference Best-of-N: the config's ``matched_reference``, else the first
    entry named ``bon`` with σ = 0 (samples of the plain model), else None."""
    if config.get("matched_reference"):
        return config["matched_reference"]
    for label, settings in (meta.get("controllers") or {}).items():
        if settings.get("name") == "bon" and settings.get("sigma2") == 0:
            return label
    return None
