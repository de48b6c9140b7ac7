"""Extending: your own Selection — keep the best response of the *last* round only.

``BestSoFar`` (the default) returns the highest reward seen in any of the k rounds, so a lucky
draw in round 1 can hide a proposal that never improved. ``LastRoundBest`` keeps only what the
final proposal produced: the argmax of the last round's n rewards. It overrides one method,
:meth:`~ctrlalign.selection.Selection.update`, and is passed to ``align(..., selection=...)``.

``tests/test_examples.py`` checks that the kept reward is the last round's maximum, that it is
the reward of the response actually kept, and that ``BestSoFar`` fails that same check.

Run: ``python examples/custom_selection.py``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ctrlalign as ca
from ctrlalign.selection import Kept, Selection
from ctrlalign.testing import make_linear


# --8<-- [start:LastRoundBest]
class LastRoundBest(Selection):
    """Keep the highest-reward response of the latest round (earlier rounds are forgotten)."""

    name = "last-round"

    def update(self, kept: Kept, rewards: torch.Tensor, log_weights: torch.Tensor,
               generators) -> tuple[Kept, torch.Tensor, torch.Tensor]:
        """rewards (D, n) → (state, chosen (D,) long, replace (D,) bool): the round's argmax,
        always replacing what was kept."""
        best, chosen = rewards.double().max(-1)  # (D,), (D,)
        replace = torch.ones_like(chosen, dtype=torch.bool)
        return kept.replace(reward=best.to(kept.reward.device)), chosen, replace
# --8<-- [end:LastRoundBest]


def main(out: Path | None = None, num_samples: int = 16, num_iterations: int = 5) -> dict:
    """AISP on the linear-Gaussian toy system with both selections; returns name → rewards (D,)
    and the last round's maximum reward (D,)."""
    dynamics, reward, prompts = make_linear(0)
    ctrl = ca.AISP(num_samples=num_samples, num_iterations=num_iterations, sigma=0.7, target_ess=0.5)
    rows = {}
    for selection in (ca.BestSoFar(), LastRoundBest()):
        result = ca.align(dynamics, reward, ctrl, prompts, space=ca.Shared(), selection=selection, seed=0)
        last = result.trace[-1].diagnostics.max_reward
        rows[selection.name] = {"rewards": result.rewards.tolist(), "last_round_max": last.tolist()}
        print(f"{selection.name:<10} kept reward per prompt:", " ".join(f"{r:7.3f}" for r in result.rewards.tolist()),
              "| last round's max:", " ".join(f"{r:7.3f}" for r in last.tolist()))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="unused (no plot); accepted for uniformity")
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--num-iterations", type=int, default=5)
    args = ap.parse_args()
    main(args.out, args.num_samples, args.num_iterations)
