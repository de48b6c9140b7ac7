r"""What every closed-loop controller shares: the result, the checkpoint record and the budget.

A *closed-loop* controller acts on partial responses: it advances n rows per prompt by blocks of
b tokens on a :class:`~ctrlalign.dynamics.base.StepwiseDynamics` (``start`` / ``advance`` /
``select``), looks at the prefixes :math:`y_{1:t}` through the reward's prefix score
:math:`r(x, y_{1:t})` (:meth:`~ctrlalign.rewards.base.Reward.prefix`) at each checkpoint t, and
forks, reweights or stops rows there. Open-loop controllers (:mod:`ctrlalign.controllers`)
instead commit a response-long control and weigh whole responses.

Budgets are counted per prompt, so that controllers can be compared at matched tokens as well
as matched reward calls: decoded tokens (every row's tokens while it was alive, including rows
later stopped or resampled away), prefix reward calls, full reward calls, and distinct finished
responses.

:class:`ClosedLoopController` is their base: hyperparameters declared like an open-loop
controller's (:class:`~ctrlalign.declare.Declared`), so configs, flags and the docs' tables
cover them, and :meth:`ClosedLoopController.solve`, the same protocol as
:meth:`~ctrlalign.controllers.base.Controller.solve`, so the command line, the runner and the
benchmark solve a batch without asking which kind of controller they hold.
"""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch

from .._checks import ConfigError
from ..align import check_prompts
from ..cost import Cost
from ..declare import Declared
from ..dynamics.base import Outcomes, Sample, StepwiseDynamics
from ..random import make_generators
from ..rewards.base import Reward, require_prefix_scores
from ..solution import Solution

__all__ = ["Checkpoint", "ClosedLoopController", "ClosedLoopResult", "Run", "block_bounds", "distinct_rows", "require_stepwise", "start_run"]


def require_stepwise(dynamics: Any, who: str) -> StepwiseDynamics:
    """``dynamics`` if it can be run step by step, else a :class:`~ctrlalign.ConfigError`."""
    if not isinstance(dynamics, StepwiseDynamics):
        raise ConfigError(f"{who} acts on partial responses and needs a StepwiseDynamics (start/advance/select); "
                          f"{type(dynamics).__name__} only rolls out whole responses")
    return dynamics


class Run(NamedTuple):
    """What every closed-loop run starts from.

    Attributes:
        dynamics: the stepwise system.
        cost: the reward as a :class:`~ctrlalign.cost.Cost`.
        prompts: the D prompts, checked.
        generators: the D prompts' :class:`~ctrlalign.random.PromptGenerators` (as ``align``'s,
            so the rollout uniforms are an open-loop run's of the same seed).
        context: ``dynamics.prepare(prompts)``.
        horizon: T, the dynamics' response length.
    """

    dynamics: StepwiseDynamics
    cost: Cost
    prompts: list[Any]
    generators: list[Any]
    context: Any
    horizon: int


def start_run(who: str, dynamics: Any, cost: Cost | Reward, prompts: Sequence[Any], *, seed: int, context: Any,
              scores_prefixes: Callable[[int], bool]) -> Run:
    """Check a closed-loop run's arguments, then seed and prepare it: the dynamics must be
    stepwise, the prompts valid, and — when ``scores_prefixes(T)`` says the controller will score
    partial responses of a length-T response — the reward must score prefixes; all refused
    before any prefill. ``context``: ``dynamics.prepare(prompts)`` already done, or None."""
    dynamics = require_stepwise(dynamics, who)
    cost = cost if isinstance(cost, Cost) else Cost(cost)
    prompts = check_prompts(prompts)
    T = dynamics.max_horizon
    if scores_prefixes(T):
        require_prefix_scores(cost.reward, who)
    generators = make_generators(seed, prompts, device=dynamics.device)
    context = dynamics.prepare(prompts) if context is None else context
    return Run(dynamics, cost, prompts, generators, context, T)


def block_bounds(horizon: int, block_size: int) -> list[tuple[int, int]]:
    """Checkpoints of a response of T = ``horizon`` steps every b = ``block_size``: the blocks
    [t0, t1) that end at them, the last ending at T."""
    return [(t0, min(t0 + block_size, horizon)) for t0 in range(0, horizon, block_size)]


def distinct_rows(outcomes: Outcomes) -> torch.Tensor:
    """(D,) distinct rows (token prefixes, or numeric states) per prompt."""
    data = outcomes.tokens if outcomes.tokens is not None else outcomes.values
    D = outcomes.num_prompts
    rows = data.reshape(D, outcomes.num_samples, -1)
    return torch.tensor([len({tuple(r) for r in rows[j].tolist()}) for j in range(D)], dtype=torch.long)


