"""Every example in ``examples/`` runs (the tutorials' code), and the Extending examples'
components pass their contracts: the custom controller the controller contract, the custom
selection keeps what it says, the custom engine the engine checks of ``test_stepwise.py``.

The toy examples run here with small settings (a few seconds each); the ones that load the
real default model (SmolLM2) are marked slow.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import test_stepwise as stepwise
import torch
from conftest import PROMPTS, make_model, make_tokenizer

import ctrlalign as ca
from ctrlalign.bench.config import BenchConfig
from ctrlalign.cli import align_config, build_parser
from ctrlalign.config import RunConfig
from ctrlalign.dynamics.base import Outcomes
from ctrlalign.testing import CONTROLLERS, SPACES, SYSTEMS, ControllerContract, make_linear

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.py"))
SLOW = {"align_smollm2", "choose_parameters", "learning_controllers", "custom_engine"}  # fast_rollouts has its own slow test below


def load(name: str):
    return importlib.import_module(f"examples.{name}")


def test_every_example_has_main_and_out_option():
    assert EXAMPLES, "no examples found"
    for name in EXAMPLES:
        src = (ROOT / "examples" / f"{name}.py").read_text()
        assert "def main(" in src and "--out" in src and '__name__ == "__main__"' in src, name
    assert set(EXAMPLES) >= SLOW | {"toy_gaussian", "swap_controllers", "custom_components", "fast_rollouts",
                                    "custom_selection"}


def test_toy_gaussian(tmp_path):
    res = load("toy_gaussian").main(tmp_path, num_samples=1000, num_iterations=3)
    assert abs(res["J_star"] + 0.5 * res["F"]) < 1e-9
    assert res["errors"][-1] < 0.25 * res["errors"][0]  # AISP moved its mean to μ*
    assert (tmp_path / "toy_gaussian.png").stat().st_size > 1000


def test_swap_controllers(tmp_path):
    res = load("swap_controllers").main(tmp_path, num_samples=32, num_iterations=3)
    assert len(res) == 7
    plain, prior = res["BoN (plain, σ=0)"], res["BoN (prior p)"]
    assert plain["kl"] == prior["kl"] == 0.0
    assert (tmp_path / "swap_controllers.png").stat().st_size > 1000


def test_custom_components():
    rows = load("custom_components").main(num_samples=8, num_iterations=2)
    assert set(rows) == {"greedy", "aisp", "bon"}
    assert all(len(v) == 4 for v in rows.values())


# --- the Extending page's claim: a new controller and a new system pass the contract -----------
def _custom():
    return load("custom_components")


def _greedy(n, k):
    return _custom().GreedyMean(num_samples=n, num_iterations=k, sigma=0.7, step_size=0.5)


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("name", ["greedy"])
class TestGreedyMeanContract(ControllerContract):
    """The custom controller on the built-in toy systems."""

    controllers = {"greedy": _greedy}


@pytest.fixture
def greedy_registered():
    from ctrlalign.controllers import CONTROLLERS, register_controller

    cls = register_controller(_custom().GreedyMean)
    yield cls
    del CONTROLLERS[cls.name]


def test_a_new_controller_is_one_file_plus_one_registration(greedy_registered):
    """After ``register_controller(GreedyMean)`` (and no other change) the run config, the bench
    config and the command line take it, with its declared option checked."""
    cfg = RunConfig(prompts=["x"], controller={"name": "greedy", "step_size": 0.25, "num_samples": 4})
    built = cfg.controller.build()
    assert isinstance(built, greedy_registered) and (built.step_size, built.num_samples) == (0.25, 4)
    args = build_parser().parse_args(["align", "x", "--controller", "greedy", "--step-size", "0.75"])
    assert align_config(args).controller.build().step_size == 0.75
    with pytest.raises(ValueError, match=r"step_size \(β\) must be a number in \(0, 1\], got 0"):
        RunConfig(prompts=["x"], controller={"name": "greedy", "step_size": 0})
    bench = BenchConfig(reward="sentiment", budgets=[4], controllers=[
        {"label": "g", "name": "greedy", "num_samples": 2, "step_size": 0.5}])
    assert isinstance(bench.controllers[0].build(), greedy_registered)


@pytest.mark.parametrize("system", ["squashed"])
@pytest.mark.parametrize("space", ["per-token", "shared"])
@pytest.mark.parametrize("name", ["greedy", "aisp", "bon_prior", "softmax", "cem"])
class TestSquashedLinearContract(ControllerContract):
    """Built-in controllers and the custom one on the custom Dynamics + Reward."""

    controllers = {**CONTROLLERS, "greedy": _greedy}
    systems = {"squashed": lambda: _custom().make_system()}


def test_custom_dynamics_uncontrolled_and_shape_errors():
    dyn, reward, prompts = _custom().make_system(noise=0.0)
    ctx = dyn.prepare(prompts)
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    out = dyn.rollout(ctx, None, gens, 3)  # controls=None: the uncontrolled system, y = x
    assert torch.equal(out.values, ctx.unsqueeze(1).expand(-1, 3, -1))
    with pytest.raises(ValueError, match="controls must have shape"):
        dyn.rollout(ctx, torch.zeros(len(prompts), 3, 3, 5, dtype=torch.float64), gens, 3)
    assert reward(prompts, out).shape == (len(prompts), 3)


# --- the Extending page's selection: the last round's best, and the response really kept ------
def _kept_is_last_rounds_best(selection) -> bool:
    """Whether align with ``selection`` returns, per prompt, the last round's maximum reward,
    and that reward is the kept response's own (rescored)."""
    dynamics, reward, prompts = make_linear(0)
    ctrl = ca.AISP(num_samples=8, num_iterations=4, sigma=0.7, target_ess=0.5)
    res = ca.align(dynamics, reward, ctrl, prompts, space=ca.Shared(), selection=selection, seed=0)
    for d, sample in enumerate(res.responses):
        rescored = reward([prompts[d]], Outcomes(num_prompts=1, num_samples=1, values=sample.value.view(1, 1, -1)))
        assert float(rescored) == float(res.rewards[d])  # the reported reward is the kept response's
    return torch.equal(res.rewards, res.trace[-1].diagnostics.max_reward)


