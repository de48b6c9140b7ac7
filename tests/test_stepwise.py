"""The stepwise dynamics: start / advance / select, on the toy systems and the tiny models.

Properties (each with a deliberately wrong variant that must fail the same check):

* advancing T tokens in any split into blocks gives bitwise the one-shot rollout;
* ``select`` with identity rows changes nothing;
* a forked row continues exactly like its source would with the same uniforms;
* finished rows stay finished (pad, log-probabilities 0);
* log q == log p when controls are None or zero;
* every engine applies the head's output transform g.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import PROMPTS, make_model, make_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctrlalign.dynamics import CausalLM, SamplingConfig
from ctrlalign.dynamics.engines.eager import EagerEngine
from ctrlalign.dynamics.engines.static import StaticEngine
from ctrlalign.dynamics.head import OutputHead
from ctrlalign.dynamics.toy import LinearGaussian
from ctrlalign.rewards.toy import QuadraticReward
from ctrlalign.testing import make_linear, make_softmax_head
from ctrlalign.theory import (
    linear_gaussian_optimum,
    linear_gaussian_state_space_optimum,
    log_mean_exp,
)

pytestmark = pytest.mark.usefixtures("one_thread")

T = 6
ENGINES = {
    "eager": ("eager", {}),
    "eager_bi": ("eager", {"batch_invariant": True}),
    "static": ("static", {"compile": "none"}),
}


@pytest.fixture(scope="module")
def lms():
    model, tok = make_model("llama"), make_tokenizer()
    return {k: CausalLM(model, tok, sampling=SamplingConfig(max_new_tokens=T), engine=e, engine_options=dict(o))
            for k, (e, o) in ENGINES.items()}


def _gens(D, seed=0):
    return [torch.Generator().manual_seed(seed * 100 + j) for j in range(D)]


def _controls(lm, D, n, steps, seed=1, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(D, n, steps, lm.hidden_size, generator=g)


def _same(a, b) -> bool:
    """Bitwise equality of two Outcomes' tensors (and texts)."""
    for name in ("values", "tokens", "lengths", "logprobs", "base_logprobs"):
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None) or (x is not None and not torch.equal(x, y)):
            return False
    return a.texts == b.texts


def _blocks(split: list[int], total: int) -> list[int]:
    """Block sizes from cut points (sorted, within 1..total-1), covering ``total``."""
    cuts = sorted({c for c in split if 0 < c < total})
    edges = [0, *cuts, total]
    return [b - a for a, b in zip(edges, edges[1:])]


def _advance_in_blocks(dyn, ctx, V, noise, n, sizes):
    """start, then advance block by block; controls for the first τ steps only."""
    state = dyn.start(ctx, n)
    tau = 0 if V is None else V.shape[2]
    t = 0
    for b in sizes:
        lo, hi = t, t + b
        # a block straddling τ is split at τ (controls are given for a whole advance or not)
        for a, z in ((lo, min(hi, tau)), (max(lo, tau), hi)):
            if z > a:
                ctrl = V[:, :, a:z] if a < tau else None
                state, _ = dyn.advance(state, ctrl, noise[:, :, a:z])
        t = hi
    return state


def check_engine(lms, key, fork_atol=0.0):
    """Every engine property of this module (each with its power check here) on ``lms[key]``,
    a CausalLM with T = 6 whose engine is under test (engines defined elsewhere run these);
    ``fork_atol``: see :func:`test_a_forked_row_continues_like_its_source`."""
    assert lms[key].max_horizon == T
    test_advance_in_blocks_is_the_rollout_bitwise(lms, key)
    test_select_identity_changes_nothing(lms, key)
    for broken in (False, True):
        test_a_forked_row_continues_like_its_source(lms, key, broken, fork_atol)
    test_finished_rows_stay_finished(lms, key)
    for zero in (False, True):
        test_log_q_is_log_p_without_control(lms, key, zero)


