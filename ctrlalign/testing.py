"""The controller contract, importable: run it on your own controller, space or system.

:class:`ControllerContract` holds test methods (plain ``assert`` s, no pytest import) that every
controller passes on every control space and toy system: shapes and a finite trace, the kept
reward is the kept response's reward, determinism under a seed, budget accounting (exactly
n·k reward calls per prompt, plus the selection's final draws), and per-prompt independence
(a prompt's result is the same alone and at any position of a batch). Use it from pytest::

    import pytest
    from ctrlalign.testing import ControllerContract, SPACES, SYSTEMS

    @pytest.mark.parametrize("system", SYSTEMS)
    @pytest.mark.parametrize("space", SPACES)
    @pytest.mark.parametrize("name", ["mine"])
    class TestMyController(ControllerContract):
        controllers = {"mine": lambda n, k: MyController(num_samples=n, num_iterations=k, sigma=0.7)}

Each test runs the controller in the space ``spaces[space]()`` (the space is given to
:func:`~ctrlalign.align`, not to the controller).

The toy systems have τ = 3 tokens of d = 2 dimensions and 4 prompts each.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from .align import AlignmentResult, Iteration, align
from .closedloop import SMC, RecedingHorizon, SpeculativeRejection
from .controllers import AISP, CEM, MPPI, BestOfN, Controller, SoftmaxSampling, StepInfo
from .dynamics.base import Dynamics, Outcomes, Sample
from .dynamics.counting import CountingDynamics
from .dynamics.toy import LinearGaussian, SoftmaxHead
from .rewards.base import Reward
from .rewards.counting import CountingReward
from .rewards.toy import QuadraticReward, TableReward
from .spaces import Blocks, ControlSpace, PerToken, Shared, Subspace

__all__ = [
    "CONTROLLERS",
    "DIM",
    "ENDING_HORIZON",
    "SPACES",
    "SYSTEMS",
    "TAU",
    "CLOSED_LOOP",
    "ClosedLoopContract",
    "ControllerContract",
    "CountingDynamics",
    "CountingReward",
    "make_linear",
    "make_ending_chain",
    "make_softmax_head",
    "make_token_chain",
    "same_sample",
]

#: τ and d of the toy systems; p, the linear system's outcome dimension
TAU, DIM, P = 3, 2, 4


def make_linear(seed: int = 0) -> tuple[Dynamics, Reward, list[torch.Tensor]]:
    """The linear-Gaussian system y = x + A vec(V) with a quadratic reward, and 4 prompts."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(P, TAU * DIM, generator=g, dtype=torch.float64)
    target = torch.randn(P, generator=g, dtype=torch.float64)
    prompts = [torch.randn(P, generator=g, dtype=torch.float64) for _ in range(4)]
    return LinearGaussian(A, TAU, DIM), QuadraticReward(target), prompts


def make_softmax_head(seed: int = 0) -> tuple[Dynamics, Reward, list[torch.Tensor]]:
    """A synthetic softmax-head system (K = 3 tokens) with a random table reward, and 4 prompts."""
    g = torch.Generator().manual_seed(seed)
    K = 3
    W = torch.randn(K, DIM, generator=g, dtype=torch.float64)
    b = torch.randn(K, generator=g, dtype=torch.float64)
    E = torch.randn(K + 1, DIM, generator=g, dtype=torch.float64)
    table = {s: float(torch.randn((), generator=g)) for s in itertools.product(range(K), repeat=TAU)}
    prompts = [torch.randn(TAU, DIM, generator=g, dtype=torch.float64) for _ in range(4)]
    return SoftmaxHead(W, b, TAU, embeddings=E), TableReward(table), prompts


def make_token_chain(seed: int = 0, *, twist_scale: float = 0.5,
                     sentence_token: int | None = None) -> tuple[SoftmaxHead, TableReward, list, list[dict]]:
    """An enumerable token system for closed-loop controllers: a softmax-head Markov chain over
    K = 3 tokens and T = τ = 3 steps, a table reward on the 27 sequences with a random prefix
    table (scale ``twist_scale``; any prefix score is a valid twist), 2 prompts, and each
    prompt's exact law p(y) under the plain system (dict sequence → probability).
    ``sentence_token``: a token that ends a "sentence" (SMC's sentence checkpoints), or None."""
    return _chain(seed, twist_scale, TAU, None, sentence_token)


