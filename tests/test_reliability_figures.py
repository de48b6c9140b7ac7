"""The reliability figures in BENCHMARKS.md are the suite's own: cases by kind, answered well.

``scripts/reliability_figures.py`` runs the reliability suite and writes
``benchmarks/results/reliability.{json,md}``; BENCHMARKS.md copies the table. Here the suite is
collected again (not run): the recorded cases must be the suite's cases now, with the same
kinds and xfail markers, from a run without failures, and BENCHMARKS.md must hold the table.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("reliability_figures", ROOT / "scripts" / "reliability_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


rf = _script()


@pytest.fixture(scope="module")
def recorded_and_collected():
    fig = json.loads(rf.JSON_PATH.read_text())
    return fig, rf.collect_cases(run=False), (ROOT / "BENCHMARKS.md").read_text(), rf.MD_PATH.read_text()


def test_every_case_states_a_kind(recorded_and_collected):
    _, collected, _, _ = recorded_and_collected
    assert len(collected) > 150
    assert {c.kind for c in collected} == set(rf.KINDS), "every kind has cases and every case a kind"


def test_figures_are_the_suites_and_benchmarks_copies_them(recorded_and_collected):
    fig, collected, bench, table = recorded_and_collected
    assert rf.problems(fig, collected, bench, table) == []


def test_the_check_sees_each_kind_of_disagreement(recorded_and_collected):
    """Power: a case gone, a kind changed, a figure edited by hand, a failing run, a stale copy
    in BENCHMARKS.md: each is reported."""
    fig, collected, bench, table = recorded_and_collected

    def edited(change):
        f = copy.deepcopy(fig)
        change(f)
        return f

    gone = edited(lambda f: f["cases"].pop())
    assert any("changed since" in p for p in rf.problems(gone, collected, bench, table))
    first = fig["cases"][0]["kind"]
    other = next(k for k in rf.KINDS if k != first)
    rekinded = edited(lambda f: f["cases"][0].update(kind=other))
    assert any("kind or xfail" in p for p in rf.problems(rekinded, collected, bench, table))
    by_hand = edited(lambda f: f["kinds"][0].update(answered_well=f["kinds"][0]["answered_well"] - 1))
    assert any("counts by kind" in p for p in rf.problems(by_hand, collected, bench, table))
    failing = edited(lambda f: f["cases"][0].update(outcome="failed"))
    failing = rf.figures(rf.Case(**c) for c in failing["cases"])
    assert any("failing cases" in p for p in rf.problems(failing, collected, bench, rf.markdown(failing)))
    stale = bench.replace(table.splitlines()[2], table.splitlines()[2].replace(" | ", " | 1", 1))
    assert any("BENCHMARKS.md" in p for p in rf.problems(fig, collected, stale, table))


def test_figures_count_outcomes_by_kind():
    cases = [rf.Case("a", "api", "passed", False), rf.Case("b", "api", "xfailed", True),
             rf.Case("c", "api", "skipped", False), rf.Case("d", "rewards", "failed", False)]
    fig = rf.figures(cases)
    api = next(r for r in fig["kinds"] if r["kind"] == "api")
    assert (api["cases"], api["answered_well"], api["known_gaps"], api["not_run"], api["failed"]) == (3, 1, 1, 1, 0)
    assert fig["total"] == {"cases": 4, "answered_well": 1, "known_gaps": 1, "not_run": 1, "failed": 1}
    assert "| **all** | **4** | **1** (33% of those run) | 1 | 1 |" in rf.markdown(fig)