# ------------------------------------------------------------------------------ blocks == one shot
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(split=st.lists(st.integers(0, T), max_size=4), tau=st.integers(0, T))
@pytest.mark.parametrize("key", list(ENGINES))
def test_advance_in_blocks_is_the_rollout_bitwise(lms, key, split, tau):
    lm = lms[key]
    D, n = 3, 2
    ctx = lm.prepare(PROMPTS[:D])
    V = _controls(lm, D, n, tau) if tau else None
    whole = lm.rollout(ctx, V, _gens(D), n)
    noise = lm.draw_noise(_gens(D), n)
    state = _advance_in_blocks(lm, ctx, V, noise, n, _blocks(split, T))
    assert state.position == T
    assert _same(whole, lm.outcomes(state))


@pytest.mark.parametrize("system", [make_linear, make_softmax_head])
@settings(max_examples=10, deadline=None)
@given(split=st.lists(st.integers(0, 3), max_size=3), controlled=st.booleans())
def test_toy_advance_in_blocks_is_the_rollout_bitwise(system, split, controlled):
    dyn, _, prompts = system(0)
    ctx = dyn.prepare(prompts)
    D, n, tau = len(prompts), 3, dyn.horizon
    V = torch.randn(D, n, tau, dyn.hidden_size, generator=torch.Generator().manual_seed(2), dtype=torch.float64) \
        if controlled else None
    whole = dyn.rollout(ctx, V, _gens(D), n)
    state = _advance_in_blocks(dyn, ctx, V, dyn.draw_noise(_gens(D), n), n, _blocks(split, tau))
    assert _same(whole, dyn.outcomes(state))


def test_block_check_sees_a_different_uniform(lms):
    """Power: the same comparison fails when one block's uniforms are redrawn."""
    lm = lms["eager"]
    D, n = 3, 2
    ctx = lm.prepare(PROMPTS[:D])
    whole = lm.rollout(ctx, None, _gens(D), n)
    noise = lm.draw_noise(_gens(D), n)
    noise[:, :, 3:] = torch.rand(D, n, T - 3, generator=torch.Generator().manual_seed(9))
    assert not _same(whole, lm.outcomes(_advance_in_blocks(lm, ctx, None, noise, n, [3, 3])))


# ------------------------------------------------------------------------------ select
@pytest.mark.parametrize("key", list(ENGINES))
def test_select_identity_changes_nothing(lms, key):
    lm = lms[key]
    D, n = 3, 3
    ctx = lm.prepare(PROMPTS[:D])
    V = _controls(lm, D, n, 4)
    noise = lm.draw_noise(_gens(D), n)
    state = lm.start(ctx, n)
    state, _ = lm.advance(state, V[:, :, :2], noise[:, :, :2])
    state = lm.select(state, torch.arange(n).expand(D, n))
    state, _ = lm.advance(state, V[:, :, 2:], noise[:, :, 2:4])
    state, _ = lm.advance(state, None, noise[:, :, 4:])
    assert _same(lm.rollout(ctx, V, _gens(D), n), lm.outcomes(state))


def _fork_run(lm, ctx, rows, V, noise, cut, *, broken=False):
    """Advance ``cut`` tokens, select ``rows``, advance the rest with the new rows' noise."""
    D, n = V.shape[:2]
    state = lm.start(ctx, n)
    state, _ = lm.advance(state, V[:, :, :cut], noise[:, :, :cut])
    if broken:  # select the decoded rows but leave the engine's cache and z in place
        es = state.engine_state
        flat = (rows + torch.arange(D)[:, None] * n).flatten()
        moved = es.successor(decoded=es.decoded.gather(flat))
        if hasattr(es, "session"):  # the static engine: hand its buffers to the new state as they are
            es.session.owner = moved.lease
        state = type(state)(state.context, moved)
    else:
        state = lm.select(state, rows)
    n2 = rows.shape[1]
    V2 = V[:, :1].expand(D, n2, *V.shape[2:])
    state, _ = lm.advance(state, V2[:, :, cut:], noise[:, :n2, cut:])
    return lm.outcomes(state)


