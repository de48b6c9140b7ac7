"""Run configs (pydantic), prompt sets and the results file format."""

from __future__ import annotations

import json

import pytest

from ctrlalign.build import build_reward
from ctrlalign.config import RunConfig, config_hash, load_config
from ctrlalign.data import load_prompts, mt_bench
from ctrlalign.store import read_results


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_minimal_config_gets_documented_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "c.yaml", "prompts: [hello]\n"))
    assert cfg.model.name == "default" and cfg.controller.name == "aisp"
    assert [t.name for t in cfg.reward] == ["sentiment"]
    ctrl = cfg.controller.build()
    assert ctrl.num_samples == 8 and ctrl.num_iterations == 4


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("prompts: [a]\ncontroler: {}\n", "controler: unknown key"),
        ("prompts: [a]\ncontroller: {sigma: -1}\n", "controller.sigma: sigma (σ) must be a number > 0, got -1"),
        ("prompts: [a]\ncontroller: {num_samples: 0}\n", "controller.num_samples"),
        ("prompts: [a]\ncontroller: {name: foo}\n", "controller.name"),
        ("prompts: [a]\nmodel: {max_new_tokens: 0}\n", "model.max_new_tokens"),
        ("prompts: [a]\nmodel: {dtype: float64}\n", "model.dtype"),
        ("prompts: [a]\nreward: [{name: sentimnt}]\n", "reward.0.name"),
        ("prompts: [a]\nrun: {batch_prompts: 0}\n", "run.batch_prompts"),
        ("prompts: [a]\nrun: {outptu: x}\n", "run.outptu: unknown key"),
        ("model: {}\n", "prompts: Field required"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, fragment):
    with pytest.raises(ValueError) as exc:
        load_config(write(tmp_path, "c.yaml", text))
    assert fragment in str(exc.value)


def test_field_that_does_not_apply_to_the_controller(tmp_path):
    with pytest.raises(ValueError, match=r"controller.alpha does not apply to controller 'bon'"):
        load_config(write(tmp_path, "c.yaml", "prompts: [a]\ncontroller: {name: bon, alpha: 0.5}\n"))


def test_controller_range_errors_come_from_the_declaration(tmp_path):
    with pytest.raises(ValueError, match=r"controller.sigma: sigma \(σ\) must be a number > 0, got 0"):
        load_config(write(tmp_path, "c.yaml", "prompts: [a]\ncontroller: {name: aisp, sigma: 0}\n"))


def test_json_and_toml_configs(tmp_path):
    a = load_config(write(tmp_path, "c.json", json.dumps({"prompts": ["x"], "controller": {"name": "cem"}})))
    b = load_config(write(tmp_path, "c.toml", 'prompts = ["x"]\n[controller]\nname = "cem"\n'))
    assert a == b and config_hash(a) == config_hash(b)


def test_config_hash_ignores_output_and_batching_but_not_hyperparameters():
    base = RunConfig(prompts=["x"])
    moved = RunConfig(prompts=["x"], run={"output": "elsewhere.jsonl", "batch_prompts": 16})
    changed = RunConfig(prompts=["x"], controller={"sigma": 0.5})
    assert config_hash(base) == config_hash(moved)
    assert config_hash(base) != config_hash(changed)


def test_mt_bench_loads_from_its_package():
    items = mt_bench()
    assert len(items) == 80
    assert len({it.id for it in items}) == 80
    assert sum(it.reference is not None for it in items) >= 20
    assert all(it.text.strip() for it in items)


def test_prompt_files(tmp_path):
    txt = write(tmp_path, "p.txt", "first\n\nsecond\n")
    assert [it.text for it in load_prompts(txt)] == ["first", "second"]
    jl = write(tmp_path, "p.jsonl", '{"id": "a", "prompt": "x", "reference": "y"}\n"plain"\n')
    items = load_prompts(jl)
    assert items[0].id == "a" and items[0].reference == "y" and items[1].text == "plain"
    bad = write(tmp_path, "b.jsonl", '{"prompt": "x"}\n{oops\n')
    with pytest.raises(ValueError, match=r"b.jsonl:2: not valid JSON"):
        load_prompts(bad)
    dup = write(tmp_path, "d.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        load_prompts(dup)
    with pytest.raises(ValueError, match="neither a packaged set"):
        load_prompts("no-such-set")


def test_partial_last_line_is_dropped_and_repaired(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "resp')
    assert [r["id"] for r in read_results(p)] == ["a", "b"]
    read_results(p, repair=True)
    assert p.read_text() == '{"id": "a"}\n{"id": "b"}\n'


def test_registered_rewards_are_accepted_by_configs():
    import ctrlalign as ca
    from ctrlalign.rewards import register_reward
    from ctrlalign.rewards.registry import REWARDS

    class Length(ca.Reward):
        name = "length"

        def __call__(self, prompts, outcomes):
            import torch

            return torch.tensor([[float(len(t)) for t in row] for row in outcomes.texts])

    with pytest.raises(ValueError, match=r"unknown reward 'length'; registered rewards: classifier, embedding"):
        RunConfig(prompts=["x"], reward=[{"name": "length"}])
    register_reward("length", Length)
    try:
        cfg = RunConfig(prompts=["x"], reward=[{"name": "length", "weight": 2.0}, "sentiment"])
        assert build_reward(cfg.reward).name.startswith("2*length")
    finally:
        REWARDS.pop("length")
