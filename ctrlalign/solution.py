"""What solving a batch returns, whatever the kind of controller: the :class:`Solution`.

Both kinds of controller implement ``solve(dynamics, reward, prompts, *, seed, ...) ->
Solution``: an open-loop :class:`~ctrlalign.controllers.base.Controller` by
:func:`~ctrlalign.align` (its rounds of n whole responses), a closed-loop
:class:`~ctrlalign.closedloop.base.ClosedLoopController` by its ``run`` over partial
responses. The command line, the runner and the benchmark read the same fields from either,
so none of them asks which kind it holds.

Budgets are per prompt, on three axes: decoded tokens (every row's tokens while it was alive,
rows later stopped or resampled away included), full reward calls (finished responses scored)
and prefix reward calls (partial responses scored at checkpoints; 0 for open-loop controllers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .dynamics.base import Sample

__all__ = ["Solution"]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass
class Solution:
    """What a controller's ``solve`` returns for D prompts.

    Attributes:
        prompts: the D prompts.
        responses: D kept :class:`~ctrlalign.dynamics.base.Sample` s.
        rewards: (D,) float64 full rewards of the kept responses.
        reward_calls: (D,) long, finished responses scored per prompt (full reward calls).
        prefix_calls: (D,) long, partial responses scored per prompt.
        tokens: (D,) long, decoded tokens per prompt (stopped and resampled-away rows included).
        traces: per prompt, the JSON-ready trace: one dict per iteration (open loop:
            :meth:`~ctrlalign.align.IterationRecord.summary`) or per checkpoint (closed loop:
            :meth:`~ctrlalign.closedloop.base.Checkpoint.summary`: position, rows, ESS, λ_t,
            mean score, resampled, distinct prefixes).
        controller: the controller's name.
        kind: ``"open-loop"`` or ``"closed-loop"`` (how ``trace`` reads).
        seconds: wall-clock time.
        space: the control space used, described (None: none).
        selection: the selection's name (None: the controller's own read-out).
        extra: per prompt, further JSON-ready fields for the record (e.g. log Ẑ).
        result: the controller's own result (an :class:`~ctrlalign.align.AlignmentResult` or a
            :class:`~ctrlalign.closedloop.base.ClosedLoopResult`).
    """

    prompts: list[Any]
    responses: list[Sample]
    rewards: torch.Tensor
    reward_calls: torch.Tensor
    prefix_calls: torch.Tensor
    tokens: torch.Tensor
    traces: list[list[dict[str, Any]]]
    controller: str
    kind: str
    seconds: float
    space: str | None = None
    selection: str | None = None
    extra: list[dict[str, Any]] = field(default_factory=list)
    result: Any = None

    @property
    def num_prompts(self) -> int:
        """D."""
        return len(self.prompts)

    def record(self, d: int) -> dict[str, Any]:
        """Prompt d's JSON-ready fields: ``response`` (its text), ``reward``, ``controller``,
        ``kind``, ``space``, ``selection``, ``reward_calls``, ``prefix_calls``, ``tokens``,
        ``trace`` and the ``extra`` fields."""
        rec: dict[str, Any] = {
            "response": self.responses[d].text,
            "reward": float(self.rewards[d]),
            "controller": self.controller,
            "kind": self.kind,
            "space": self.space,
            "selection": self.selection,
            "reward_calls": int(self.reward_calls[d]),
            "prefix_calls": int(self.prefix_calls[d]),
            "tokens": int(self.tokens[d]),
            "trace": self.traces[d],
        }
        if self.extra:
            rec.update({k: (_finite(v) if isinstance(v, float) else v) for k, v in self.extra[d].items()})
        return rec