@pytest.mark.parametrize("key", list(ENGINES))
@pytest.mark.parametrize("broken", [False, True])
def test_a_forked_row_continues_like_its_source(lms, key, broken, atol=0.0):
    """Row i after select(rows) continues old row rows[j, i] exactly: it equals the run in
    which old row rows[j, i] itself got row i's later uniforms. Power: a select that gathers
    the decoded tokens but not the KV cache fails it. ``atol`` > 0 (an engine whose
    attention rounds differently once a row's cache cells move, e.g. llama.cpp): the same
    tokens and texts, log-probabilities within ``atol``."""
    lm = lms[key]
    D, n, cut = 3, 3, 2
    ctx = lm.prepare(PROMPTS[:D])
    V = _controls(lm, D, 1, T).expand(D, n, T, lm.hidden_size)  # one control for all rows
    noise = lm.draw_noise(_gens(D, seed=4), n)
    rows = torch.tensor([[2, 2, 0], [1, 0, 0], [2, 1, 1]])
    forked = _fork_run(lm, ctx, rows, V, noise, cut, broken=broken)
    ok = True
    for j in range(D):
        for i in range(n):
            src = int(rows[j, i])
            u = noise.clone()
            u[j, src, cut:] = noise[j, i, cut:]  # the source row gets row i's later uniforms
            state = lm.start(ctx, n)
            state, _ = lm.advance(state, V, u)
            own = lm.outcomes(state)
            same = (torch.equal(own.tokens[j, src], forked.tokens[j, i])
                    and torch.allclose(own.logprobs[j, src], forked.logprobs[j, i], rtol=0, atol=atol)
                    and torch.allclose(own.base_logprobs[j, src], forked.base_logprobs[j, i], rtol=0, atol=atol)
                    and own.texts[j][src] == forked.texts[j][i])
            ok &= same
    assert ok != broken


def test_select_can_change_n_and_is_validated(lms):
    lm = lms["static"]
    D, n = 2, 3
    ctx = lm.prepare(PROMPTS[:D])
    noise = lm.draw_noise(_gens(D), n)
    state = lm.start(ctx, n)
    state, _ = lm.advance(state, None, noise[:, :, :2])
    state = lm.select(state, torch.tensor([[0, 0, 1, 2, 2], [1, 1, 1, 1, 0]]))
    assert state.num_samples == 5 and state.tokens.shape == (D, 5, 2)
    state, step = lm.advance(state, None, torch.rand(D, 5, T - 2))
    assert step.tokens.shape == (D * 5, T - 2) and lm.outcomes(state).tokens.shape == (D, 5, T)
    for bad in (torch.tensor([[0, 3], [0, 0]]), torch.tensor([[0, 1]]), torch.tensor([[-1, 0], [0, 0]])):
        with pytest.raises(ValueError, match="rows must"):
            lm.select(lm.start(ctx, n), bad)


@pytest.mark.parametrize("key", ["eager", "static"])
def test_a_consumed_state_is_refused(lms, key):
    lm = lms[key]
    ctx = lm.prepare(PROMPTS[:2])
    state = lm.start(ctx, 2)
    noise = torch.rand(2, 2, 1)
    lm.advance(state, None, noise)
    with pytest.raises(RuntimeError, match="already advanced|superseded"):
        lm.advance(state, None, noise)


def test_advance_validates_shapes(lms):
    lm = lms["eager"]
    ctx = lm.prepare(PROMPTS[:2])
    state = lm.start(ctx, 2)
    with pytest.raises(ValueError, match="cannot advance 7 tokens"):
        lm.advance(state, None, torch.rand(2, 2, 7))
    with pytest.raises(ValueError, match=r"controls must have shape \(D, n, b, d\)"):
        lm.engine.advance(state.engine_state, torch.zeros(2, 2, 3, lm.hidden_size), torch.rand(2, 2, 2))


