"""Rewards for the toy systems (closed-form and enumerable)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..dynamics.base import Outcomes
from .base import Reward, require_prefix_scores

__all__ = ["QuadraticReward", "TableReward"]


class QuadraticReward(Reward):
    r""":math:`r(y) = -\tfrac12 (y-y^\star)^\top Q (y-y^\star)` on numeric outcomes (D, n, p).

    Args:
        target: (p,) y*.
        Q: (p, p) symmetric PSD (default identity).
    """

    name = "quadratic"

    def __init__(self, target: torch.Tensor, Q: torch.Tensor | None = None):
        self.target = torch.as_tensor(target, dtype=torch.float64)
        p = self.target.shape[0]
        self.Q = torch.eye(p, dtype=torch.float64) if Q is None else torch.as_tensor(Q, dtype=torch.float64)
        if self.Q.shape != (p, p):
            raise ValueError(f"Q must be (p, p) = {(p, p)}, got {tuple(self.Q.shape)}")

    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        e = outcomes.values.to(torch.float64) - self.target
        return -0.5 * torch.einsum("dnp,pq,dnq->dn", e, self.Q, e)


class TableReward(Reward):
    """A reward looked up from a table of token sequences: ``table[tuple(tokens)]``, each row's
    tokens cut at its ``lengths`` when the outcomes have them (a row that ended early is looked
    up as its response, without the padding).

    Args:
        table: mapping from token-sequence tuples to rewards (must cover every outcome).
        prefix_table: the same for partial sequences (the prefix score
            :meth:`~ctrlalign.rewards.base.Reward.prefix`); None: this reward scores no prefixes.
    """

    name = "table"

    def __init__(self, table: Mapping[tuple[int, ...], float],
                 prefix_table: Mapping[tuple[int, ...], float] | None = None):
        self.table = {tuple(k): float(v) for k, v in table.items()}
        self.prefix_table = None if prefix_table is None else {tuple(k): float(v) for k, v in prefix_table.items()}
        self.scores_prefixes = prefix_table is not None

    @staticmethod
    def _look_up(table: Mapping[tuple[int, ...], float], outcomes: Outcomes) -> torch.Tensor:
        toks = outcomes.tokens.tolist()
        if outcomes.lengths is not None:
            toks = [[s[:L] for s, L in zip(row, lens)] for row, lens in zip(toks, outcomes.lengths.tolist())]
        return torch.tensor([[table[tuple(s)] for s in row] for row in toks], dtype=torch.float64)

    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        return self._look_up(self.table, outcomes)

    def prefix(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        """``prefix_table[tuple(tokens so far)]``."""
        require_prefix_scores(self, "TableReward.prefix")
        return self._look_up(self.prefix_table, outcomes)
