"""Matched-budget benchmark: metrics against hand-computed values, the harness on a toy system
(and a tiny random language model when CausalLM is available), figures, tables, the CLI."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

import ctrlalign as ca
from ctrlalign.bench import (
    BenchConfig,
    BenchResult,
    CountingReward,
    diversity,
    load_bench_config,
    run_bench,
    scales,
    stats,
)
from ctrlalign.bench.plots import parse_sweep_label, write_figures
from ctrlalign.bench.report import comparison_table, markdown_report, results_table, sweep_table
from ctrlalign.bench.verdict import regime_goal

# ------------------------------------------------------------------------------------ metrics


def test_distinct_n_hand_computed():
    # "a b a b": bigrams ab, ba, ab -> 2 unique of 3; trigrams aba, bab -> 2/2; 4-gram abab -> 1/1
    assert diversity.distinct_n("a b a b", 2) == pytest.approx(2 / 3)
    assert diversity.distinct_n("a b a b", 3) == 1.0
    assert diversity.distinct_n("a b a b", 4) == 1.0
    assert diversity.diversity("a b a b") == pytest.approx(2 / 3)
    # pooled over texts: ab, bc, ab, bd -> 3 unique of 4
    assert diversity.distinct_n(["a b c", "A B d"], 2) == pytest.approx(3 / 4)  # lower-cased
    # "x x x x x": bigrams 4 (1 unique), trigrams 3 (1), 4-grams 2 (1) -> 1/4 * 1/3 * 1/2
    assert diversity.diversity("x x x x x") == pytest.approx(1 / 24)
    # too short for any bigram
    assert diversity.distinct_n("word", 2) == 0.0
    assert diversity.diversity("one two") == 0.0  # no trigrams
    assert diversity.ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    with pytest.raises(ValueError):
        diversity.ngrams(["a"], 0)


def test_t_interval_matches_scipy():
    x = np.array([0.3, 0.5, 0.1, 0.9, 0.4, 0.45, 0.62])
    ci = stats.mean_ci(x, method="t")
    lo, hi = sps.t.interval(0.95, df=len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert ci.mean == pytest.approx(x.mean())
    assert (ci.low, ci.high) == (pytest.approx(lo), pytest.approx(hi))
    assert ci.n == 7 and ci.method == "t"
    one = stats.mean_ci([2.0])
    assert one.low == one.high == 2.0


def test_cluster_t_interval_is_over_cluster_means():
    x = [1.0, 2.0, 3.0, 5.0, 4.0, 8.0]
    clusters = ["a", "a", "b", "b", "c", "c"]
    means = np.array([1.5, 4.0, 6.0])
    ci = stats.mean_ci(x, method="t", clusters=clusters)
    lo, hi = sps.t.interval(0.95, df=2, loc=means.mean(), scale=sps.sem(means))
    assert (ci.low, ci.high) == (pytest.approx(lo), pytest.approx(hi))
    assert ci.mean == pytest.approx(np.mean(x))


def test_bootstrap_close_to_t_and_deterministic():
    rng = np.random.default_rng(1)
    x = rng.normal(0.4, 1.0, size=400)
    b = stats.mean_ci(x, method="bootstrap", seed=3)
    t = stats.mean_ci(x, method="t")
    assert b == stats.mean_ci(x, method="bootstrap", seed=3)
    assert b.low == pytest.approx(t.low, abs=0.03) and b.high == pytest.approx(t.high, abs=0.03)
    # clusters of identical values: the cluster bootstrap is as wide as over the cluster means
    xc = np.repeat(rng.normal(size=50), 3)
    cl = np.repeat(np.arange(50), 3)
    wide = stats.mean_ci(xc, method="bootstrap", clusters=cl)
    naive = stats.mean_ci(xc, method="bootstrap")
    assert (wide.high - wide.low) > 1.4 * (naive.high - naive.low)
    with pytest.raises(ValueError):
        stats.mean_ci([1.0, float("nan")])


def test_paired_difference_ci():
    a = [1.0, 2.0, 3.0, 4.5]
    b = [0.5, 2.0, 2.0, 4.0]
    ci = stats.paired_diff_ci(a, b, method="t")
    d = np.subtract(a, b)
    lo, hi = sps.t.interval(0.95, df=3, loc=d.mean(), scale=sps.sem(d))
    assert ci.mean == pytest.approx(0.5) and (ci.low, ci.high) == (pytest.approx(lo), pytest.approx(hi))
    assert not ci.excludes_zero
    assert stats.paired_diff_ci([1.0, 2.0, 3.0], [0.0, 1.1, 1.9]).excludes_zero
    with pytest.raises(ValueError):
        stats.paired_diff_ci([1.0], [1.0, 2.0])


def test_token_kl_and_control_kl():
    lp = [-1.0, -2.0, -3.0]
    blp = [-1.5, -1.0, -3.0]
    assert scales.token_kl(lp, blp) == pytest.approx(0.5 - 1.0 + 0.0)
    assert scales.token_kl(lp, blp, length=1) == pytest.approx(0.5)
    assert scales.token_kl(torch.tensor(lp), torch.tensor(lp)) == 0.0
    with pytest.raises(ValueError):
        scales.token_kl([0.0], [0.0, 1.0])
    U = torch.tensor([[1.0, 2.0], [0.0, 2.0]])  # Σ‖u_t‖² = 9
    assert scales.control_kl(U, 0.5) == pytest.approx(9 / (2 * 0.25))
    assert scales.control_kl(U, 0.0) == 0.0


def test_head_row_norm_and_logit_noise_scale():
    W = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0]])  # row norms 5, 1, 2
    assert scales.head_row_norm(W) == pytest.approx(2.0)
    assert scales.head_row_norm(W, "mean") == pytest.approx(8 / 3)
    assert scales.logit_noise_scale(0.5, 2.0) == pytest.approx(1.0)
    assert scales.logit_noise_scale(0.5, None) is None
    # σ·‖w‖ is the std of w·v for v ~ N(0, σ² I)
    g = torch.Generator().manual_seed(0)
    v = 0.5 * torch.randn(20000, 2, generator=g)
    assert float((v @ W[2]).std()) == pytest.approx(scales.logit_noise_scale(0.5, 2.0), rel=0.03)
    head = ca.SoftmaxHead(W.double(), torch.zeros(3, dtype=torch.float64), 2)
    assert scales.dynamics_row_norm(head) == pytest.approx(2.0)


# ------------------------------------------------------------------------------------ harness on a toy system

K, TAU, DIM = 3, 3, 2


def toy_system(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(K, DIM, generator=g, dtype=torch.float64)
    b = torch.randn(K, generator=g, dtype=torch.float64)
    E = torch.randn(K + 1, DIM, generator=g, dtype=torch.float64)
    dyn = ca.SoftmaxHead(W, b, TAU, embeddings=E)
    table = {s: float(torch.randn((), generator=g)) for s in itertools.product(range(K), repeat=TAU)}
    judge = {s: v + 0.5 * float(torch.randn((), generator=g)) for s, v in table.items()}
    prompts = [torch.randn(TAU, DIM, generator=g, dtype=torch.float64) for _ in range(3)]
    return dyn, ca.TableReward(table), ca.TableReward(judge), prompts


def toy_config(tmp_path, **kw):
    base = dict(
        name="toy", prompts=["unused"], reward=[{"name": "sentiment"}], budgets=[4, 8, 16], seeds=[0, 1],
        batch_prompts=2, coherence=False, output=str(tmp_path / "res.json"), figures=str(tmp_path / "img"),
        controllers=[
            {"label": "bon-plain", "name": "bon", "sigma": 0, "num_samples": 4},
            {"label": "bon-prior", "name": "bon", "sigma": 0.7, "num_samples": 4},
            {"label": "aisp", "name": "aisp", "sigma": 0.7, "temperature": 0.3, "alpha": 0.99, "num_samples": 4},
            {"name": "mppi", "sigma": 0.7, "temperature": 0.3, "num_samples": 4},
            {"name": "softmax", "sigma": 0.7, "temperature": 0.3, "num_samples": 4},
            {"name": "cem", "sigma": 0.7, "num_samples": 4},
        ],
        sweep={"sigma2": [0.1, 1.0], "temperature": [0.3], "alpha": [0.0, 0.99], "num_samples": 4},
        primary="aisp", baselines=["bon-plain", "bon-prior"],
    )
    base.update(kw)
    return BenchConfig.model_validate(base)


@pytest.fixture(scope="module")
def toy_result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    dyn, reward, judge, prompts = toy_system()
    outer = CountingReward(reward)  # counts every call the harness makes, across all runs
    cfg = toy_config(tmp)
    res = run_bench(cfg, dynamics=dyn, reward=outer, judge=judge, prompts=prompts, log=None)
    return res, cfg, outer, prompts, dyn, reward, tmp


def test_toy_bench_matched_budgets(toy_result):
    res, cfg, outer, prompts, *_ = toy_result
    entries = cfg.all_controllers()
    assert len(entries) == 6 + 4
    # every record used exactly N reward calls for its prompt
    assert all(r["reward_calls"] == r["budget"] for r in res.records)
    assert len(res.records) == len(entries) * len(cfg.budgets) * len(cfg.seeds) * len(prompts)
    # the outer counter saw exactly N_max per prompt per (controller, seed): nothing else was scored
    for p in prompts:
        assert outer.calls[CountingReward.key(p)] == len(entries) * len(cfg.seeds) * max(cfg.budgets)
    for row in res.summary:
        assert row["reward_calls_per_prompt"] == row["budget"]


def test_toy_bench_anytime_readout_equals_separate_runs(toy_result):
    """The result at N = n·i read off a longer run equals a run with k = i, for every controller."""
    res, cfg, _, prompts, dyn, reward, _ = toy_result
    for entry in cfg.all_controllers()[:6]:
        for N in (4, 8):
            ctrl = entry.build(N // entry.num_samples)
            for seed in cfg.seeds:
                out = ca.align(dyn, reward, ctrl, prompts, seed=seed)
                recs = {r["prompt_id"]: r for r in res.select(entry.key, N) if r["seed"] == seed}
                for d in range(len(prompts)):
                    r = recs[f"p{d}"]
                    assert r["reward"] == pytest.approx(float(out.rewards[d]), abs=1e-12)
                    assert r["value"] == out.responses[d].value.tolist()
                    assert r["control_kl"] == pytest.approx(float(ctrl.kl(out.state)[d]), abs=1e-9)


def test_toy_bench_metrics_present(toy_result):
    res, *_ = toy_result
    plain = res.select("bon-plain")
    assert all(r["token_kl"] == 0.0 and r["control_kl"] == 0.0 for r in plain)
    aisp = res.select("aisp", 16)
    assert all(r["mean_norm"] > 0 and r["control_kl"] > 0 for r in aisp)
    assert all(r.get("judge") is not None for r in res.records)
    assert res.meta["controllers"]["bon-prior"]["logit_noise_scale"] == pytest.approx(0.7 * res.meta["head_row_norm"])
    # AISP with one iteration is Best-of-n under the prior, draw for draw
    for a, b in zip(res.select("aisp", 4), res.select("bon-prior", 4)):
        assert a["reward"] == b["reward"] and a["value"] == b["value"]
    comp = [c for c in res.comparisons if c["controller"] == "aisp" and c["baseline"] == "bon-prior" and c["budget"] == 4]
    assert comp[0]["reward_diff"]["mean"] == 0.0
    assert len(res.traces) == len(res.runs) // 2 * 3 or len(res.traces) > 0
    assert all(len(t["trace"]) == 4 for t in res.traces)
    assert {"post_mean_norm", "ess"} <= set(res.traces[0]["trace"][0])


def test_toy_bench_figures_tables_and_json(toy_result, tmp_path):
    res, cfg, *_ = toy_result
    paths = write_figures(res, tmp_path / "img", prefix="toy", primary="aisp")
    names = {p.name for p in paths}
    assert {"toy-reward-vs-budget.png", "toy-iterations.png", "toy-heldout-vs-reward.png", "toy-sweep.png",
            "toy-frontier.png"} <= names
    for p in paths:
        assert p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"
    table = results_table(res)
    assert table.count("\n") == 1 + 6 * 3 and "reward [95% CI]" in table
    assert "aisp[s2" not in table
    assert sweep_table(res).count("\n") == 1 + 4
    assert "Δ reward" in comparison_table(res)
    report = markdown_report(res)
    assert "Goal" in report and "σ·‖w‖" in report and "ESS mean" in report
    from ctrlalign.bench.report import iteration_table

    assert iteration_table(res, "aisp").count("\n") == 1 + 4  # header, rule, k_max = 4 iterations
    # results JSON written by the run, and it round-trips
    loaded = BenchResult.load(cfg.output)
    assert loaded.summary == json.loads(json.dumps(res.summary))
    assert results_table(loaded) == table


def test_cli_report_only(toy_result, tmp_path, capsys):
    import yaml

    from ctrlalign.cli import main

    res, cfg, *_ = toy_result
    data = cfg.model_dump(mode="json")
    data["figures"] = str(tmp_path / "fig")
    data["tables"] = str(tmp_path / "t.md")
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["bench", str(path), "--report-only"]) == 0
    assert "reward [95% CI]" in (tmp_path / "t.md").read_text()
    assert (tmp_path / "fig" / "toy-reward-vs-budget.png").stat().st_size > 0
    assert "reward [95% CI]" in capsys.readouterr().out


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="multiples of num_samples"):
        toy_config(tmp_path, budgets=[6])
    with pytest.raises(ValueError, match="extra|Extra"):
        toy_config(tmp_path, bogus=1)
    with pytest.raises(ValueError, match=r"judge\n.*valid list"):  # the field named, not a TypeError
        toy_config(tmp_path, judge=3)
    with pytest.raises(ValueError, match="not a controller label"):
        toy_config(tmp_path, primary="nope")
    with pytest.raises(ValueError, match=r"sigma \(σ\) must be a number > 0"):
        toy_config(tmp_path, controllers=[{"name": "aisp", "sigma": 0, "num_samples": 4}], sweep=None, primary=None, baselines=[])
    with pytest.raises(ValueError, match="unique"):
        toy_config(tmp_path, controllers=[{"name": "bon", "num_samples": 4}, {"name": "bon", "num_samples": 4}], sweep=None, primary=None, baselines=[])
    cfg = toy_config(tmp_path)
    labels = [c.key for c in cfg.all_controllers()]
    assert "aisp[s2=0.1,lam=0.3,a=0.99]" in labels
    assert parse_sweep_label("aisp[s2=0.1,lam=0.3,a=0.99]") == (0.1, 0.3, 0.99)
    sw = [c for c in cfg.all_controllers() if c.key.startswith("aisp[s2=0.1")][0]
    assert sw.sigma == pytest.approx(math.sqrt(0.1))
    from ctrlalign.bench import load_bench_config

    p = tmp_path / "c.json"
    p.write_text(json.dumps({"reward": "embedding", "controllers": [{"name": "bon"}], "budgets": [16, 8, 16]}))
    assert load_bench_config(p).budgets == [8, 16]
    p.write_text(json.dumps({"reward": "embedding", "controllers": [{"name": "bon", "sigmaa": 1}]}))
    with pytest.raises(ValueError, match="controllers.0.sigmaa"):
        load_bench_config(p)


def test_budget_mismatch_is_caught(tmp_path):
    """A reward that is called on extra samples breaks the matched-budget assertion."""
    dyn, reward, judge, prompts = toy_system()

    class Sneaky(ca.Reward):
        name = "sneaky"

        def __call__(self, ps, outcomes):
            r = reward(ps, outcomes)
            return r

    counting = CountingReward(Sneaky())
    cfg = toy_config(tmp_path, sweep=None, controllers=[{"label": "aisp", "name": "aisp", "sigma": 0.7, "num_samples": 4}],
                     primary=None, baselines=[])
    orig = CountingReward.__call__  # the class the harness counts with

    def double_count(self, ps, outcomes):
        out = orig(self, ps, outcomes)
        for p in ps:
            self.calls[self.key(p)] += 1
        return out

    CountingReward.__call__ = double_count
    try:
        with pytest.raises(AssertionError, match="budget mismatch"):
            run_bench(cfg, dynamics=dyn, reward=counting, judge=False, prompts=prompts, log=None, save=False)
    finally:
        CountingReward.__call__ = orig


# ------------------------------------------------------------------------------------ tiny random language model


def _tiny_lm():
    causal_lm = pytest.importorskip("ctrlalign.dynamics.causal_lm", reason="CausalLM not merged into this branch yet")
    try:
        from conftest import make_model, make_tokenizer
    except ImportError:  # pragma: no cover - conftest of the llm branch not merged yet
        pytest.skip("tiny-model fixtures (tests/conftest.py) not available")
    from ctrlalign.dynamics.decoding import SamplingConfig

    return causal_lm.CausalLM(make_model("llama"), make_tokenizer(), sampling=SamplingConfig(max_new_tokens=6))


def test_tiny_language_model_bench(tmp_path):
    lm = _tiny_lm()
    prompts = ["write a poem about the sea and the moon", "tell me a story about a happy cat", "why is the sky blue"]
    good = {"happy", "good", "love", "sun", "blue"}

    def reward(prompt: str, text: str) -> float:
        return float(sum(w in good for w in text.split()))

    def judge(prompt: str, text: str) -> float:
        return float(len(set(text.split())))

    cfg = BenchConfig.model_validate(dict(
        name="tiny", prompts=prompts, reward=[{"name": "sentiment"}], budgets=[4, 8], seeds=[0, 1],
        batch_prompts=2, coherence=True, output=str(tmp_path / "tiny.json"), figures=str(tmp_path / "img"),
        controllers=[
            {"label": "bon-plain", "name": "bon", "sigma": 0, "num_samples": 4},
            {"label": "bon-prior", "name": "bon", "sigma": 0.5, "num_samples": 4},
            {"label": "aisp", "name": "aisp", "sigma": 0.5, "temperature": 0.5, "alpha": 0.99, "num_samples": 4},
        ],
        primary="aisp", baselines=["bon-plain", "bon-prior"]))
    counting = CountingReward(ca.CallableReward(reward))
    res = run_bench(cfg, dynamics=lm, reward=counting, judge=ca.CallableReward(judge), log=None)
    for p in prompts:
        assert counting.calls[CountingReward.key(p)] == 3 * 2 * 8  # controllers × seeds × N_max
    assert all(r["reward_calls"] == r["budget"] for r in res.records)
    assert res.meta["head_row_norm"] == pytest.approx(scales.head_row_norm(lm.head.weight))
    for r in res.records:
        assert isinstance(r["text"], str) and r["judge"] is not None and -1 <= r["coherence"] <= 1
        assert 0 <= r["diversity"] <= 1
        if r["controller"] == "bon-plain":
            assert r["token_kl"] == 0.0
    assert any(r["token_kl"] != 0.0 for r in res.select("aisp"))
    # anytime read-out = a separate run with k = N / n
    aisp = cfg.controllers[2].build(1)
    out = ca.align(lm, ca.CallableReward(reward), aisp, prompts, seed=1)
    recs = {r["prompt_id"]: r for r in res.select("aisp", 4) if r["seed"] == 1}
    for d in range(3):
        assert recs[f"p{d}"]["text"] == out.texts[d]
        assert recs[f"p{d}"]["reward"] == pytest.approx(float(out.rewards[d]))
    paths = write_figures(res, tmp_path / "img", prefix="tiny", primary="aisp")
    assert len(paths) >= 4 and all(p.stat().st_size > 1000 for p in paths)
    assert "bon-prior" in results_table(res) and "Goal" in markdown_report(res)


def test_paper_regime_config_is_valid():
    """The issue-14 reproduction config parses, and every entry builds its controller."""
    cfg = load_bench_config("benchmarks/configs/paper-regime.yaml")
    keys = [c.key for c in cfg.all_controllers()]
    assert {"bon-plain", "bon-prior", "aisp-paper"} <= set(keys)
    assert cfg.model.max_new_tokens >= 32 and cfg.heldout
    for c in cfg.all_controllers():
        ctrl = c.build(max(cfg.budgets) // c.num_samples_used)
        assert ctrl.num_samples * ctrl.num_iterations == 512
        assert c.name == "bon" or (c.space.build().horizon or 0) < cfg.model.max_new_tokens  # τ < T


@pytest.mark.parametrize("name", ["reference", "steering", "tradeoff", "gemma", "pilot", "gpu"])
def test_paper_regime_stage_configs_are_valid(name):
    """Every CPU stage of the protocol parses, controls a window tau < T, compares its primary
    with both Best-of-N baselines, and gives every controller the same budgets."""
    cfg = load_bench_config(f"benchmarks/configs/paper-regime-{name}.yaml")
    keys = [c.key for c in cfg.all_controllers()]
    assert {"bon-plain", "bon-prior", "aisp-paper"} <= set(keys)
    assert {"bon-plain", "bon-prior"} <= set(cfg.baselines) and cfg.primary in keys
    assert cfg.model.max_new_tokens >= 32 and cfg.heldout and max(cfg.budgets) >= 128
    for c in cfg.all_controllers():
        ctrl = c.build(max(cfg.budgets) // c.num_samples_used)
        assert ctrl.num_samples * ctrl.num_iterations == max(cfg.budgets)
        assert c.sigma_used == 0 or (c.space.build().horizon or 0) < cfg.model.max_new_tokens


def test_greedy_entries_and_new_spaces_run_in_the_bench(tmp_path):
    """A greedy entry decodes its responses deterministically given the controls, through the
    same prefill; a shared-space adaptive-λ entry records its λ per round."""
    lm = _tiny_lm()
    prompts = ["why is the sky blue", "tell me a story about a happy cat"]
    cfg = BenchConfig.model_validate(dict(
        name="tiny-greedy", prompts=prompts, reward=[{"name": "sentiment"}], budgets=[4, 8], seeds=[0],
        batch_prompts=2, coherence=False, output=str(tmp_path / "g.json"), figures=None,
        controllers=[
            {"label": "bon-greedy", "name": "bon", "sigma": 0.5, "num_samples": 4, "greedy": True},
            {"label": "shared", "name": "aisp", "space": "shared", "target_ess": 0.5, "sigma": 0.5,
             "num_samples": 4, "greedy": True},
        ]))
    res = run_bench(cfg, dynamics=lm, reward=ca.CallableReward(lambda p, s: float(len(s.text))), judge=False, log=None)
    assert res.meta["controllers"]["shared"]["space"] == "shared" and res.meta["controllers"]["shared"]["greedy"]
    trace = next(t for t in res.traces if t["controller"] == "shared")["trace"]
    assert all(row["temperature"] is not None and row["temperature"] > 0 for row in trace)
    greedy = lm.with_sampling(greedy=True)
    assert greedy.sampling.greedy and not lm.sampling.greedy and greedy.model is lm.model


def test_verdict_and_goal_tables_across_runs(toy_result):
    """The cross-run tables hold one row per (run, controller) at N, with the paired Δ of the
    comparisons and the regime goal's verdict per run."""
    from ctrlalign.bench.report import frontier_table, goal_table, verdict_table

    res, cfg, *_ = toy_result
    table = verdict_table({"toy A": res, "toy B": res}, budget=16)
    lines = table.splitlines()
    assert "Δ vs bon-plain [95% CI]" in lines[0] and "Δ vs bon-prior [95% CI]" in lines[0]
    assert len(lines) == 2 + 2 * len(res.controllers())
    comp = next(c for c in res.comparisons if c["controller"] == "aisp" and c["baseline"] == "bon-plain"
                and c["budget"] == 16)
    row = next(ln for ln in lines if ln.startswith("| toy A | aisp |"))
    assert f"{comp['reward_diff']['mean']:+.3f} [" in row
    goals = goal_table({"toy": res}, min_budget=16).splitlines()
    assert len(goals) == 3 and "| toy | bon-plain, bon-prior | aisp |" in goals[2]
    assert ("**met**" in goals[2]) == regime_goal(res, "aisp", ["bon-plain", "bon-prior"], min_budget=16)["met"]
    assert "fluency at N=16 (not scored)" in goals[2]  # the toy system has no text: an absent check fails
    assert "Reward–KL frontier" in frontier_table(res, "bon-plain")


def test_runs_overview_figure(toy_result, tmp_path):
    from ctrlalign.bench.plots import plot_runs_overview

    res, *_ = toy_result
    path = plot_runs_overview({"toy A": res, "toy B": res}, tmp_path / "overview.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 20_000
