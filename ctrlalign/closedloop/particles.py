r"""The rows in flight of a closed-loop run: a dynamics state, its pre-drawn noise, its controls
and the per-prompt budget, advanced, scored and re-selected together.

:class:`Particles` is what every closed-loop controller composes: it owns the bookkeeping that
must be the same everywhere (which noise a row uses next, which control, what is counted), so a
controller only decides *which rows continue*.

Noise. The dynamics' noise for T steps is drawn once per run, (D, n, T, ...), from each prompt's
``rollout`` generator exactly as an open-loop rollout draws it, so a run that never re-selects
decodes bit for bit what Best-of-n decodes. On :meth:`Particles.select`, a row either keeps
*its own column's* future noise (``carry_noise=False``: resampling, where two children of one
ancestor must continue differently) or takes its ancestor's column (``carry_noise=True``:
pruning, where each survivor continues exactly as it would have without the pruning).

Budget, per prompt: decoded tokens (rows' steps while alive, rows later stopped or resampled
away included), prefix reward calls and full reward calls. :meth:`Particles.score` can score
some rows by their prefix and others (finished) by the full reward, or only some rows: each
row scored counts once, as a prefix call or as a full call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import ConfigError
from ..cost import Cost
from ..dynamics.base import Outcomes, Step, StepwiseDynamics
from ..rewards.base import evaluate_reward, gather_samples

__all__ = ["Particles", "decoded_tokens", "row_controls", "score_rows"]


def decoded_tokens(step: Step, num_prompts: int, steps: int) -> torch.Tensor:
    """(D,) steps decoded per prompt by a :class:`~ctrlalign.dynamics.base.Step` of ``steps``
    steps: the rows' steps while alive (every row's, for a system that does not report
    ``alive``)."""
    if step.alive is not None:
        return step.alive.reshape(num_prompts, -1).sum(-1).cpu()
    rows = next(x for x in (step.tokens, step.logprobs, step.values) if x is not None).shape[0]
    return torch.full((num_prompts,), rows // num_prompts * steps, dtype=torch.long)


def row_controls(controls: torch.Tensor | None, num_prompts: int, num_samples: int) -> torch.Tensor | None:
    """V as (D, n, τ, d): a shared (D, τ, d) control is expanded (a view), (D, n, τ, d) passes."""
    if controls is None:
        return None
    if controls.dim() == 3 and controls.shape[0] == num_prompts:
        return controls.unsqueeze(1).expand(num_prompts, num_samples, *controls.shape[1:])
    if controls.dim() == 4 and tuple(controls.shape[:2]) == (num_prompts, num_samples):
        return controls
    raise ConfigError(f"controls must be (D={num_prompts}, τ, d) or (D, n={num_samples}, τ, d), "
                      f"got {tuple(controls.shape)}")


def _gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (D, n, ...) → (D, n', ...) with row (j, i) = x[j, rows[j, i]]."""
    idx = rows.to(x.device).view(*rows.shape, *([1] * (x.dim() - 2))).expand(*rows.shape, *x.shape[2:])
    return x.gather(1, idx)