#: T of :func:`make_ending_chain`
ENDING_HORIZON = 4


def make_ending_chain(seed: int = 0, *, twist_scale: float = 0.5,
                      sentence_token: int | None = None) -> tuple[SoftmaxHead, TableReward, list, list[dict]]:
    """:func:`make_token_chain` with an end token: K = 3 tokens, token 2 finishes a row, T = 4
    (:data:`ENDING_HORIZON`), so rows finish at different times; the 31 responses (15 ended
    by the end token before or at T, 16 of length T without it) carry a table reward, and every
    prefix of a response up to length T − 1 — finished responses included — a random prefix
    score. Returns the system, the reward, 2 prompts and each prompt's exact law p(y) over the
    responses. ``sentence_token`` as for :func:`make_token_chain`."""
    return _chain(seed, twist_scale, ENDING_HORIZON, 2, sentence_token)


def _chain(seed: int, twist_scale: float, horizon: int, end_token: int | None, sentence_token: int | None):
    """The token chain of :func:`make_token_chain` (horizon T, optional end token)."""
    g = torch.Generator().manual_seed(seed)
    K = 3
    W = torch.randn(K, DIM, generator=g, dtype=torch.float64)
    b = torch.randn(K, generator=g, dtype=torch.float64)
    E = torch.randn(K + 1, DIM, generator=g, dtype=torch.float64)
    seqs = list(dict.fromkeys(s[:s.index(end_token) + 1] if end_token in s else s
                              for s in itertools.product(range(K), repeat=horizon)))
    table = {s: float(torch.randn((), generator=g)) for s in seqs}
    prefixes = {s[:t]: twist_scale * float(torch.randn((), generator=g))
                for s in seqs for t in range(1, min(len(s), horizon - 1) + 1)}
    prompts = [torch.randn(horizon, DIM, generator=g, dtype=torch.float64) for _ in range(2)]
    dyn = SoftmaxHead(W, b, horizon, embeddings=E, end_token=end_token, sentence_token=sentence_token)
    return dyn, TableReward(table, prefix_table=prefixes), prompts, [dyn.outcome_distribution(p, sigma=0.0)
                                                                      for p in prompts]


#: the built-in controllers as factories (n, k) → Controller
CONTROLLERS: dict[str, Callable[[int, int], Controller]] = {
    "aisp": lambda n, k: AISP(num_samples=n, num_iterations=k, sigma=0.7, temperature=0.5, alpha=0.5),
    "aisp_alpha0": lambda n, k: AISP(num_samples=n, num_iterations=k, sigma=0.7, temperature=0.5, alpha=0.0),
    "aisp_adaptive": lambda n, k: AISP(num_samples=n, num_iterations=k, sigma=0.7, target_ess=0.5, alpha=0.5),
    "mppi": lambda n, k: MPPI(num_samples=n, num_iterations=k, sigma=0.7, temperature=0.5, step_size=0.5),
    "bon_prior": lambda n, k: BestOfN(num_samples=n, num_iterations=k, sigma=0.7),
    "bon_plain": lambda n, k: BestOfN(num_samples=n, num_iterations=k, sigma=0.0),
    "softmax": lambda n, k: SoftmaxSampling(num_samples=n, num_iterations=k, sigma=0.7, temperature=0.5),
    "cem": lambda n, k: CEM(num_samples=n, num_iterations=k, sigma=0.7, elite_fraction=0.3),
    "cem_refit": lambda n, k: CEM(num_samples=n, num_iterations=k, sigma=0.7, refit_std=True, step_size=0.7),
}

#: the control spaces the contract runs in (a subspace with explicit directions: toy systems
#: need not have a head)
SPACES: dict[str, Callable[[], ControlSpace]] = {
    "per-token": PerToken,
    "shared": Shared,
    "blocks": lambda: Blocks(block_size=2),
    "subspace": lambda: Subspace(rank=1, directions=torch.tensor([[0.6, 0.8]], dtype=torch.float64), shared=False),
}

#: name → factory () → (dynamics, reward, 4 prompts)
SYSTEMS: dict[str, Callable[[], tuple[Dynamics, Reward, list[Any]]]] = {
    "linear": make_linear, "softmax_head": make_softmax_head,
}