def test_custom_selection_keeps_the_last_rounds_best(capsys):
    mod = load("custom_selection")
    assert _kept_is_last_rounds_best(mod.LastRoundBest())
    assert not _kept_is_last_rounds_best(ca.BestSoFar())  # power: best-so-far differs on this system
    capsys.readouterr()
    rows = mod.main()
    assert rows["last-round"]["rewards"] == rows["last-round"]["last_round_max"]
    # the Extending page shows this run's output (python scripts/docs_outputs.py custom_selection)
    assert capsys.readouterr().out == (ROOT / "docs" / "snippets" / "custom_selection_output.txt").read_text()


# --- the Extending page's engine: registered by name, the engine checks, exact decode counts ----
@pytest.fixture(scope="module")
def counting_lms():
    load("custom_engine")  # registers "counting"
    model, tok = make_model("llama"), make_tokenizer()
    cfg = ca.SamplingConfig(max_new_tokens=6)
    return {"counting": ca.CausalLM(model, tok, sampling=cfg, engine="counting"),
            "eager": ca.CausalLM(model, tok, sampling=cfg, engine="eager")}


@pytest.mark.usefixtures("one_thread")  # bitwise row comparisons: one BLAS thread, as in test_stepwise
def test_custom_engine_passes_the_engine_checks(counting_lms):
    """The engine properties of ``test_stepwise.py`` (each with its power check there), run on
    the counting engine."""
    lms = counting_lms
    assert type(lms["counting"].engine).__name__ == "CountingEngine"
    stepwise.check_engine(lms, "counting")


def test_custom_engine_counts_k_T_decode_steps_and_equals_eager(counting_lms):

    lm, eager = counting_lms["counting"], counting_lms["eager"]
    D, n, k, T = 3, 4, 3, lm.max_horizon
    reward = ca.LexiconSentiment()
    ctrl = ca.AISP(num_samples=n, num_iterations=k, sigma=0.5, target_ess=0.5)
    steps, tokens = lm.engine.decode_steps, lm.engine.row_tokens
    res = ca.align(lm, reward, ctrl, PROMPTS[:D], space=ca.Shared(), seed=0)
    assert lm.engine.decode_steps - steps == k * T  # one rollout of T tokens per round
    assert lm.engine.row_tokens - tokens == k * T * D * n
    ref = ca.align(eager, reward, ctrl, PROMPTS[:D], space=ca.Shared(), seed=0)
    assert res.texts == ref.texts and torch.equal(res.rewards, ref.rewards)
    out = load("custom_engine").main(model=lm.model, tokenizer=lm.tokenizer, quick=True)
    assert all(r["decode_steps"] == out["k"] * out["T"] for r in out["runs"].values())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_slow_examples_on_default_model(name, tmp_path):
    res = load(name).main(tmp_path, quick=True)
    assert res


@pytest.mark.slow
def test_fast_rollouts_static_engine_on_default_model(tmp_path):
    """The static engine on the real SmolLM2: same first tokens as the eager engine (identical
    prefill and head), most rows identical, and AISP runs end to end through it."""
    res = load("fast_rollouts").main(tmp_path, quick=True)
    assert res["first_token_agreement"] == 1.0
    assert res["token_agreement"] > 0.8
    assert res["static"]["tokens_per_s"] > 0 and res["eager"]["tokens_per_s"] > 0
    assert len(res["aisp_rewards"]) == 2 and all(-1 <= r <= 1 for r in res["aisp_rewards"])
    assert (tmp_path / "fast_rollouts.png").stat().st_size > 1000


def test_closing_the_loop():
    """The tutorial's toy: every controller's budget, counted by wrappers; with 4 particles SMC
    decodes exactly Best-of-4's tokens (a fixed checkpoint grid, no early stop)."""
    rows = load("closing_the_loop").main(sizes=(2, 4), seeds=2, num_prompts=6)
    assert rows["SMC n=4"]["tokens"] == rows["Best-of-4"]["tokens"] == 24
    assert rows["Best-of-4"]["prefix_calls"] == 0 and rows["SMC n=4"]["prefix_calls"] > 0
    assert rows["SR n0=8"]["full_calls"] == 2
    # open-loop AISP: n·k rollouts of T = 6 tokens, n·k full calls, no prefix calls
    assert rows["AISP n=4 k=4"]["tokens"] == 4 * 4 * 6 and rows["AISP n=4 k=4"]["full_calls"] == 16
    assert rows["AISP n=4 k=4"]["prefix_calls"] == 0
