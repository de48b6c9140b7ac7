"""Closed-loop controllers everywhere users look: the command line (end to end on a tiny random
model), run configs (round trips, the resumable run store), declarations and the refusals of
settings they cannot work in (exit 2, naming the value)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import test_reliability
import yaml
from conftest import make_model, make_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

import ctrlalign as ca
from ctrlalign.cli import align_config, build_parser, main
from ctrlalign.config import PRESETS, ControllerConfig, RunConfig, validate_config
from ctrlalign.controllers import CONTROLLERS
from ctrlalign.declare import describe
from ctrlalign.rewards import register_reward
from ctrlalign.rewards.sentiment import LexiconSentiment
from ctrlalign.store import read_results
from ctrlalign.testing import CountingDynamics

pytestmark = pytest.mark.usefixtures("one_thread")

CLOSED = ["smc", "speculative-rejection", "receding-horizon"]
#: small settings of each closed-loop controller for a 4-token response
FLAGS = {
    "smc": ["--num-particles", "3", "--block-size", "2", "--twist-target-ess", "0.5"],
    "speculative-rejection": ["-n", "4", "--schedule", "2:2"],
    "receding-horizon": ["--inner", "bon", "-n", "2", "-k", "1", "--sigma", "0", "--block-size", "2",
                         "--lookahead", "2"],
}


#: the tiny random Llama saved as a model folder (the module-scoped fixture of test_reliability)
tiny = test_reliability.tiny


def _align(tiny, name, *extra):
    return ["align", "hello there", "--model", str(tiny), "--controller", name, "--max-new-tokens", "4", "-q",
            *FLAGS[name], *extra]


@pytest.mark.parametrize("name", CLOSED)
def test_align_runs_each_closed_loop_controller_end_to_end(tiny, name, tmp_path, capsys):
    out = tmp_path / "rec.json"
    assert main(_align(tiny, name, "--output", str(out))) == 0
    printed = capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["controller"] == name and rec["kind"] == "closed-loop"
    assert "checkpoint" in printed and "tokens decoded" in printed and rec["response"] in printed
    assert rec["tokens"] > 0 and rec["reward_calls"] > 0
    assert rec["trace"] and {"position", "rows", "ess", "temperature", "distinct"} <= set(rec["trace"][0])
    assert "base_reward" in rec
    if name == "smc":
        assert rec["reward_calls"] == 3 and rec["prefix_calls"] == 3  # checkpoint at 2 tokens, end at 4
        assert rec["tokens"] <= 3 * 4 and rec["log_normalizer"] is not None
    if name == "speculative-rejection":
        assert rec["prefix_calls"] == 4 and rec["reward_calls"] == 2
    if name == "receding-horizon":  # two windows of 2 rollouts, the first scored on its prefix
        assert rec["prefix_calls"] == 2 and rec["reward_calls"] == 2


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_end_to_end(tiny, preset, tmp_path):
    """``align --preset NAME`` runs each preset on the tiny model; a closed-loop preset's first
    checkpoint (token 8 of 10) continues with the rows its schedule says (regrowth: 32 again)."""
    out = tmp_path / "rec.json"
    assert main(["align", "hello there", "--model", str(tiny), "--preset", preset, "--max-new-tokens", "10", "-q",
                 "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    section = PRESETS[preset]["controller"]
    assert rec["controller"] == section["name"] and rec["response"] is not None
    if section["name"] == "speculative-rejection":
        (t, _, rows), *_ = ControllerConfig(**section).build().schedule_for(10)
        first = rec["trace"][0]
        assert (first["position"], first["rows"]) == (t, rows)
        assert rec["tokens"] <= section["num_samples"] * 8 + rows * 2


def test_align_runs_smc_with_sentence_checkpoints(tiny, tmp_path, capsys):
    """``--checkpoint-at sentences``: the run's checkpoints are the prompt's own (increasing, at
    most b = 2 apart, the last at T = 4); a bad rule exits 2 naming the allowed ones."""
    out = tmp_path / "rec.json"
    assert main(_align(tiny, "smc", "--checkpoint-at", "sentences", "--sentence-quorum", "0.5",
                       "--output", str(out))) == 0
    rec = json.loads(out.read_text())
    positions = [c["position"] for c in rec["trace"]]
    assert positions[-1] == 4 and all(0 < b - a <= 2 for a, b in zip([0, *positions], positions))
    capsys.readouterr()
    assert main(_align(tiny, "smc", "--checkpoint-at", "words")) == 2
    assert "checkpoint_at must be one of 'tokens', 'sentences', got 'words'" in capsys.readouterr().err


def test_align_prints_the_open_loop_budget_as_before(tiny, tmp_path, capsys):
    out = tmp_path / "rec.json"
    assert main(["align", "hi", "--model", str(tiny), "--controller", "bon", "-n", "2", "-k", "1", "--sigma", "0",
                 "--max-new-tokens", "3", "-q", "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["kind"] == "open-loop" and rec["prefix_calls"] == 0 and rec["reward_calls"] == 2
    assert 2 <= rec["tokens"] <= 2 * 3 and rec["trace"][0]["iteration"] == 1


def test_cli_solution_matches_the_python_api(tiny):
    """What ``align --controller smc`` keeps is what SMC(...).run keeps with the same seed."""
    args = build_parser().parse_args(_align(tiny, "smc", "--seed", "3"))
    cfg = align_config(args)
    smc = cfg.controller.build()
    assert smc.config()["num_particles"] == 3 and smc.twist_target_ess == 0.5
    lm = ca.CausalLM.from_pretrained(str(tiny), sampling=ca.SamplingConfig(max_new_tokens=4))
    direct = ca.SMC(num_particles=3, block_size=2, twist_target_ess=0.5).run(lm, LexiconSentiment(), ["hello there"],
                                                                              seed=3)
    from ctrlalign.data import PromptItem
    from ctrlalign.solve import solve_batch

    rec = solve_batch(lm, LexiconSentiment(), smc, [PromptItem(id="p0", text="hello there")], 3, base=False)[0]
    assert rec["response"] == direct.texts[0] and rec["reward"] == float(direct.rewards[0])
    assert rec["tokens"] == int(direct.tokens[0]) and rec["trace"] == [c.summary(0) for c in direct.trace]


@pytest.mark.parametrize("section", [
    {"name": "smc", "num_particles": 4, "block_size": 2, "twist_target_ess": 0.5, "scheme": "residual"},
    {"name": "speculative-rejection", "num_samples": 8, "schedule": [[2, 4], [3, 2]]},
    {"name": "speculative-rejection", "num_samples": 8, "schedule": [[2, 2, 8], [3, 0.25, 0.5]]},
    {"name": "receding-horizon", "block_size": 2, "lookahead": 3,
     "inner": {"name": "aisp", "num_samples": 2, "num_iterations": 2, "target_ess": 0.5}},
])
def test_config_sections_round_trip(section, tmp_path):
    cfg = validate_config({"prompts": ["x"], "controller": section})
    dumped = cfg.model_dump(mode="json")
    again = validate_config(json.loads(json.dumps(dumped)))
    assert again == cfg and again.model_dump(mode="json") == dumped
    built = cfg.controller.build()
    said = built.section()
    for key, value in section.items():  # what the section set, the controller holds (nested: what it set)
        assert ({k: said[key][k] for k in value} if isinstance(value, dict) else said[key]) == value, key
    assert validate_config({"prompts": ["x"], "controller": built.section()}).controller.build().section() == \
        built.section()
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"prompts": ["x"], "controller": section}))
    assert ca.config.load_config(path) == cfg


def test_receding_horizon_runs_in_the_run_space():
    cfg = validate_config({"prompts": ["x"], "controller": {"name": "receding-horizon", "inner": {"name": "bon"}},
                           "space": {"name": "subspace", "rank": 2}})
    rh = cfg.controller.build().with_space(cfg.space.build())
    assert rh.space.describe() == cfg.space.build().describe() and isinstance(rh.inner, ca.BestOfN)


BAD = [  # (argv after the prompt, exit code, fragments of the message)
    (["--controller", "smc", "--num-particles", "0"], 2, ["num_particles", "0", ">= 1"]),
    (["--controller", "smc", "--scheme", "bogus"], 2, ["scheme", "'bogus'", "systematic"]),
    (["--controller", "smc", "-n", "4"], 2, ["num_samples", "smc", "num_particles"]),
    (["--controller", "smc", "--space", "subspace"], 2, ["'smc'", "no control space", "'subspace'"]),
    (["--controller", "smc", "--greedy"], 2, ["'smc'", "greedy"]),
    (["--controller", "speculative-rejection", "--selection", "reservoir"], 2, ["controller.selection", "open-loop"]),
    (["--controller", "speculative-rejection", "--schedule", "4:2,2:1"], 2, ["schedule[1] position"]),
    (["--controller", "speculative-rejection", "--save-candidates", "c.jsonl"], 2, ["run.save_candidates"]),
    (["--controller", "speculative-rejection", "--schedule", "x"], 2, ["T:M"]),
    (["--controller", "speculative-rejection", "--schedule", "2:2:1:1"], 2, ["T:M:R"]),
    (["--controller", "speculative-rejection", "-n", "4", "--schedule", "2:2:5"], 2, ["r=5", "the 4 alive"]),
    (["--controller", "speculative-rejection", "--keep-fraction", "0"], 2, ["keep_fraction", "(0, 1]"]),
    (["--controller", "receding-horizon", "--inner", "bon", "--alpha", "0.5"], 2, ["alpha"]),
    (["--controller", "receding-horizon", "--inner", "smc"], 2, ["--inner", "'smc'"]),
    (["--controller", "receding-horizon", "--horizon", "4"], 2, ["horizon", "lookahead"]),
    (["--controller", "receding-horizon", "--lookahead", "0"], 2, ["lookahead", "0"]),
]


@pytest.mark.parametrize("argv,code,fragments", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_exits_2_naming_the_value_before_any_model_work(argv, code, fragments, capsys, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("ctrlalign.build.load_model", no_model)
    try:
        rc = main(["align", "hello", "--model", "nowhere", *argv])
    except SystemExit as exc:  # argparse's refusals (a bad choice or flag type)
        rc = exc.code
    assert rc == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)


def test_a_reward_without_prefix_scores_is_refused_by_the_config():
    class NoPrefix(ca.Reward):
        name = "no-prefix-test"
        scores_prefixes = False

        def __call__(self, prompts, outcomes):  # pragma: no cover - never called
            raise AssertionError

    register_reward("no-prefix-test", NoPrefix)
    try:
        with pytest.raises(ca.ConfigError, match="'no-prefix-test' cannot score prefixes"):
            validate_config({"prompts": ["x"], "controller": {"name": "smc"}, "reward": "no-prefix-test"})
        validate_config({"prompts": ["x"], "controller": {"name": "aisp"}, "reward": "no-prefix-test"})
    finally:
        from ctrlalign.rewards.registry import REWARDS

        del REWARDS["no-prefix-test"]


def test_run_store_records_the_closed_loop_budget_and_resumes(tiny, tmp_path):
    out = tmp_path / "runs.jsonl"
    prompts = ["a b", "c d", "e f"]
    data = {"prompts": prompts, "model": {"name": str(tiny), "max_new_tokens": 4},
            "controller": {"name": "speculative-rejection", "num_samples": 4, "schedule": [[2, 2]]},
            "run": {"output": str(out), "batch_prompts": 2, "base": False}, "limit": 2}
    ca.runner.run(validate_config(data), progress=False, log=lambda s: None)
    first = read_results(out)
    assert [r["prompt"] for r in first] == prompts[:2]
    lm = ca.CausalLM.from_pretrained(str(tiny), sampling=ca.SamplingConfig(max_new_tokens=4))
    for r in first:  # what the store holds is the Python API's run of that prompt (batch-invariant)
        dyn = CountingDynamics(lm)
        direct = ca.SpeculativeRejection(num_samples=4, schedule=[(2, 2)]).run(dyn, LexiconSentiment(), [r["prompt"]])
        assert r["controller"] == "speculative-rejection" and r["kind"] == "closed-loop"
        assert r["prefix_calls"] == 4 and r["reward_calls"] == 2
        assert r["tokens"] == int(dyn.tokens[0]) == int(direct.tokens[0]) <= 4 * 2 + 2 * 2
        assert r["response"] == direct.texts[0] and r["trace"] == [c.summary(0) for c in direct.trace]
    data["limit"] = 3
    ca.runner.run(validate_config(data), progress=False, log=lambda s: None)
    again = read_results(out)
    assert len(again) == 3 and again[:2] == first


def test_doc_tables_cover_every_registered_controller():
    """The generated command-line page lists every controller's declared options in a table."""
    pytest.importorskip("mkdocs")
    from test_docs import _hooks

    page = _hooks()._cli_page()
    for name, cls in CONTROLLERS.items():
        assert f"### `{name}`" in page, name
        assert describe(cls.spec()) in page, name
    for name in CLOSED:
        assert name in page


