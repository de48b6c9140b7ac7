"""The closed-loop contract (ctrlalign.testing.ClosedLoopContract) over every closed-loop
controller, on the enumerable token chains (without and with an end token) and end to end on a
tiny random causal LM (eager engine, batch-invariant so that a prompt's rows are the same alone
and in a batch), also with its end token made to fire."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import PROMPTS, EarlyEnd, make_model, make_tokenizer

import ctrlalign as ca
from ctrlalign.dynamics import CausalLM, SamplingConfig
from ctrlalign.rewards.counting import CountingReward
from ctrlalign.testing import CLOSED_LOOP, ClosedLoopContract, CountingDynamics

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _tiny_lm() -> CausalLM:
    return CausalLM(make_model("llama"), make_tokenizer(), sampling=SamplingConfig(max_new_tokens=4),
                    engine_options={"batch_invariant": True})


def tiny_lm_system():
    """The tiny Llama (T = 4), a text reward (distinct characters so far; its prefix score is the
    same function of the text so far), 2 prompts."""
    reward = ca.CallableReward(lambda p, text: float(len(set(text))) - 0.1 * len(text), texts=True, name="chars")
    return _tiny_lm(), reward, list(PROMPTS[:2])


def ending_lm_system():
    """The tiny Llama (T = 4) with its uniforms shrunk so that the end token fires
    (:class:`conftest.EarlyEnd`), a reward for short texts (it favours responses that end, so
    committed prefixes end too), 2 prompts."""
    reward = ca.CallableReward(lambda p, text: -float(len(text)), texts=True, name="short")
    return EarlyEnd(_tiny_lm()), reward, list(PROMPTS[:2])


SYSTEMS = {**ClosedLoopContract.systems, "tiny_lm": tiny_lm_system, "tiny_lm_ending": ending_lm_system}


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("name", CLOSED_LOOP)
class TestClosedLoopContract(ClosedLoopContract):
    systems = SYSTEMS


def test_smc_with_a_control_proposal_runs_on_the_tiny_lm():
    """A fixed pre-logit control as SMC's proposal on a language model: the p/q correction uses
    the engine's base log-probabilities; the budget and log Ẑ are reported."""
    lm, reward, prompts = tiny_lm_system()
    V = 0.5 * torch.randn(2, 4, lm.hidden_size, generator=torch.Generator().manual_seed(0))
    res = ca.closedloop.SMC(num_particles=4, block_size=2, temperature=0.5).run(lm, reward, prompts, controls=V)
    assert torch.isfinite(res.log_normalizer).all() and res.tokens.le(4 * 4).all()
    assert all(isinstance(t, str) for t in res.texts)


@pytest.mark.slow
def test_closed_loop_controllers_on_the_default_model():
    """SMC (with a control proposal too), speculative rejection and receding horizon end to end
    on SmolLM2-135M with a real reward scored on prefixes; budgets counted outside the
    controllers; the closed-loop contract's per-prompt independence on a batch-invariant run."""
    lm = CausalLM.from_pretrained("default", sampling=SamplingConfig(max_new_tokens=12),
                                  engine_options={"batch_invariant": True})
    reward = ca.LexiconSentiment()
    prompts = ["Describe a rainy Monday.", "Write one sentence about your weekend."]
    runs = {
        "smc": ca.SMC(num_particles=6, block_size=4, temperature=0.1, twist_target_ess=0.5),
        "speculative": ca.SpeculativeRejection(num_samples=8, schedule=[(4, 4), (8, 2)]),
        "receding": ca.RecedingHorizon(ca.BestOfN(num_samples=3, num_iterations=1, sigma=0.0), block_size=6),
    }
    for name, ctrl in runs.items():
        dyn, counting = CountingDynamics(lm), CountingReward(reward)
        res = ctrl.run(dyn, counting, prompts, seed=0)
        keys = [counting.key(p) for p in prompts]
        assert res.tokens.tolist() == dyn.tokens.tolist(), name
        assert res.full_calls.tolist() == [counting.calls[k] for k in keys], name
        assert res.prefix_calls.tolist() == [counting.prefix_calls.get(k, 0) for k in keys], name
        assert all(isinstance(t, str) and t for t in res.texts), name
        for d, text in enumerate(res.texts):
            alone = float(reward.evaluate([prompts[d]], ca.Outcomes(num_prompts=1, num_samples=1, texts=[[text]]))[0, 0])
            assert abs(alone - float(res.rewards[d])) < 1e-6, name
        solo = ctrl.run(lm, reward, prompts[1:], seed=0)
        assert solo.texts[0] == res.texts[1], name
    V = 0.3 * torch.randn(2, 12, lm.hidden_size, generator=torch.Generator().manual_seed(0))
    res = runs["smc"].run(lm, reward, prompts, seed=0, controls=V)
    assert torch.isfinite(res.log_normalizer).all()