# ------------------------------------------------------------------------------ finished rows, log q = log p
@pytest.mark.parametrize("key", list(ENGINES))
def test_finished_rows_stay_finished(lms, key):
    """After a row's EOS every later token is pad with log-probabilities 0 and alive False, and
    its finished flag never clears, whatever the blocks."""
    lm = lms[key]
    D, n = 3, 4
    ctx = lm.prepare(PROMPTS[:D])
    # uniforms near 0 pick the first tokens of the vocabulary: <pad>=0, <eos>=1 → early EOS
    noise = lm.draw_noise(_gens(D, seed=7), n) * 0.2
    state = lm.start(ctx, n)
    seen_finished = torch.zeros(D, n, dtype=torch.bool)
    for a in range(T):
        state, step = lm.advance(state, None, noise[:, :, a:a + 1])
        was = seen_finished.flatten()
        assert torch.all(step.tokens[was, 0] == lm.pad_token_id)
        assert torch.all(step.logprobs[was, 0] == 0) and torch.all(step.base_logprobs[was, 0] == 0)
        assert not step.alive[was, 0].any()
        now = state.finished
        assert torch.all(now | ~seen_finished)  # never un-finishes
        seen_finished = now if a < T - 1 else seen_finished
    assert seen_finished.any(), "no row ended early: the test would be vacuous"
    assert state.finished.all()


@pytest.mark.parametrize("key", list(ENGINES))
@pytest.mark.parametrize("zero", [False, True])
def test_log_q_is_log_p_without_control(lms, key, zero):
    lm = lms[key]
    D, n = 2, 3
    ctx = lm.prepare(PROMPTS[:D])
    V = torch.zeros(D, n, T, lm.hidden_size) if zero else None
    out = lm.rollout(ctx, V, _gens(D), n)
    if zero:  # log q comes from the sampler's reductions, log p from its own pass: rounding apart
        torch.testing.assert_close(out.logprobs, out.base_logprobs, atol=1e-5, rtol=1e-5)
    else:  # one head: log p is log q itself
        assert torch.equal(out.logprobs, out.base_logprobs)
    controlled = lm.rollout(ctx, _controls(lm, D, n, T), _gens(D), n)  # power: a control separates them
    assert not torch.equal(controlled.logprobs, controlled.base_logprobs)


# ------------------------------------------------------------------------------ output transform g
def _softcapped_llama():
    """A tiny Llama whose config names a final soft-cap c = 2 (that Llama's module ignores):
    OutputHead reads g = c·tanh(·/c) from the config, so every engine must apply it."""
    model = make_model("llama")
    model.config.final_logit_softcapping = 2.0
    return model


def test_every_engine_applies_the_head_transform():
    model, tok = _softcapped_llama(), make_tokenizer()
    cfg = SamplingConfig(max_new_tokens=T)
    eager = CausalLM(model, tok, sampling=cfg, verify=False)
    static = CausalLM(model, tok, sampling=cfg, verify=False, engine="static", engine_options={"compile": "none"})
    assert eager.head.softcap == 2.0 and static.engine.head.softcap == 2.0
    D, n = 3, 4
    a = eager.rollout(eager.prepare(PROMPTS[:D]), None, _gens(D), n)
    b = static.rollout(static.prepare(PROMPTS[:D]), None, _gens(D), n)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)
    # with |logit| ≤ c every log-probability is ≥ −2c − log V: only the capped head gives that
    V = eager.vocab_size
    assert float(b.logprobs.min()) >= -2 * 2.0 - torch.log(torch.tensor(float(V))) - 1e-4
    # power: the static engine without g (what it did before) disagrees with the eager one
    static.engine.head = OutputHead(static.engine.head.weight, static.engine.head.bias)
    c = static.rollout(static.prepare(PROMPTS[:D]), None, _gens(D), n)
    assert not torch.allclose(a.logprobs, c.logprobs, atol=1e-3)


# ------------------------------------------------------------------------------ transformers API
def test_a_rollout_emits_no_deprecation_warning(lms):
    """The eager engine uses transformers' current cache argument: no FutureWarning or
    DeprecationWarning from a prefill + rollout."""
    model, tok = make_model("qwen2"), make_tokenizer()

    def deprecations(lm):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lm.rollout(lm.prepare(PROMPTS[:2]), None, _gens(2), 2)
        return [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]

    lm = CausalLM(model, tok, sampling=SamplingConfig(max_new_tokens=3))
    assert deprecations(lm) == []
    if lm.engine.cache_argument == "cache":  # power: the old argument name is caught
        lm.engine.cache_argument = "past_key_values"
        assert any("past_key_values" in m for m in deprecations(lm))