def score_rows(cost: Cost, prompts: Sequence[Any], outcomes: Outcomes, *, prefix: bool | torch.Tensor,
               rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score some rows of (D, n) outcomes by the reward's prefix score and others (finished) by
    the full reward, each row once.

    Args:
        cost: the reward.
        prompts: the D prompts.
        outcomes: (D, n) rows (partial or finished responses).
        prefix: True (the prefix score) or False (the full reward) for every row, or (D, n)
            bool, the kind per row.
        rows: (D, n) bool, the rows to score; None: all. The others get NaN and cost nothing.

    Returns:
        ``(scores, prefix_calls, full_calls)``: (D, n) float64 scores, and (D,) long, the rows of
        each prompt scored by each kind. Every row of one kind is scored in one call on the
        (D, n) outcomes; otherwise each kind's K rows are scored in one call as K prompts × 1
        sample (:func:`~ctrlalign.rewards.base.gather_samples`).
    """
    D, n = outcomes.num_prompts, outcomes.num_samples
    kinds = prefix if isinstance(prefix, torch.Tensor) else torch.full((D, n), bool(prefix))
    kinds = kinds.cpu().bool()
    wanted = torch.ones(D, n, dtype=torch.bool) if rows is None else rows.cpu().bool()
    counts = {True: torch.zeros(D, dtype=torch.long), False: torch.zeros(D, dtype=torch.long)}
    if bool(wanted.all()) and bool((kinds == kinds[0, 0]).all()):
        as_prefix = bool(kinds[0, 0])
        scores = evaluate_reward(cost.reward, prompts, outcomes, prefix=True) if as_prefix \
            else cost.rewards(prompts, outcomes)
        counts[as_prefix] += n
        return scores.double().cpu(), counts[True], counts[False]
    scores = torch.full((D, n), float("nan"), dtype=torch.float64)
    for as_prefix in (True, False):
        d, i = torch.nonzero(wanted & (kinds == as_prefix), as_tuple=True)
        if d.numel() == 0:
            continue
        picked_prompts = [prompts[j] for j in d.tolist()]
        picked = gather_samples(outcomes, d.tolist(), i.tolist())
        got = evaluate_reward(cost.reward, picked_prompts, picked, prefix=True) if as_prefix \
            else cost.rewards(picked_prompts, picked)
        scores[d, i] = got.double().cpu()[:, 0]
        counts[as_prefix] += torch.bincount(d, minlength=D)
    return scores, counts[True], counts[False]


class Particles:
    """n rows per prompt of a :class:`~ctrlalign.dynamics.base.StepwiseDynamics`, in flight.

    Args:
        dynamics: the system.
        context: ``dynamics.prepare(prompts)``.
        prompts: the D prompts (for the reward).
        cost: the reward (a :class:`~ctrlalign.cost.Cost`).
        num_samples: n, rows per prompt at the start.
        generators: the D prompts' :class:`~ctrlalign.random.PromptGenerators` (``rollout``
            supplies the noise).
        controls: the proposal's fixed pre-logit control, (D, τ, d) or (D, n, τ, d), or None.

    Attributes:
        state: the dynamics state (D × n' rows).
        noise: (D, n', T, ...) the rows' noise.
        controls: (D, n', τ, d) or None.
        tokens, prefix_calls, full_calls: (D,) long, the budget so far.
        horizon: T.
    """

    def __init__(self, dynamics: StepwiseDynamics, context: Any, prompts: Sequence[Any], cost: Cost,
                 num_samples: int, generators: Sequence[Any], controls: torch.Tensor | None = None) -> None:
        self.dynamics, self.prompts, self.cost = dynamics, list(prompts), cost
        D = len(self.prompts)
        self.noise = dynamics.draw_noise([g.rollout for g in generators], num_samples)
        self.horizon = self.noise.shape[2]
        V = row_controls(controls, D, num_samples)
        if V is not None:
            V = V.to(device=dynamics.device, dtype=dynamics.dtype)
            if V.shape[2] > self.horizon:
                raise ConfigError(f"controls: horizon τ={V.shape[2]} exceeds the dynamics' T={self.horizon}")
        self.controls = V
        self.state = dynamics.start(context, num_samples)
        self.tokens = torch.zeros(D, dtype=torch.long)
        self.prefix_calls = torch.zeros(D, dtype=torch.long)
        self.full_calls = torch.zeros(D, dtype=torch.long)

    @property
    def num_prompts(self) -> int:
        """D."""
        return len(self.prompts)

    @property
    def num_rows(self) -> int:
        """n', rows per prompt now."""
        return self.noise.shape[1]

    def advance(self, t0: int, t1: int) -> list[tuple[Step, bool]]:
        """Decode steps [t0, t1) of every row: the controlled ones (t < τ) with V, the rest
        without. Returns the block's (Step, controlled) parts; counts the tokens."""
        V, tau = self.controls, 0 if self.controls is None else self.controls.shape[2]
        parts: list[tuple[Step, bool]] = []
        for a, b, controlled in ((t0, min(t1, tau), True), (max(t0, tau), t1, False)):
            if a < b:
                self.state, step = self.dynamics.advance(self.state, V[:, :, a:b] if controlled else None,
                                                         self.noise[:, :, a:b])
                self.tokens += decoded_tokens(step, self.num_prompts, b - a)
                parts.append((step, controlled))
        return parts

    def log_ratio(self, parts: list[tuple[Step, bool]]) -> torch.Tensor:
        r"""(D, n') float64 :math:`\sum_s [\log p - \log q]` over a block's controlled steps of alive
        rows (0 on uncontrolled steps, where q = p)."""
        D, n = self.num_prompts, self.num_rows
        total = torch.zeros(D, n, dtype=torch.float64)
        for step, controlled in parts:
            if not controlled:
                continue
            if step.base_logprobs is None:
                raise ConfigError("a control proposal needs the base model's log-probabilities log p for the p/q "
                                  "correction; build the dynamics with base_logprobs=True")
            diff = (step.base_logprobs.double() - step.logprobs.double()).cpu()
            if step.alive is not None:
                diff = torch.where(step.alive.cpu(), diff, torch.zeros_like(diff))
            total += diff.reshape(D, n, -1).sum(-1)
        return total

    def outcomes(self) -> Outcomes:
        """The rows so far (partial responses) as :class:`~ctrlalign.dynamics.base.Outcomes`."""
        return self.dynamics.outcomes(self.state)

    def finished(self) -> torch.Tensor:
        """(D, n') bool: the rows that have finished (emitted the end token, or reached T)."""
        return self.state.finished.reshape(self.num_prompts, self.num_rows).cpu()

    def score(self, outcomes: Outcomes, *, prefix: bool | torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(D, n') float64 scores of the rows (:func:`score_rows`); counted.

        Args:
            outcomes: the rows so far (:meth:`outcomes`).
            prefix: True (the reward's prefix score) or False (the full reward) for every row, or
                (D, n') bool, the kind per row.
            rows: (D, n') bool, the rows to score; None: all. The others get NaN and cost nothing.
        """
        scores, prefix_calls, full_calls = score_rows(self.cost, self.prompts, outcomes, prefix=prefix, rows=rows)
        self.prefix_calls += prefix_calls
        self.full_calls += full_calls
        return scores

    def select(self, rows: torch.Tensor, *, carry_noise: bool | torch.Tensor) -> None:
        """Continue row (j, i) from old row (j, rows[j, i]) for rows (D, n'): the dynamics state and
        the control follow the ancestor; the noise follows it with ``carry_noise=True``, stays with
        the row's own column with False (see the module docstring), or, given as (D, n') long,
        comes from old column (j, carry_noise[j, i]) (forking: distinct columns per prompt give
        every new row unused noise)."""
        self.state = self.dynamics.select(self.state, rows.to(self.dynamics.device))
        if self.controls is not None:
            self.controls = _gather_rows(self.controls, rows)
        if isinstance(carry_noise, torch.Tensor):
            self.noise = _gather_rows(self.noise, carry_noise)
        elif carry_noise:
            self.noise = _gather_rows(self.noise, rows)
        elif rows.shape[1] != self.num_rows:
            raise ValueError(f"rows keep their own noise only when their number stays {self.num_rows}, "
                             f"got {rows.shape[1]}")