class Checkpoint(NamedTuple):
    """One checkpoint of a closed-loop run, every tensor (D,).

    Attributes:
        position: t, steps decoded so far.
        rows: rows alive per prompt after the checkpoint's decision.
        ess: effective sample size of the weights at the checkpoint (before any resampling;
            rows for controllers without weights).
        temperature: λ_t of the checkpoint's twist (NaN without one).
        mean_score: mean prefix score (the full reward at the last checkpoint).
        resampled: bool, whether the prompt's rows were resampled or pruned here.
        distinct: distinct prefixes among the rows, before the decision.
        archived: finished rows moved to the archive here (SMC with ``archive=True``), or None
            for controllers without an archive.
        fired: bool, the prompts that had a checkpoint here, when not all did (SMC's
            ``"sentences"`` rule gives each prompt its own); None: every prompt. The other
            prompts' entries are NaN or unchanged, and their traces skip this checkpoint.
    """

    position: int
    rows: torch.Tensor
    ess: torch.Tensor
    temperature: torch.Tensor
    mean_score: torch.Tensor
    resampled: torch.Tensor
    distinct: torch.Tensor
    archived: torch.Tensor | None = None
    fired: torch.Tensor | None = None

    def concerns(self, d: int) -> bool:
        """Whether prompt d had this checkpoint."""
        return self.fired is None or bool(self.fired[d])

    def summary(self, d: int) -> dict[str, float | int | bool | None]:
        """Plain numbers for prompt d (non-finite values are None; ``archived`` only when the
        controller has an archive)."""
        def num(x: torch.Tensor) -> float | None:
            v = float(x[d])
            return v if math.isfinite(v) else None
        out = {"position": self.position, "rows": int(self.rows[d]), "ess": num(self.ess),
               "temperature": num(self.temperature), "mean_score": num(self.mean_score),
               "resampled": bool(self.resampled[d]), "distinct": int(self.distinct[d])}
        if self.archived is not None:
            out["archived"] = int(self.archived[d])
        return out