def test_declared_closed_loop_controllers_are_immutable_and_replace_validates():
    smc = ca.SMC(num_particles=4)
    with pytest.raises(AttributeError, match="replace"):
        smc.num_particles = 8
    assert smc.replace(num_particles=8).num_particles == 8 and smc.num_particles == 4
    with pytest.raises(ca.ConfigError, match="num_particles"):
        smc.replace(num_particles=0)
    rh = ca.RecedingHorizon(ca.AISP(num_samples=2), block_size=2, space=ca.Subspace(rank=2))
    assert rh.replace(block_size=3).space is rh.space  # the bound space is kept
    assert RunConfig(prompts=["x"], controller=rh.section()).controller.build().section() == rh.section()


# --------------------------------------------------------------------------------------------
# the bench: closed-loop entries, budgets counted by wrappers, the matched read-out


def test_bench_reads_closed_loop_controllers_out_at_matched_budgets(tmp_path, capsys):
    from ctrlalign.bench import BenchConfig, run_bench
    from ctrlalign.bench.matched import log_interp, matched_readout
    from ctrlalign.bench.plots import write_figures
    from ctrlalign.bench.report import markdown_report
    from ctrlalign.rewards import CountingReward
    from ctrlalign.testing import CountingDynamics

    lm = ca.CausalLM(make_model("llama"), make_tokenizer(), sampling=ca.SamplingConfig(max_new_tokens=4))
    prompts = ["why is the sky blue", "tell me a story about a happy cat"]
    cfg = BenchConfig.model_validate(dict(
        name="tiny-closed", prompts=prompts, reward=[{"name": "sentiment"}], budgets=[2, 4, 8], seeds=[0, 1],
        batch_prompts=2, coherence=False, output=str(tmp_path / "c.jsonl"), figures=str(tmp_path / "img"),
        controllers=[
            {"label": "bon", "name": "bon", "sigma": 0, "num_samples": 2},
            {"label": "smc", "name": "smc", "num_particles": 4, "block_size": 2, "twist_target_ess": 0.5},
            {"label": "sr", "name": "speculative-rejection", "num_samples": 6, "schedule": [[2, 3]]},
            {"label": "rh", "name": "receding-horizon", "block_size": 2, "lookahead": 2,
             "inner": {"name": "bon", "num_samples": 2, "num_iterations": 1, "sigma": 0}},
        ], baselines=["bon"]))
    reward = ca.CallableReward(lambda p, s: float(len(set(s.text.split()))))
    res = run_bench(cfg, dynamics=lm, reward=reward, judge=False, log=None)
    recs = {(r["controller"], r["seed"], r["prompt_id"], r["budget"]): r for r in res.records}
    for seed in (0, 1):  # exact budgets: each run again under the wrappers, one prompt at a time
        for j, p in enumerate(prompts):
            for label, ctrl in (("smc", ca.SMC(num_particles=4, block_size=2, twist_target_ess=0.5)),
                                ("sr", ca.SpeculativeRejection(num_samples=6, schedule=[(2, 3)]))):
                dyn, counting = CountingDynamics(lm), CountingReward(reward)
                direct = ctrl.run(dyn, counting, prompts, seed=seed)
                rec = next(r for k, r in recs.items() if k[:3] == (label, seed, f"p{j}"))
                assert rec["tokens"] == int(dyn.tokens[j]) == int(direct.tokens[j])
                assert rec["reward_calls"] == counting.calls[CountingReward.key(p)] == rec["budget"]
                assert rec["prefix_calls"] == counting.prefix_calls[CountingReward.key(p)] > 0
                assert rec["reward"] == float(direct.rewards[j]) and rec["text"] == direct.texts[j]
            for N in (2, 4, 8):  # Best-of-N: N full calls, N responses' tokens
                dyn = CountingDynamics(lm)
                out = ca.align(dyn, reward, ca.BestOfN(num_samples=2, num_iterations=N // 2, sigma=0.0), prompts,
                               seed=seed)
                assert recs[("bon", seed, f"p{j}", N)]["tokens"] == int(dyn.tokens[j])
                assert recs[("bon", seed, f"p{j}", N)]["reward"] == float(out.rewards[j])
                assert recs[("bon", seed, f"p{j}", N)]["prefix_calls"] == 0
    assert {r["budget"] for r in res.select("sr")} == {3} and {r["budget"] for r in res.select("smc")} == {4}
    # the matched read-out: Δ = reward − Best-of-N's reward interpolated in log tokens, paired
    rows = {(r["controller"], r["axis"]): r for a in ("tokens", "calls")
            for r in matched_readout(res.records, "bon", a, method="t")}
    sr = [r for r in res.records if r["controller"] == "sr"]
    deltas = []
    for r in sr:
        curve = sorted((b["tokens"], b["reward"]) for b in res.records
                       if b["controller"] == "bon" and (b["seed"], b["prompt_id"]) == (r["seed"], r["prompt_id"]))
        deltas.append(r["reward"] - log_interp([c[0] for c in curve], [c[1] for c in curve], r["tokens"])[0])
    assert rows[("sr", "tokens")]["delta"]["mean"] == pytest.approx(sum(deltas) / len(deltas))
    assert rows[("sr", "tokens")]["n"] == 4 and rows[("bon", "tokens")]["delta"]["mean"] == pytest.approx(0.0)
    assert rows[("sr", "calls")]["spent"] == 6 + 3  # 6 prefixes scored, 3 finished
    text = markdown_report(res)
    assert "Δ at matched tokens" in text and "Δ at matched reward calls" in text
    for label in ("`smc`", "`sr`", "`rh`"):
        assert label in text.split("Matched budgets")[1]
    paths = write_figures(res, cfg.figures, prefix="tiny-closed")
    assert any(p.name == "tiny-closed-matched.png" and p.stat().st_size > 1000 for p in paths)
    assert "Reward–KL frontier" in text and "| smc |" not in text.split("Reward–KL frontier")[1].split("\n\n")[1]
    checkpoints = next(t for t in res.traces if t["controller"] == "smc")
    assert checkpoints["kind"] == "closed-loop" and checkpoints["trace"][0]["position"] == 2


def test_log_interp_is_linear_in_log_budget_and_flags_the_outside():
    from ctrlalign.bench.matched import log_interp

    assert log_interp([2, 8], [0.0, 1.0], 4) == (pytest.approx(0.5), True)
    assert log_interp([2, 8], [0.0, 1.0], 2) == (0.0, True)
    assert log_interp([2, 8], [0.0, 1.0], 16) == (1.0, False)  # clamped, flagged
    assert log_interp([2, 8], [0.0, 1.0], 5)[0] != pytest.approx(0.5)  # power: not linear in x


def test_bench_refuses_a_closed_loop_entry_it_cannot_run():
    from ctrlalign.bench import BenchConfig

    with pytest.raises(ValueError, match="'smc'.*no control space"):
        BenchConfig.model_validate(dict(prompts=["x"], reward="sentiment", controllers=[
            {"name": "smc", "space": {"name": "subspace", "rank": 2}}]))
    with pytest.raises(ValueError, match="greedy"):
        BenchConfig.model_validate(dict(prompts=["x"], reward="sentiment", controllers=[
            {"name": "speculative-rejection", "greedy": True}]))


@pytest.mark.parametrize("name", CLOSED)
def test_closed_loop_hyperparameters_are_immutable_after_construction(name):
    """As the open-loop controllers' (test_controllers.py): assigning a declared hyperparameter
    raises, ``replace`` validates a copy, the constructors' setter is closed afterwards."""
    ctrl = CONTROLLERS[name]()
    for h in ctrl.spec().hyperparameters:
        with pytest.raises(AttributeError, match=f"{h.name}.*replace"):
            setattr(ctrl, h.name, getattr(ctrl, h.name))
        with pytest.raises(AttributeError, match=f"{h.name}.*after construction.*replace"):
            ctrl.set_hyperparameter(h.name, getattr(ctrl, h.name))
    other = ctrl.replace(block_size=3)
    assert type(other) is type(ctrl) and other.block_size == 3 and ctrl.block_size == 8
    with pytest.raises(ca.ConfigError, match="block_size"):
        ctrl.replace(block_size=0)
    with pytest.raises(ca.ConfigError, match="no hyperparameters \\['nope'\\]"):
        ctrl.replace(nope=1)


@given(st.lists(st.tuples(st.integers(1, 4096), st.floats(-5, 5)), min_size=2, max_size=8, unique_by=lambda p: p[0]))
@settings(max_examples=60, deadline=None)
def test_log_interp_passes_through_the_points_and_halves_at_the_geometric_mean(points):
    """The reference curve passes through Best-of-N's own points (so Best-of-N read out against
    itself gains exactly 0) and is linear in log budget: at √(x_i·x_{i+1}) it is the mean of the
    two rewards. A curve linear in x instead fails the second property (the power check)."""
    from ctrlalign.bench.matched import log_interp

    points.sort()
    xs, ys = [float(p[0]) for p in points], [p[1] for p in points]
    for x, y in zip(xs, ys):
        assert log_interp(xs, ys, x) == (pytest.approx(y, abs=1e-9), True)
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        mid = math.sqrt(x0 * x1)
        assert log_interp(xs, ys, mid)[0] == pytest.approx((y0 + y1) / 2, abs=1e-9)
        wrong = float(np.interp(mid, xs, ys))  # linear in x: not the same budget reading
        if x1 > 2 * x0 and abs(y1 - y0) > 1e-3:
            assert wrong != pytest.approx((y0 + y1) / 2, abs=1e-9)


def test_cli_bench_with_a_closed_loop_entry_writes_the_matched_table(tiny, tmp_path, capsys):
    cfg = {"name": "cli-closed", "prompts": ["why is the sky blue", "hello there"], "reward": "sentiment",
           "model": {"name": str(tiny), "max_new_tokens": 4}, "budgets": [2, 4], "seeds": [0], "coherence": False,
           "output": str(tmp_path / "b.jsonl"), "figures": str(tmp_path / "img"),
           "controllers": [{"label": "bon", "name": "bon", "sigma": 0, "num_samples": 2},
                           {"label": "sr", "name": "speculative-rejection", "num_samples": 4, "schedule": [[2, 2]]}]}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["bench", str(path), "-q"]) == 0
    tables = (tmp_path / "b.md").read_text()
    assert "Δ at matched tokens" in tables and "`sr`" in tables.split("Matched budgets")[1]
    assert (tmp_path / "img" / "cli-closed-matched.png").stat().st_size > 1000
    records = [r for line in read_results(tmp_path / "b.jsonl") for r in line.get("records", [])]
    sr = [r for r in records if r["controller"] == "sr"]
    assert len(sr) == 2 and all(r["prefix_calls"] == 4 and r["reward_calls"] == 2 == r["budget"] for r in sr)
    assert all(0 < r["tokens"] <= 4 * 2 + 2 * 2 for r in sr)
    capsys.readouterr()
    cfg["controllers"][1]["space"] = {"name": "subspace", "rank": 2}  # refused before any model work
    path.write_text(yaml.safe_dump(cfg))
    assert main(["bench", str(path), "-q", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "'sr'" in err and "no control space" in err and "'subspace'" in err