def test_the_engines_name_their_cache_argument():
    eng = EagerEngine(make_model("gpt2"))
    assert eng.cache_argument in ("cache", "past_key_values")
    assert isinstance(StaticEngine(make_model("llama"), compile="none").head.weight, torch.Tensor)


# ------------------------------------------------------------------------------ linear-Gaussian state space
def test_linear_gaussian_state_space_follows_its_recursion():
    """x_t = F x_{t-1} + A_t v_t + σ w_t, step by step, equals the closed form the state uses."""
    g = torch.Generator().manual_seed(0)
    p, d, tau = 3, 2, 4
    A = torch.randn(p, tau * d, generator=g, dtype=torch.float64)
    Fm = 0.5 * torch.randn(p, p, generator=g, dtype=torch.float64)
    dyn = LinearGaussian(A, tau, d, transition=Fm, noise_std=0.3)
    prompts = [torch.randn(p, generator=g, dtype=torch.float64) for _ in range(2)]
    ctx = dyn.prepare(prompts)
    n = 3
    V = torch.randn(2, n, tau, d, generator=g, dtype=torch.float64)
    W = dyn.draw_noise(_gens(2), n)
    state = dyn.start(ctx, n)
    state, step = dyn.advance(state, V, W)
    x = ctx.repeat_interleave(n, 0)
    for t in range(tau):
        x = x @ Fm.T + V.reshape(2 * n, tau, d)[:, t] @ A[:, t * d:(t + 1) * d].T + 0.3 * W.reshape(2 * n, tau, p)[:, t]
        torch.testing.assert_close(step.values[:, t], x, rtol=1e-12, atol=1e-12)
    out = dyn.rollout(ctx, V, _gens(2), n)
    torch.testing.assert_close(out.values.reshape(2 * n, p), x, rtol=1e-12, atol=1e-12)
    # power: the same recursion without the transition disagrees
    assert not torch.allclose(LinearGaussian(A, tau, d, noise_std=0.3).rollout(ctx, V, _gens(2), n).values,
                              out.values)


def test_linear_gaussian_defaults_are_the_old_map():
    dyn, _, prompts = make_linear(0)
    ctx = dyn.prepare(prompts)
    V = torch.randn(4, 2, dyn.horizon, dyn.hidden_size, dtype=torch.float64)
    y = dyn.rollout(ctx, V, _gens(4), 2).values
    assert torch.equal(y, ctx.unsqueeze(1).expand(4, 2, -1).clone() + V.flatten(-2) @ dyn.A.T)


def test_state_space_closed_form_matches_monte_carlo():
    """log η and the mean of q* for the noisy state-space system: closed form vs 200k rollouts
    (V ~ N(0, σ²I), the system's own noise). Power: the noise-free formula misses log η."""
    g = torch.Generator().manual_seed(3)
    p, d, tau, sigma, lam, sw = 2, 1, 3, 0.8, 2.0, 0.6
    A = torch.randn(p, tau * d, generator=g, dtype=torch.float64)
    Fm = torch.tensor([[0.9, 0.2], [-0.1, 0.8]], dtype=torch.float64)
    dyn = LinearGaussian(A, tau, d, transition=Fm, noise_std=sw)
    x0 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    target = torch.tensor([1.0, 0.5], dtype=torch.float64)
    Q = torch.eye(p, dtype=torch.float64)
    x_eff, M, N = dyn.final_state(x0)
    exact = linear_gaussian_state_space_optimum(M, N, sw, Q, target, x_eff, sigma, lam)
    n = 200_000
    V = sigma * torch.randn(1, n, tau, d, generator=g, dtype=torch.float64)
    out = dyn.rollout(dyn.prepare([x0]), V, [torch.Generator().manual_seed(5)], n)
    r = QuadraticReward(target, Q)([x0], out)[0]
    log_eta = log_mean_exp(r / lam)
    w = torch.softmax(r / lam, 0)
    mean = (w[:, None] * V[0].reshape(n, -1)).sum(0)
    assert abs(float(log_eta - exact.log_eta)) < 0.02
    assert torch.allclose(mean, exact.mean, atol=0.03)
    wrong = linear_gaussian_optimum(M, Q, target, x_eff, sigma, lam)
    assert abs(float(log_eta - wrong.log_eta)) > 0.1
