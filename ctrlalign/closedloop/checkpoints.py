r"""Where a closed-loop run looks at its rows: every b tokens, or at sentence ends.

Rows advance in lockstep (one position t for all B = D·n rows), so a checkpoint is a position
at which some prompts' rows are scored. Two rules, :data:`CHECKPOINT_RULES`:

* ``"tokens"``: every prompt at t = b, 2b, …, and at T.
* ``"sentences"``: prompt j at the first t after its last checkpoint :math:`t_j` at which at
  least a quorum q of its *eligible* rows (those not finished at :math:`t_j`) are *ready* —
  have ended a sentence since :math:`t_j`
  (:meth:`~ctrlalign.dynamics.base.StepwiseDynamics.sentence_ends` grew) or have finished
  since — or at :math:`t_j + b` at the latest, and at T. A row that ended its sentence early
  decodes on in lockstep (the dynamics cannot pause one row), so it is scored a few tokens
  into its next sentence.

Each prompt's checkpoint times depend on its own rows only, so a prompt's run is the same
alone and in any batch. They are *stopping times* (decided from the rows' past), which is
what keeps SMC's estimate unbiased: given the past at a checkpoint, the rest of the run is a
fixed function of each particle's path, exactly as at a fixed position.
"""

from __future__ import annotations

import torch

__all__ = ["CHECKPOINT_RULES", "sentence_checkpoints_due"]

#: the checkpoint rules (the module docstring)
CHECKPOINT_RULES = ("tokens", "sentences")


def sentence_checkpoints_due(position: int, last: torch.Tensor, block_size: int, ends: torch.Tensor,
                             ends_before: torch.Tensor, finished: torch.Tensor, finished_before: torch.Tensor,
                             quorum: float) -> torch.Tensor:
    r"""(D,) bool, the prompts whose ``"sentences"`` checkpoint is at t = ``position``.

    Args:
        position: t.
        last: (D,) long, each prompt's last checkpoint :math:`t_j` (0 at the start).
        block_size: b, the longest stretch between a prompt's checkpoints.
        ends: (D, n) long, sentence ends per row at t; ``ends_before`` the same at :math:`t_j`.
        finished: (D, n) bool, rows finished at t; ``finished_before`` the same at :math:`t_j`.
        quorum: q in (0, 1].

    Returns:
        due :math:`_j` = :math:`t - t_j \ge b` or (some row is eligible and
        :math:`|\text{ready}\cap\text{eligible}| \ge q\,|\text{eligible}|`).
    """
    eligible = ~finished_before
    ready = (ends > ends_before) | finished
    count = eligible.sum(-1)
    enough = (ready & eligible).sum(-1).double() >= quorum * count.double()
    return (position - last >= block_size) | ((count > 0) & enough)