def same_sample(a: Sample, b: Sample) -> bool:
    """Whether two kept responses are the same (values, tokens and text)."""
    if a.value is not None or b.value is not None:
        if a.value is None or b.value is None or not torch.equal(a.value, b.value):
            return False
    return a.tokens == b.tokens and a.text == b.text


def _outcome_of(sample: Sample) -> Outcomes:
    if sample.value is not None and sample.tokens is None:
        return Outcomes(num_prompts=1, num_samples=1, values=sample.value.view(1, 1, -1))
    t = torch.tensor(sample.tokens, dtype=torch.long).view(1, 1, -1)
    texts = None if sample.text is None else [[sample.text]]
    return Outcomes(num_prompts=1, num_samples=1, tokens=t, values=t, texts=texts,
                    lengths=torch.tensor([[t.shape[-1]]]))


#: closed-loop controllers for the contract: name → factory () → controller with ``run``
CLOSED_LOOP: dict[str, Callable[[], Any]] = {
    "smc": lambda: SMC(num_particles=4, block_size=1, temperature=0.5, resample_threshold=1.0),
    "smc_adaptive_weight": lambda: SMC(num_particles=4, block_size=2, temperature=0.5, twist_target_ess=0.5,
                                       scheme="residual", readout="weight"),
    "smc_sentences": lambda: SMC(num_particles=4, block_size=3, temperature=0.5, resample_threshold=1.0,
                                 checkpoint_at="sentences"),
    "speculative": lambda: SpeculativeRejection(num_samples=6, schedule=[(1, 3), (2, 2)]),
    "speculative_regrow": lambda: SpeculativeRejection(num_samples=6, schedule=[(1, 2, 6), (2, 2, 4)]),
    "receding_aisp": lambda: RecedingHorizon(AISP(num_samples=3, num_iterations=2, sigma=0.7, temperature=0.5),
                                             block_size=1, lookahead=2),
    "receding_bon": lambda: RecedingHorizon(BestOfN(num_samples=3, num_iterations=2, sigma=0.0), block_size=2),
}


class ClosedLoopContract:
    """The contract of closed-loop controllers (``run(dynamics, reward, prompts, seed=...)``), on
    the systems in ``systems`` (factories () → (stepwise dynamics, reward with prefix scores,
    prompts); by default the token chain and the ending chain (token 1 ends a sentence), whose rows end at different
    times): a response per prompt whose reward is its own full reward; determinism under a
    seed; per-prompt independence; and budgets counted outside the controller — decoded tokens
    by :class:`CountingDynamics`, full and prefix reward calls by
    :class:`~ctrlalign.rewards.counting.CountingReward` — equal to what the result reports."""

    #: name → factory () → controller
    controllers = CLOSED_LOOP
    #: name → factory () → (dynamics, reward, prompts)
    systems: dict[str, Callable[[], tuple[Any, Reward, list]]] = {
        "token_chain": lambda: make_token_chain(sentence_token=1)[:3],
        "ending_chain": lambda: make_ending_chain(1, sentence_token=1)[:3],  # seed 1: about half the rows end before T
    }

    def run(self, name: str, system: str, prompts: list | None = None, seed: int = 0):
        """(result, counting dynamics, counting reward, all prompts)."""
        dyn, reward, all_prompts = self.systems[system]()
        dyn, counting = CountingDynamics(dyn), CountingReward(reward)
        res = self.controllers[name]().run(dyn, counting, all_prompts if prompts is None else prompts, seed=seed)
        return res, dyn, counting, all_prompts

    def test_kept_reward_is_the_responses_own(self, name, system):
        """One response per prompt; its reported reward is the full reward of that response."""
        res, _, _, prompts = self.run(name, system)
        _, reward, _ = self.systems[system]()
        assert len(res.responses) == len(prompts) and res.rewards.shape == (len(prompts),)
        for d, s in enumerate(res.responses):
            r = float(reward([prompts[d]], _outcome_of(s))[0, 0])
            assert abs(r - float(res.rewards[d])) <= 1e-9 + 1e-6 * abs(r)

    def test_budget_is_counted_outside_the_controller(self, name, system):
        """Tokens = the dynamics' alive steps; full and prefix calls = the reward's counts."""
        res, dyn, counting, prompts = self.run(name, system)
        keys = [counting.key(p) for p in prompts]
        assert res.tokens.tolist() == dyn.tokens.tolist()
        assert res.full_calls.tolist() == [counting.calls.get(k, 0) for k in keys]
        assert res.prefix_calls.tolist() == [counting.prefix_calls.get(k, 0) for k in keys]

    def test_determinism(self, name, system):
        """Same seed, same responses and rewards."""
        a, _, _, _ = self.run(name, system, seed=3)
        b, _, _, _ = self.run(name, system, seed=3)
        assert torch.equal(a.rewards, b.rewards)
        assert all(same_sample(x, y) for x, y in zip(a.responses, b.responses))

    def test_per_prompt_independence(self, name, system):
        """A prompt's response is the same alone and in the batch."""
        batch, _, _, prompts = self.run(name, system, seed=11)
        for d in range(len(prompts)):
            alone, _, _, _ = self.run(name, system, prompts=[prompts[d]], seed=11)
            assert float(alone.rewards[0]) == float(batch.rewards[d])
            assert same_sample(alone.responses[0], batch.responses[d])


