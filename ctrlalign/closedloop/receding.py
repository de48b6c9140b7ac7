r"""Receding-horizon control (model predictive control) with any open-loop controller.

From the committed prefix :math:`y_{1:t}` (t = 0 at the start), run an open-loop controller
(:mod:`ctrlalign.controllers`: AISP, CEM, Best-of-N, ...) for its k iterations of n rollouts
over a lookahead window of L tokens, :math:`y_{t+1:t+L}` under controls V (n, L, d) in its
control space bound to τ = L, each rollout scored by the reward's prefix score
:math:`r(x, y_{1:t+L})` (the full reward once the window reaches the end T). Keep the best
rollout seen (Best-of-N's rule), **commit its first b tokens** — the very tokens it decoded,
by replaying its controls and noise — and repeat from :math:`y_{1:t+b}` until T; the last
window reaches T, and its best rollout is the response:

.. math:: t \leftarrow t + b,\qquad y_{1:t} \text{ fixed};\quad \text{window } [t, \min(t+L, T)).

A rollout that has finished inside a window (emitted the end token) is a whole response: it
is scored by the full reward, not the prefix score, and counted as a full call. When the
committed block holds the end token, the response has ended: that window's best rollout is the
response, and a finished response is absorbing — no more windows, reward calls or rollouts for
its prompt (the run stops once every prompt's response has ended or reached T).

Each window's rollouts start from the committed prefix by replaying its history (the
committed controls and noise of each block) on n fresh rows: exact on any deterministic
system, and it costs the committed prefix's tokens again per rollout (t, or the response's
length once it has ended), which the budget counts. The budget counts decoded tokens as
:class:`~ctrlalign.dynamics.counting.CountingDynamics` does, rows' alive steps: a prompt
whose response has ended decodes nothing in a window, but while other prompts of the batch go
on, its rows are still replayed up to its end token (the rows of a batch share one prefix
length; a run on that prompt alone stops at once). With one block
(b >= T, L = T) receding-horizon control *is* the inner controller: its result equals
:func:`ctrlalign.align`'s, bit for bit, on the same seed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._checks import ConfigError
from ..controllers import CONTROLLERS, BestOfN, Controller
from ..cost import Cost
from ..declare import Hyperparameter
from ..dynamics.base import StepwiseDynamics
from ..rewards.base import Reward
from ..spaces import ControlSpace, PerToken
from .base import Checkpoint, ClosedLoopController, ClosedLoopResult, start_run
from .particles import decoded_tokens, score_rows

__all__ = ["DEFAULT_INNER", "RecedingHorizon"]

#: the inner controller by default: plain Best-of-8 per window (no control)
DEFAULT_INNER = BestOfN(num_samples=8, num_iterations=1, sigma=0.0)


class RecedingHorizon(ClosedLoopController):
    """Model predictive control over partial responses with an open-loop ``inner`` controller.

    Args:
        inner: the open-loop controller run in every window (its n and k); in a config, a
            controller section, e.g. ``inner: {name: aisp, num_samples: 8, num_iterations: 2}``.
        block_size: b >= 1, tokens committed per window (at most the window's L).
        lookahead: L >= 1, tokens in a window (None: to the end of the response).
        space: the control space of the window (bound to τ = L each window; its own
            ``horizon`` is ignored); None: per-token. Not an option: in a run it is the run's
            ``space`` section.
    """

    name = "receding-horizon"
    uses_space = True
    needs_sampling = False
    bound_arguments = ("space",)
    hyperparameters = (
        Hyperparameter("inner", dict, "the open-loop controller run in every window (its n and k)",
                       objects=(Controller,), registry=CONTROLLERS),
        Hyperparameter("block_size", int, "tokens committed per window (at most the window's L)", "b", low=1),
        Hyperparameter("lookahead", int, "tokens in a window (unset: to the end of the response)", "L", low=1,
                       nullable=True),
    )

    def __init__(self, inner: Controller | Mapping[str, Any] = DEFAULT_INNER, *, block_size: int = 8,
                 lookahead: int | None = None, space: ControlSpace | None = None) -> None:
        if not isinstance(inner, (Controller, Mapping)):
            raise TypeError(f"inner must be a ctrlalign Controller (or its config section), got {type(inner).__name__}")
        for key, value in (("inner", inner), ("block_size", block_size), ("lookahead", lookahead)):
            self.set_hyperparameter(key, value)
        if space is not None and not isinstance(space, ControlSpace):
            raise TypeError(f"space must be a ctrlalign ControlSpace, got {type(space).__name__}")
        self.space = PerToken() if space is None else space

    def __repr__(self) -> str:
        return (f"RecedingHorizon({self.inner!r}, block_size={self.block_size}, lookahead={self.lookahead}, "
                f"space={self.space.describe()})")

    @property
    def sigma(self) -> float | None:
        """σ of the controls the windows sample: the inner controller's (None if it has none), so
        that :func:`ctrlalign.build.check_sigma_fits` checks the windows' controls as it checks an
        open-loop controller's."""
        return getattr(self.inner, "sigma", None)

    def with_space(self, space: ControlSpace | None) -> RecedingHorizon:
        """This controller with its windows in ``space`` (None: as it is)."""
        return self if space is None else self.replace(space=space)

    def check_setting(self, *, space: dict[str, Any] | None, greedy: bool, unscored_prefixes: Sequence[str],
                      open_loop_options: Sequence[str] = ()) -> None:
        """As :meth:`ClosedLoopController.check_setting` (the run's space is the windows'), and
        a space with a ``horizon`` is refused: the window's L sets it."""
        super().check_setting(space=space, greedy=greedy, unscored_prefixes=unscored_prefixes,
                              open_loop_options=open_loop_options)
        if space is not None and space.get("horizon") is not None:
            raise ConfigError(f"receding-horizon binds the space to each window's L tokens; got space.horizon = "
                              f"{space['horizon']!r}: leave it unset and set the controller's lookahead")

    def run(self, dynamics: StepwiseDynamics, cost: Cost | Reward, prompts: Sequence[Any], *, seed: int = 0,
            context: Any = None) -> ClosedLoopResult:
        """Run on D prompts; returns a :class:`~ctrlalign.closedloop.base.ClosedLoopResult`
        (``meta["windows"]``: where each window's commitment ends; ``meta["committed"]``: per
        window and prompt, the tokens committed)."""
        t_start = time.perf_counter()
        run = start_run("RecedingHorizon", dynamics, cost, prompts, seed=seed,
                        context=context, scores_prefixes=lambda T: min(self.block_size, self.lookahead or T) < T)
        dynamics, cost, prompts, gens, context, T = run
        D, ctrl = len(prompts), self.inner
        n, k = ctrl.num_samples, ctrl.num_iterations
        L_max = T if self.lookahead is None else min(self.lookahead, T)
        history: list[tuple[torch.Tensor | None, torch.Tensor]] = []  # committed (V (D, 1, b, d), noise (D, 1, b, ...))
        tokens = torch.zeros(D, dtype=torch.long)
        prefix_calls = torch.zeros(D, dtype=torch.long)
        full_calls = torch.zeros(D, dtype=torch.long)
        best = torch.full((D,), float("-inf"), dtype=torch.float64)
        kept: list[Any] = [None] * D
        done = [False] * D  # the kept rollout had finished (ended, or reached T)
        active = torch.ones(D, dtype=torch.bool)  # the committed prefix has not ended
        trace: list[Checkpoint] = []
        committed: list[list[list[int] | None]] = []  # per window, per prompt: the tokens committed
        t = 0
        while t < T and bool(active.any()):
            L = min(L_max, T - t)
            b = min(self.block_size, L)  # a block longer than the window commits the window
            final = t + L >= T
            space = self.space.bind(L, dynamics)
            state = ctrl.init(D, space, device=dynamics.device, dtype=dynamics.dtype)
            best = torch.where(active, torch.full_like(best, float("-inf")), best)
            best_v: list[torch.Tensor | None] = [None] * D
            best_noise: list[torch.Tensor | None] = [None] * D
            for _ in range(k):
                theta = ctrl.sample(state, [g.control for g in gens])
                V = None if theta is None else space.controls(theta).to(device=dynamics.device, dtype=dynamics.dtype)
                noise = dynamics.draw_noise([g.rollout for g in gens], n, steps=L)
                rows, replayed = self._replay(dynamics, context, history, n)
                rows, step = dynamics.advance(rows, V, noise)
                tokens += replayed + decoded_tokens(step, D, L)
                outcomes = dynamics.outcomes(rows)
                # finished rows (all of them in the last window) get the full reward, the others
                # their prefix score; prompts whose response has ended are not scored
                finished = torch.ones(D, n, dtype=torch.bool) if final else rows.finished.reshape(D, n).cpu()
                scores, calls_p, calls_f = score_rows(cost, prompts, outcomes, prefix=~finished,
                                                      rows=active.unsqueeze(-1).expand(D, n))
                prefix_calls += calls_p
                full_calls += calls_f
                state, _ = ctrl.step(state, theta, scores.nan_to_num(0.0).to(state.mean.device))
                value, idx = scores.max(-1)
                for j in torch.nonzero(active).flatten().tolist():
                    if float(value[j]) > float(best[j]):
                        best[j] = value[j]
                        i = int(idx[j])
                        best_v[j] = None if V is None else V[j, i:i + 1, :b]
                        best_noise[j] = noise[j, i:i + 1, :b]
                        kept[j] = outcomes.sample(j, i)
                        done[j] = bool(finished[j, i])
            history.append(self._stack(best_v, best_noise, dynamics))
            committed.append([None if s.tokens is None else s.tokens[t:t + b] if a else []
                              for s, a in zip(kept, active.tolist())])
            # a prompt whose response ended before this window has no row here (and no score)
            trace.append(Checkpoint(t + b, active.long(), torch.full((D,), float("nan")), torch.full((D,), float("nan")),
                                    torch.where(active, best, float("nan")), torch.zeros(D, dtype=torch.bool),
                                    active.long()))
            # a response whose committed prefix holds its end token is finished: no more windows
            ended = torch.tensor([d and s.tokens is not None and len(s.tokens) <= t + b for s, d in zip(kept, done)])
            active &= ~ended
            t += b
        # the last window reaches T and commits all of its best rollout, and a window whose
        # committed block ends the response commits all of it: that rollout is the response,
        # already decoded and fully scored
        return ClosedLoopResult(
            prompts=prompts, responses=kept, rewards=best, trace=trace, tokens=tokens, prefix_calls=prefix_calls,
            full_calls=full_calls, distinct=torch.ones(D, dtype=torch.long), seconds=time.perf_counter() - t_start,
            controller=self.name, meta={"windows": [c.position for c in trace], "committed": committed},
        )

    @staticmethod
    def _stack(controls: list[torch.Tensor | None], noise: list[torch.Tensor | None], dynamics: Any):
        """One committed block for D prompts: (V (D, 1, b, d) or None, noise (D, 1, b, ...)); a
        prompt without a block (its response has ended: its rows stay finished whatever they are
        given) gets zeros."""
        def stack(blocks: list[torch.Tensor | None]) -> torch.Tensor | None:
            if all(x is None for x in blocks):
                return None
            like = next(x for x in blocks if x is not None)
            return torch.cat([torch.zeros_like(like) if x is None else x for x in blocks]).unsqueeze(1)

        return stack(controls), stack(noise)

    @staticmethod
    def _replay(dynamics: StepwiseDynamics, context: Any, history, num_rows: int) -> tuple[Any, torch.Tensor]:
        """n rows at the committed prefix: start, then every committed block again. Returns the
        rows and (D,) the tokens the replay decoded per prompt (the rows' alive steps: a prefix
        that has ended costs its length, not t)."""
        rows = dynamics.start(context, num_rows)
        D = rows.num_prompts
        replayed = torch.zeros(D, dtype=torch.long)
        for V, noise in history:
            V = None if V is None else V.expand(D, num_rows, *V.shape[2:])
            rows, step = dynamics.advance(rows, V, noise.expand(D, num_rows, *noise.shape[2:]))
            replayed += decoded_tokens(step, D, noise.shape[2])
        return rows, replayed
