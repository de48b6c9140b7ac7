"""Resuming a benchmark: an interrupted run continues where it stopped and gives the records an
uninterrupted run gives; a results file of another configuration is refused, never mixed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_bench import toy_config, toy_system

import ctrlalign as ca
from ctrlalign.bench import BenchResult, run_bench
from ctrlalign.cli import main
from ctrlalign.store import (
    ConfigChangedError,
    CorruptResultsError,
    OutputLockedError,
    RunInterrupted,
    output_lock,
)

#: fields of a record that measure time, not the result
TIMING = {"seconds_per_prompt"}


def _small(tmp_path: Path, **kw):
    base = dict(sweep=None, budgets=[4, 8], primary="aisp", baselines=["bon-plain"], controllers=[
        {"label": "bon-plain", "name": "bon", "sigma": 0, "num_samples": 4},
        {"label": "aisp", "name": "aisp", "sigma": 0.7, "temperature": 0.3, "alpha": 0.99, "num_samples": 4},
    ])
    base.update(kw)
    return toy_config(tmp_path, **base)


def _results(res: BenchResult) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in res.records]


class StopAfter(ca.Reward):
    """The toy reward, which presses Ctrl-C on its ``calls``-th batch."""

    name = "stop-after"

    def __init__(self, inner: ca.Reward, calls: int):
        self.inner, self.left = inner, calls

    def __call__(self, prompts, outcomes):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return self.inner(prompts, outcomes)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean")
    dyn, reward, judge, prompts = toy_system()
    cfg = _small(tmp)
    return run_bench(cfg, dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=None)


@pytest.mark.parametrize("stop", [1, 3, 5, 9])
def test_interrupted_run_resumes_to_the_uninterrupted_result(clean, tmp_path, stop):
    dyn, reward, judge, prompts = toy_system()
    cfg = _small(tmp_path)
    with pytest.raises(RunInterrupted, match="rerun the same command to resume") as exc:
        run_bench(cfg, dynamics=dyn, reward=StopAfter(reward, stop), judge=judge, prompts=prompts, log=None)
    saved = BenchResult.load(cfg.output) if Path(cfg.output).exists() else None
    n_saved = 0 if saved is None else len(saved.runs)
    assert f"{n_saved} of 8 runs done" in str(exc.value)  # 2 prompt batches x 2 seeds x 2 controllers
    lines: list[str] = []
    res = run_bench(cfg, dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=lines.append)
    assert any(f"{8 - n_saved} of 8 runs to do" in s for s in lines)
    assert _results(res) == _results(clean)
    key = [(r["controller"], r["budget"], r["reward"], r["judge"]) for r in res.summary]
    assert key == [(r["controller"], r["budget"], r["reward"], r["judge"]) for r in clean.summary]
    assert len(res.runs) == 8 and bool(res.meta.get("resumed")) == (n_saved > 0)
    # the file holds exactly what the resumed run returned (order, scores, summary)
    assert BenchResult.load(cfg.output).to_dict() == json.loads(json.dumps(res.to_dict()))


def test_finished_run_is_not_rerun_and_new_controllers_or_prompts_only_add(clean, tmp_path):
    dyn, reward, judge, prompts = toy_system()
    cfg = _small(tmp_path, controllers=_small(tmp_path).model_dump()["controllers"][:1], primary=None, baselines=[])
    run_bench(cfg, dynamics=dyn, reward=reward, judge=judge, prompts=prompts[:2], log=None)
    lines: list[str] = []
    res = run_bench(_small(tmp_path), dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=lines.append)
    # 2 batches x 2 seeds x 2 controllers = 8 runs; bon-plain on the first batch (2 seeds) was done
    assert any("6 of 8 runs to do" in s for s in lines)
    assert _results(res) == _results(clean)
    lines.clear()
    again = run_bench(_small(tmp_path), dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=lines.append)
    assert any("0 of 8 runs to do" in s for s in lines) and _results(again) == _results(clean)


@pytest.mark.parametrize(("change", "named"), [
    (dict(seeds=[0, 2]), "seeds this config no longer includes (1)"),
    (dict(model={"name": "default", "max_new_tokens": 8}), "model.max_new_tokens"),
    (dict(controllers=[{"label": "bon-plain", "name": "bon", "sigma": 0.1, "num_samples": 4},
                       {"label": "aisp", "name": "aisp", "sigma": 0.7, "temperature": 0.3, "alpha": 0.99,
                        "num_samples": 4}]), "controllers[bon-plain]"),
    (dict(controllers=[{"label": "bon-plain", "name": "bon", "sigma": 0, "num_samples": 4}], primary=None,
          baselines=[]), "controllers[aisp]"),
])
def test_another_configuration_is_refused_and_the_file_kept(clean, tmp_path, change, named):
    dyn, reward, judge, prompts = toy_system()
    cfg = _small(tmp_path)
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(clean.to_dict(), default=str))
    before = Path(cfg.output).read_bytes()
    with pytest.raises(ConfigChangedError, match=re.escape(named)):
        run_bench(_small(tmp_path, **change), dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=None)
    assert Path(cfg.output).read_bytes() == before
    # --overwrite replaces it
    res = run_bench(_small(tmp_path, **change), dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=None,
                    overwrite=True)
    assert BenchResult.load(cfg.output).records == json.loads(json.dumps(res.records))


def test_dropped_prompts_are_refused(clean, tmp_path):
    dyn, reward, judge, prompts = toy_system()
    cfg = _small(tmp_path)
    Path(cfg.output).write_text(json.dumps(clean.to_dict(), default=str))
    with pytest.raises(ConfigChangedError, match="no longer includes.*p2"):
        run_bench(cfg, dynamics=dyn, reward=reward, judge=judge, prompts=prompts[:2], log=None)


def test_corrupt_or_locked_output_is_refused(tmp_path):
    dyn, reward, judge, prompts = toy_system()
    cfg = _small(tmp_path)
    Path(cfg.output).write_text('{"config": {"name": ')
    with pytest.raises(CorruptResultsError, match="cannot be read as a bench result"):
        run_bench(cfg, dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=None)
    assert Path(cfg.output).read_text() == '{"config": {"name": '
    Path(cfg.output).unlink()
    with output_lock(Path(cfg.output)), pytest.raises(OutputLockedError, match="in use by another run"):
        run_bench(cfg, dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=None)
    assert not Path(cfg.output).exists()


def test_cli_refuses_another_configuration_with_exit_2(tmp_path, capsys):
    cfg = _small(tmp_path, prompts=["a", "b"], figures=None)
    data = cfg.model_dump(mode="json")
    Path(cfg.output).write_text(json.dumps({"config": {**data, "batch_prompts": 7}, "meta": {}, "records": [],
                                            "traces": [], "runs": [{"controller": "bon-plain", "seed": 0,
                                                                    "prompt_ids": ["p0"]}],
                                            "summary": [], "comparisons": []}))
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["bench", str(path)]) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "batch_prompts" in err and "--overwrite" in err


def test_an_added_seed_runs_only_its_runs(clean, tmp_path):
    dyn, reward, judge, prompts = toy_system()
    run_bench(_small(tmp_path, seeds=[0]), dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=None)
    lines: list[str] = []
    res = run_bench(_small(tmp_path), dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=lines.append)
    assert any("4 of 8 runs to do" in s for s in lines)
    assert _results(res) == _results(clean)


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_results_are_appended_one_line_per_finished_run(tmp_path):
    dyn, reward, judge, prompts = toy_system()
    cfg = _small(tmp_path)
    with pytest.raises(RunInterrupted):
        run_bench(cfg, dynamics=dyn, reward=StopAfter(reward, 5), judge=judge, prompts=prompts, log=None)
    before = Path(cfg.output).read_bytes()
    first = _lines(cfg.output)
    assert first[0]["ctrlalign_store"] == 1 and first[0]["kind"] == "bench"
    assert [x["id"] for x in first[1:]] == [json.dumps(["bon-plain", 0, ["p0", "p1"]]),
                                            json.dumps(["aisp", 0, ["p0", "p1"]])]  # 2 runs of 4 calls each
    assert all(len(x["records"]) == 2 * 2 and len(x["traces"]) == 2 for x in first[1:])
    run_bench(cfg, dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=None)
    assert Path(cfg.output).read_bytes().startswith(before)  # appended, never rewritten
    ids = [x["id"] for x in _lines(cfg.output)[len(first):]]
    assert ids[0] == "start" and ids[-1] == "finished" and len(ids) == 1 + 6 + 1


def test_a_results_file_of_the_old_format_is_resumed_and_rewritten_as_a_store(clean, tmp_path):
    dyn, reward, judge, prompts = toy_system()
    part = run_bench(_small(tmp_path, seeds=[0]), dynamics=dyn, reward=reward, judge=judge, prompts=prompts,
                     log=None, save=False)
    cfg = _small(tmp_path)
    old = {**part.to_dict(), "config": _small(tmp_path, seeds=[0]).model_dump(mode="json")}
    Path(cfg.output).write_text(json.dumps(old, indent=1))  # how results were written before the store
    assert _results(BenchResult.load(cfg.output)) == _results(part)
    lines: list[str] = []
    res = run_bench(cfg, dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=lines.append)
    assert any("4 of 8 runs to do" in s for s in lines)
    assert _results(res) == _results(clean)
    assert _lines(cfg.output)[0]["ctrlalign_store"] == 1
    assert _results(BenchResult.load(cfg.output)) == _results(clean)


def test_a_corrupt_line_of_a_store_is_named_and_the_file_kept(clean, tmp_path):
    dyn, reward, judge, prompts = toy_system()
    cfg = _small(tmp_path)
    run_bench(_small(tmp_path, seeds=[0]), dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=None)
    text = Path(cfg.output).read_text().splitlines(keepends=True)
    text[2] = text[2][:40] + "\n"
    Path(cfg.output).write_text("".join(text))
    with pytest.raises(CorruptResultsError, match=re.escape(f"{cfg.output}:3: corrupt line")):
        run_bench(cfg, dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=None)
    assert Path(cfg.output).read_text() == "".join(text)


def test_a_kill_mid_write_loses_only_the_run_in_flight(clean, tmp_path):
    """A partial last line (SIGKILL while appending) is dropped, truncated, and its run made again."""
    dyn, reward, judge, prompts = toy_system()
    cfg = _small(tmp_path)
    with pytest.raises(RunInterrupted):
        run_bench(cfg, dynamics=dyn, reward=StopAfter(reward, 7), judge=judge, prompts=prompts, log=None)
    whole = Path(cfg.output).read_text()
    last = whole.splitlines(keepends=True)[-1]
    Path(cfg.output).write_text(whole[: -len(last)] + last[: len(last) // 2])  # the third run, half written
    assert len(BenchResult.load(cfg.output).runs) == 2
    lines: list[str] = []
    res = run_bench(cfg, dynamics=dyn, reward=reward, judge=judge, prompts=prompts, log=lines.append)
    assert any("6 of 8 runs to do" in s for s in lines)
    assert _results(res) == _results(clean)
    assert Path(cfg.output).read_text().startswith(whole[: -len(last)] + '{"id": "start"')


def test_report_only_summarises_a_stopped_run_and_appends_the_summary(tmp_path, capsys):
    dyn, reward, judge, prompts = toy_system()
    cfg = _small(tmp_path, figures=None, tables=str(tmp_path / "t.md"))
    with pytest.raises(RunInterrupted):
        run_bench(cfg, dynamics=dyn, reward=StopAfter(reward, 5), judge=False, prompts=prompts, log=None)
    before = Path(cfg.output).read_bytes()
    assert not BenchResult.load(cfg.output).summary
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["bench", str(path), "--report-only"]) == 0
    assert "reward [95% CI]" in capsys.readouterr().out
    assert Path(cfg.output).read_bytes().startswith(before)  # the summary appended
    assert _lines(cfg.output)[-1]["id"] == "finished"
    done = BenchResult.load(cfg.output)
    assert {r["controller"] for r in done.summary} == {"bon-plain", "aisp"} and len(done.runs) == 2
    (tmp_path / "missing").mkdir()
    cfg2 = _small(tmp_path / "missing", figures=None)
    path.write_text(yaml.safe_dump(cfg2.model_dump(mode="json")))
    assert main(["bench", str(path), "--report-only"]) == 1
    assert "no bench results here" in capsys.readouterr().err