class ControllerContract:
    """The contract every controller passes, on every space in ``spaces`` and system in ``systems``.

    Parametrise a subclass over ``name`` (keys of ``controllers``), ``space`` (keys of
    ``spaces``) and ``system`` (keys of ``systems``); see the module docstring.
    """

    n, k = 6, 3
    #: name → factory (n, k) → Controller
    controllers = CONTROLLERS
    #: name → factory () → ControlSpace
    spaces = SPACES
    #: name → factory () → (dynamics, reward, 4 prompts)
    systems = SYSTEMS

    def run(self, name: str, space: str, system: str, prompts: list | None = None,
            seed: int = 0, **options: Any) -> tuple[AlignmentResult, CountingReward, list]:
        """align() of controller ``name`` in ``space`` on ``system`` with a counting reward
        (``options``: more keyword arguments of :func:`~ctrlalign.align`)."""
        dyn, reward, all_prompts = self.systems[system]()
        counting = CountingReward(reward)
        ctrl = self.controllers[name](self.n, self.k)
        res = align(dyn, counting, ctrl, all_prompts if prompts is None else prompts, space=self.spaces[space](),
                    seed=seed, **options)
        return res, counting, all_prompts

    def test_shapes_and_trace(self, name, space, system):
        """Final mean (D, *θ), rewards (D,), k records; every diagnostic (D,) and finite; weights
        (D, n) non-negative and summing to one; ESS in [1, n]; entropy in [0, log n]; KL >= 0."""
        res, _, prompts = self.run(name, space, system)
        D = len(prompts)
        assert res.state.mean.shape == (D, *res.space.shape)
        assert res.rewards.shape == (D,)
        assert len(res.responses) == D and all(r is not None for r in res.responses)
        assert len(res.trace) == self.k
        for rec in res.trace:
            g = rec.diagnostics
            for f in ("mean_reward", "max_reward", "reward_std", "ess", "weight_entropy", "mean_norm", "kl"):
                v = getattr(g, f)
                assert v.shape == (D,), f
                assert torch.isfinite(v).all(), f
            assert g.weights.shape == (D, self.n)
            assert torch.allclose(g.weights.sum(-1), torch.ones(D, dtype=g.weights.dtype))
            assert (g.weights >= 0).all()
            assert ((g.ess >= 1 - 1e-9) & (g.ess <= self.n + 1e-9)).all()
            assert ((g.weight_entropy >= -1e-9) & (g.weight_entropy <= math.log(self.n) + 1e-9)).all()
            assert (g.max_reward >= g.mean_reward - 1e-12).all()
            assert (g.kl >= -1e-9).all()

    def test_kept_reward_matches_kept_response(self, name, space, system):
        """The reported reward is the reward of the response actually kept."""
        res, _, prompts = self.run(name, space, system)
        _, reward, _ = self.systems[system]()
        for d, s in enumerate(res.responses):
            r = float(reward([prompts[d]], _outcome_of(s))[0, 0])
            assert abs(r - float(res.rewards[d])) <= 1e-9 + 1e-6 * abs(r)

    def test_determinism(self, name, space, system):
        """Same seed, same result; another seed, other draws (unless nothing is random)."""
        a, _, _ = self.run(name, space, system, seed=3)
        b, _, _ = self.run(name, space, system, seed=3)
        c, _, _ = self.run(name, space, system, seed=4)
        assert torch.equal(a.rewards, b.rewards)
        assert torch.equal(a.state.mean, b.state.mean)
        assert all(same_sample(x, y) for x, y in zip(a.responses, b.responses))
        if all(torch.equal(x.diagnostics.mean_reward, y.diagnostics.mean_reward) for x, y in zip(a.trace, c.trace)):
            # only a system with nothing random (no control noise, deterministic dynamics) may repeat
            assert float(a.state.std.abs().max()) == 0 and a.responses[0].tokens is None

    def test_budget_accounting(self, name, space, system):
        """Exactly n·k reward calls per prompt, plus the default selection's final draws."""
        res, counting, prompts = self.run(name, space, system)
        extra = self.controllers[name](self.n, self.k).default_selection().final_samples
        assert res.reward_calls.tolist() == [self.n * self.k + extra] * len(prompts)
        assert sorted(counting.calls.values()) == [self.n * self.k + extra] * len(prompts)

    def test_step_is_pure_and_reports_what_it_used(self, name, space, system):
        """``step`` returns (state, StepInfo): log-weights (D, n) float64 and λ (D,) float64; it
        does not modify its inputs, and the same inputs give the same outputs bit for bit (the
        state alone carries what the next step needs); the trace reports the info's λ."""
        rounds: list[Iteration] = []
        res, _, prompts = self.run(name, space, system, callback=rounds.append)
        ctrl = self.controllers[name](self.n, self.k)
        D = len(prompts)
        for before, it in zip(rounds, rounds[1:]):
            mean = before.state.mean.clone()
            again, info = ctrl.step(before.state, it.theta, it.rewards)
            assert isinstance(info, StepInfo)
            assert info.log_weights.shape == (D, self.n) and info.log_weights.dtype == torch.float64
            assert info.temperature.shape == (D,) and info.temperature.dtype == torch.float64
            assert torch.equal(before.state.mean, mean)
            assert torch.equal(again.mean, it.state.mean) and torch.equal(again.std, it.state.std)
            assert torch.equal(info.log_weights, it.info.log_weights)
            assert torch.equal(info.temperature.isnan(), it.info.temperature.isnan())
        for rec, it in zip(res.trace, rounds):
            assert torch.equal(rec.diagnostics.temperature.isnan(), it.info.temperature.isnan())
            ok = ~it.info.temperature.isnan()
            assert torch.equal(rec.diagnostics.temperature[ok], it.info.temperature[ok])

    def test_prompts_in_flight_do_not_change_results(self, name, space, system):
        """The round loop with S = 1 or 3 prompts in flight gives every prompt exactly what it
        gets with all of them in flight: one round loop, per-prompt state and counters."""
        full, _, prompts = self.run(name, space, system, seed=5)
        for S in (1, 3):
            part, counting, _ = self.run(name, space, system, seed=5, batch_prompts=S)
            assert torch.equal(part.rewards, full.rewards)
            assert torch.equal(part.state.mean, full.state.mean)
            assert all(same_sample(x, y) for x, y in zip(part.responses, full.responses))
            assert part.reward_calls.tolist() == full.reward_calls.tolist()
            for a, b in zip(part.trace, full.trace):
                assert torch.equal(a.diagnostics.mean_reward, b.diagnostics.mean_reward)
                assert torch.equal(a.kept_reward, b.kept_reward)
            assert part.meta["rows"][0] == min(S, len(prompts)) * self.n

    def test_per_prompt_independence(self, name, space, system):
        """A prompt's result is the same alone, in a batch, and at another position."""
        batch, _, prompts = self.run(name, space, system, seed=11)
        for d in (0, 2):
            alone, _, _ = self.run(name, space, system, prompts=[prompts[d]], seed=11)
            assert torch.allclose(alone.state.mean[0], batch.state.mean[d], atol=1e-6)
            assert abs(float(alone.rewards[0]) - float(batch.rewards[d])) <= 1e-9
            assert same_sample(alone.responses[0], batch.responses[d])
        perm = [prompts[3], prompts[1], prompts[0]]
        shuffled, _, _ = self.run(name, space, system, prompts=perm, seed=11)
        assert abs(float(shuffled.rewards[0]) - float(batch.rewards[3])) <= 1e-9
        assert abs(float(shuffled.rewards[2]) - float(batch.rewards[0])) <= 1e-9