@dataclass
class ClosedLoopResult:
    """What a closed-loop controller returns for D prompts.

    Attributes:
        prompts: the D prompts.
        responses: D kept :class:`~ctrlalign.dynamics.base.Sample` s.
        rewards: (D,) float64 full rewards of the kept responses.
        trace: one :class:`Checkpoint` per checkpoint.
        tokens: (D,) decoded tokens per prompt (stopped and resampled-away rows included).
        prefix_calls: (D,) prefixes scored per prompt.
        full_calls: (D,) finished responses scored per prompt.
        distinct: (D,) distinct finished responses per prompt (SMC: its archive's included).
        seconds: wall-clock time.
        controller: the controller's name.
        log_normalizer: (D,) float64 estimate of log Z (SMC), or None.
        final_rewards: (D, n') full rewards of the final rows.
        meta: free-form extras.
    """

    prompts: list[Any]
    responses: list[Sample]
    rewards: torch.Tensor
    trace: list[Checkpoint]
    tokens: torch.Tensor
    prefix_calls: torch.Tensor
    full_calls: torch.Tensor
    distinct: torch.Tensor
    seconds: float
    controller: str
    log_normalizer: torch.Tensor | None = None
    final_rewards: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[str | None]:
        """The kept responses' texts (language models)."""
        return [s.text for s in self.responses]

    def trace_of(self, d: int) -> list[dict[str, Any]]:
        """Prompt d's checkpoints, each as :meth:`Checkpoint.summary`."""
        return [c.summary(d) for c in self.trace if c.concerns(d)]

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per prompt."""
        out = []
        for d, p in enumerate(self.prompts):
            logz = None if self.log_normalizer is None else float(self.log_normalizer[d])
            out.append({
                "prompt": p if isinstance(p, (str, list)) else torch.as_tensor(p).tolist(),
                "response": self.responses[d].to_dict(), "reward": float(self.rewards[d]),
                "controller": self.controller, "tokens": int(self.tokens[d]),
                "prefix_calls": int(self.prefix_calls[d]), "full_calls": int(self.full_calls[d]),
                "distinct": int(self.distinct[d]), "log_normalizer": logz,
                "trace": self.trace_of(d),
            })
        return out

    def to_json(self) -> str:
        """:meth:`to_records` as a JSON string."""
        return json.dumps(self.to_records())


class ClosedLoopController(Declared):
    """Base class of the closed-loop controllers (:mod:`ctrlalign.closedloop`).

    Subclasses override exactly :meth:`run` and declare ``name`` and ``hyperparameters``
    (:class:`~ctrlalign.declare.Hyperparameter`; each stored in ``__init__`` with
    ``self.set_hyperparameter(name, value)``, immutable afterwards, :meth:`replace` for a
    validated copy), and say whether they act in a control space (``uses_space``) and whether
    they need sampled rollouts (``needs_sampling``). They need a
    :class:`~ctrlalign.dynamics.base.StepwiseDynamics` and, when they score partial responses,
    a reward that scores prefixes.
    """

    name: ClassVar[str] = "closed-loop"
    #: whether the controller acts in a control space (the run's ``space`` section)
    uses_space: ClassVar[bool] = False
    #: whether the controller needs sampled rollouts (greedy decoding would make its rows equal)
    needs_sampling: ClassVar[bool] = True
    #: whether its result can be read off at every budget of one run (no: its own settings fix its cost)
    anytime: ClassVar[bool] = False

    @abstractmethod
    def run(self, dynamics: StepwiseDynamics, cost: Cost | Reward, prompts: Sequence[Any], *, seed: int = 0,
            context: Any = None) -> ClosedLoopResult:
        """Run on D prompts: the kept responses, their rewards, the per-checkpoint trace and
        the budget (:class:`ClosedLoopResult`)."""

    def with_space(self, space: Any) -> ClosedLoopController:
        """This controller acting in the run's control space ``space`` (None: as it is). A
        controller without one (``uses_space`` False) returns itself."""
        return self

    def solve(self, dynamics: Any, reward: Any, prompts: Sequence[Any], *, seed: int = 0, context: Any = None,
              space: Any = None, selection: Any = None, common_random_numbers: bool = False,
              callback: Callable[[Any], None] | None = None, progress: bool = False) -> Solution:
        """Solve D prompts by :meth:`run` and return the :class:`~ctrlalign.solution.Solution`
        (the protocol of :meth:`~ctrlalign.controllers.base.Controller.solve`): full and prefix
        reward calls, decoded tokens, and per prompt the checkpoints'
        :meth:`Checkpoint.summary` (ESS, λ_t, distinct prefixes, survivors) as its trace, with
        log Ẑ and the distinct finished responses as extra fields.

        Raises:
            ConfigError: a ``selection``, ``common_random_numbers`` or a candidate ``callback``
                (open-loop notions) was asked for.
        """
        asked = [k for k, v in (("selection", selection), ("common_random_numbers", common_random_numbers),
                                ("candidates", callback)) if v]
        if asked:
            raise ConfigError(f"{', '.join(asked)} {'applies' if len(asked) == 1 else 'apply'} to open-loop "
                              f"controllers only, not to the closed-loop {self.name!r}")
        res = self.with_space(space).run(dynamics, reward, prompts, seed=seed, context=context)
        D = len(res.prompts)
        extra = [{"log_normalizer": None if res.log_normalizer is None else float(res.log_normalizer[d]),
                  "distinct": int(res.distinct[d])} for d in range(D)]
        described = getattr(getattr(self, "space", None), "describe", None)
        return Solution(
            prompts=res.prompts, responses=res.responses, rewards=res.rewards.double().cpu(),
            reward_calls=res.full_calls.long().cpu(), prefix_calls=res.prefix_calls.long().cpu(),
            tokens=res.tokens.long().cpu(), traces=[res.trace_of(d) for d in range(D)],
            controller=self.name, kind="closed-loop", seconds=res.seconds,
            space=described() if self.uses_space and described is not None else None, extra=extra, result=res)

    def check_setting(self, *, space: dict[str, Any] | None, greedy: bool, unscored_prefixes: Sequence[str],
                      open_loop_options: Sequence[str] = ()) -> None:
        """Refuse, before any model work, a run setting this controller cannot work in: a
        control space when it acts in none, greedy decoding when it needs sampled rows, reward
        terms that cannot score prefixes, options of open-loop runs (``open_loop_options``:
        those set, e.g. ``controller.selection``).

        Raises:
            ConfigError: naming the value and what is allowed.
        """
        if open_loop_options:
            raise ConfigError(f"{', '.join(open_loop_options)} {'applies' if len(open_loop_options) == 1 else 'apply'} "
                              f"to open-loop controllers only, not to the closed-loop {self.name!r}; unset it")
        if space is not None and not self.uses_space:
            raise ConfigError(f"controller {self.name!r} decodes from the model itself and takes no control space; "
                              f"got space {space.get('name')!r} (leave the space section unset, or use "
                              "receding-horizon, which runs an open-loop controller in it)")
        if greedy and self.needs_sampling:
            raise ConfigError(f"controller {self.name!r} needs sampled rows (greedy decoding makes every row the "
                              "same); set model.greedy: false (--no-greedy)")
        if unscored_prefixes:
            raise ConfigError(f"controller {self.name!r} scores partial responses, but reward "
                              f"{', '.join(map(repr, unscored_prefixes))} cannot score prefixes "
                              "(scores_prefixes=False); use an open-loop controller or a reward that scores prefixes")
