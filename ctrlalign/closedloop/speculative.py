r"""Speculative rejection: start many responses, stop the unpromising ones early, finish the rest.

Start :math:`n_0` rows per prompt; at each checkpoint :math:`t_c` of the schedule
:math:`[(t_1, m_1), (t_2, m_2), \dots]` (:math:`n_0 \ge m_1 \ge m_2 \ge \dots \ge 1`) score the
prefixes :math:`r(x, y_{1:t_c})` and keep the :math:`m_c` best (ties: the earlier row), stopping the
others; decode the survivors to the end and return the one with the highest full reward
(after Sun et al., arXiv 2410.20290). Each survivor keeps its own pre-drawn noise, so it
finishes exactly as it would have in Best-of-:math:`n_0`: the kept response is one of
Best-of-:math:`n_0`'s, chosen among fewer finished candidates at a fraction of the tokens.

**Regrowth.** A checkpoint may also continue with more rows than it keeps: :math:`(t_c, m_c, r_c)`,
:math:`m_c \le r_c \le` the rows alive before it, keeps the :math:`m_c` best prefixes and forks
them back to :math:`r_c` rows — survivor i (in row order) is continued by rows i, i + m_c,
i + 2m_c, … — each extra row with the unused noise of a stopped row, so it continues the
survivor's prefix differently (as in TreeBoN, arXiv 2410.16033). The decoded tokens then go
where the prefix score says the reward is. :math:`r_c = m_c` (the default) is plain pruning.

Special cases: a schedule that stops nothing (every :math:`m_c = n_0`, ρ = 1, or no checkpoint)
is Best-of-:math:`n_0`, bit for bit. The default schedule is the constant-rate one (a checkpoint
every b tokens keeping a fraction ρ of the rows); an explicit one replaces it. Without regrowth
the kept response is one of Best-of-:math:`n_0`'s; with it, it may be one Best-of-:math:`n_0`
never drew.

Known failure mode: a prefix reward that predicts the final one poorly stops good responses;
compare at matched tokens against Best-of-N (the result counts tokens per prompt).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from .._checks import ConfigError, check_int
from ..cost import Cost
from ..declare import Hyperparameter
from ..dynamics.base import StepwiseDynamics
from ..rewards.base import Reward
from .base import Checkpoint, ClosedLoopController, ClosedLoopResult, distinct_rows, start_run
from .particles import Particles

__all__ = ["SpeculativeRejection", "keep_best"]


def keep_best(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """(D, m) the rows kept: the ``keep`` highest scores of each row of (D, n), ties to the
    earlier row, returned in their original order."""
    order = torch.sort(-scores, dim=-1, stable=True).indices[:, :keep]
    return order.sort(dim=-1).values


class SpeculativeRejection(ClosedLoopController):
    """Speculative rejection with a schedule of checkpoints.

    Either an explicit ``schedule`` or the constant-rate one: a checkpoint every b =
    ``block_size`` tokens before the end T, each keeping ⌈ρ·m⌉ of the m rows alive (ρ =
    ``keep_fraction``, at least ``min_rows``), built when T is known (:meth:`schedule_for`).

    Args:
        num_samples: n₀ >= 1, rows started per prompt.
        block_size: b >= 1, tokens between checkpoints of the constant-rate schedule.
        keep_fraction: ρ in (0, 1], rows kept at each checkpoint of the constant-rate schedule
            (1: stop nothing, Best-of-n₀).
        min_rows: rows never pruned below this many.
        schedule: ``[(t, m), ...]`` or ``[(t, m, r), ...]``: at position t (tokens decoded,
            increasing) keep the m best rows (>= 1, at most the rows alive) and continue with r
            rows (m <= r <= the rows alive before; default m: pruning; more: the survivors forked
            back, the module docstring); replaces the constant-rate schedule. m and r are row
            counts (ints) or fractions of n₀ (floats in (0, 1]: ⌈m·n₀⌉ rows), so that one
            schedule serves every n₀: ``[(8, 0.5), (16, 0.25)]`` is ``[(8, 128), (16, 64)]`` at
            n₀ = 256, and ``[(8, 0.25, 1.0)]`` keeps a quarter at token 8 and forks it back to n₀
            rows. Checkpoints at or past the end of a response are ignored.
    """

    name = "speculative-rejection"
    hyperparameters = (
        Hyperparameter("num_samples", int, "rows started per prompt", "n₀", low=1),
        Hyperparameter("block_size", int, "tokens between checkpoints of the constant-rate schedule", "b", low=1),
        Hyperparameter("keep_fraction", float, "rows kept at each checkpoint of the constant-rate schedule "
                       "(1: stop nothing, Best-of-n₀)", "ρ", low=0, high=1, low_open=True),
        Hyperparameter("min_rows", int, "rows never pruned below this many", low=1),
        Hyperparameter("schedule", list, "[[t, m], ...] or [[t, m, r], ...]: at t tokens keep the m best rows and "
                       "continue with r (default m; more: the survivors forked back); t increasing, m <= r <= the rows "
                       "alive before; m, r counts, or fractions of n₀ when floats in (0, 1]; replaces the "
                       "constant-rate schedule", nullable=True),
    )

    def __init__(self, *, num_samples: int = 32, block_size: int = 8, keep_fraction: float = 0.5,
                 min_rows: int = 1, schedule: Sequence[tuple[int, int]] | None = None) -> None:
        for key, value in (("num_samples", num_samples), ("block_size", block_size),
                           ("keep_fraction", keep_fraction), ("min_rows", min_rows), ("schedule", schedule)):
            self.set_hyperparameter(key, value)
        if self.schedule is not None:  # the pairs checked, kept as a tuple of (t, m)
            self.set_hyperparameter("schedule", self._check_schedule(self.schedule))

    def rows_kept(self, m: int | float) -> int:  # noqa: PYI041 - the int/float split is the meaning
        """A schedule entry's rows: m itself (an int), or ⌈m·n₀⌉ for a fraction m in (0, 1]."""
        return m if isinstance(m, int) else max(1, math.ceil(m * self.num_samples))

    def _check_count(self, i: int, what: str, value: float) -> float:
        """A schedule entry's row count m or r: an int >= 1, or a float fraction of n₀ in (0, 1]."""
        if isinstance(value, float):
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"schedule[{i}] fraction {what} must be in (0, 1] (a float is a fraction of "
                                  f"n₀; an int a row count), got {value!r}")
            return value
        return check_int(f"schedule[{i}] rows {what}", value, minimum=1, symbol="m" if what == "kept" else "r")

    def _check_schedule(self, schedule: Sequence[Sequence[int | float]]) -> tuple[tuple[int | float, ...], ...]:
        steps = []
        previous_t, alive = 0, self.num_samples
        for i, item in enumerate(schedule):
            if not (isinstance(item, (tuple, list)) and len(item) in (2, 3)):
                raise ConfigError(f"schedule[{i}] must be a pair (position t, rows kept m) or a triple (t, m, rows "
                                  f"after r), got {item!r}")
            t = check_int(f"schedule[{i}] position", item[0], minimum=previous_t + 1, symbol="t")
            m = self._check_count(i, "kept", item[1])
            if self.rows_kept(m) > alive:
                raise ConfigError(f"schedule[{i}] keeps m={m} ({self.rows_kept(m)} rows), more than the {alive} "
                                  "alive before it; the rows kept must not increase")
            r = m if len(item) == 2 else self._check_count(i, "after", item[2])
            if not self.rows_kept(m) <= self.rows_kept(r) <= alive:
                raise ConfigError(f"schedule[{i}] continues with r={r} ({self.rows_kept(r)} rows); r must be between "
                                  f"the rows kept ({self.rows_kept(m)}) and the {alive} alive before it")
            steps.append((t, m) if len(item) == 2 else (t, m, r))
            previous_t, alive = t, self.rows_kept(r)
        return tuple(steps)

    def schedule_for(self, horizon: int) -> tuple[tuple[int, int, int], ...]:
        """The checkpoints used for responses of T = ``horizon`` tokens, as (t, rows kept m, rows
        after r): the explicit schedule's before T (fractions resolved against n₀; r = m unless
        given), or the constant-rate one (r = m)."""
        T = check_int("horizon", horizon, minimum=1, symbol="T")
        if self.schedule is not None:
            return tuple((step[0], self.rows_kept(step[1]), self.rows_kept(step[-1])) for step in self.schedule
                         if step[0] < T)
        m, out = self.num_samples, []
        for t in range(self.block_size, T, self.block_size):
            m = max(self.min_rows, min(m, math.ceil(self.keep_fraction * m)))
            out.append((t, m, m))
        return tuple(out)

    @staticmethod
    def regrow(kept: torch.Tensor, rows_before: int, rows_after: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows after a checkpoint that keeps ``kept`` (D, m) of ``rows_before`` rows and
        continues with r = ``rows_after`` (m <= r <= rows_before): ``(rows, noise)``, each (D, r) —
        row i continues survivor ``kept[:, i % m]``; the first m rows keep their survivor's own noise
        column, the others take the stopped rows' columns in order (unused noise, so that no two
        rows continue alike)."""
        D, m = kept.shape
        rows = kept[:, torch.arange(rows_after) % m]
        stopped = torch.ones(D, rows_before, dtype=torch.bool).scatter_(1, kept, False)
        free = torch.arange(rows_before).expand(D, rows_before)[stopped].view(D, rows_before - m)
        return rows, torch.cat([kept, free[:, :rows_after - m]], 1)

    def run(self, dynamics: StepwiseDynamics, cost: Cost | Reward, prompts: Sequence[Any], *, seed: int = 0,
            context: Any = None, controls: torch.Tensor | None = None) -> ClosedLoopResult:
        """Run on D prompts (arguments as :meth:`~ctrlalign.closedloop.smc.SMC.run`; ``controls``
        is an optional fixed pre-logit control of every row). Returns a
        :class:`~ctrlalign.closedloop.base.ClosedLoopResult`; ``final_rewards`` are the survivors'."""
        t_start = time.perf_counter()
        run = start_run("SpeculativeRejection", dynamics, cost, prompts, seed=seed, context=context,
                        scores_prefixes=lambda T: any(m < self.num_samples for _, m, _ in self.schedule_for(T)))
        prompts, T = run.prompts, run.horizon
        D = len(prompts)
        particles = Particles(run.dynamics, run.context, prompts, run.cost, self.num_samples, run.generators, controls)
        checkpoints = self.schedule_for(T)
        trace: list[Checkpoint] = []
        nan = torch.full((D,), float("nan"), dtype=torch.float64)
        t0 = 0
        for t, m, r in checkpoints:
            particles.advance(t0, t)
            t0 = t
            if m == particles.num_rows:  # nothing to stop (r is then m too): no prefix score needed
                continue
            outcomes = particles.outcomes()
            scores = particles.score(outcomes, prefix=True)
            distinct = distinct_rows(outcomes)
            rows, noise = self.regrow(keep_best(scores, m), particles.num_rows, r)  # r = m: pruning
            particles.select(rows, carry_noise=noise)
            alive = torch.full((D,), r)
            trace.append(Checkpoint(t, alive, alive.float(), nan, scores.mean(-1), torch.ones(D, dtype=torch.bool),
                                    distinct))
        if t0 < T:
            particles.advance(t0, T)
        outcomes = particles.outcomes()
        rewards = particles.score(outcomes, prefix=False)
        distinct = distinct_rows(outcomes)
        trace.append(Checkpoint(int(particles.state.position), torch.full((D,), particles.num_rows),
                                torch.full((D,), float(particles.num_rows)), nan, rewards.mean(-1),
                                torch.zeros(D, dtype=torch.bool), distinct))
        chosen = rewards.argmax(-1)
        return ClosedLoopResult(
            prompts=prompts, responses=[outcomes.sample(j, int(chosen[j])) for j in range(D)],
            rewards=rewards.gather(1, chosen.view(D, 1)).squeeze(1), trace=trace, tokens=particles.tokens,
            prefix_calls=particles.prefix_calls, full_calls=particles.full_calls, distinct=distinct,
            seconds=time.perf_counter() - t_start, controller=self.name, final_rewards=rewards,
            meta={"final_tokens": None if outcomes.tokens is None else outcomes.tokens.tolist()},
        )
