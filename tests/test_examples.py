"""Every example in ``examples/`` runs (the tutorials' code), and the Extending example's
components pass the controller contract.

The toy examples run here with small settings (a few seconds each); the ones that load the
real default model (SmolLM2) are marked slow.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from ctrlalign.testing import CONTROLLERS, SPACES, SYSTEMS, ControllerContract

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.py"))
SLOW = {"align_smollm2", "choose_parameters", "learning_controllers"}  # fast_rollouts has its own slow test below


def load(name: str):
    return importlib.import_module(f"examples.{name}")


def test_every_example_has_main_and_out_option():
    assert EXAMPLES, "no examples found"
    for name in EXAMPLES:
        src = (ROOT / "examples" / f"{name}.py").read_text()
        assert "def main(" in src and "--out" in src and '__name__ == "__main__"' in src, name
    assert set(EXAMPLES) >= SLOW | {"toy_gaussian", "swap_controllers", "custom_components", "fast_rollouts"}


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
    """The tutorial's toy: every controller reports its budget; with 4 particles SMC decodes
    exactly Best-of-4's tokens (a fixed checkpoint grid, no early stop)."""
    rows = load("closing_the_loop").main(sizes=(2, 4), seeds=2, num_prompts=6)
    assert rows["SMC n=4"]["tokens"] == rows["Best-of-4"]["tokens"] == 24
    assert rows["Best-of-4"]["prefix_calls"] == 0 and rows["SMC n=4"]["prefix_calls"] > 0
    assert rows["SR n0=8"]["full_calls"] == 2
