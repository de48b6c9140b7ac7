"""The reliability figures (cases by kind, how many answered well), produced by the suite itself.

The reliability suite (:data:`MODULES`) is a set of cases: bad or edge-case inputs to the
command line, config and prompt files, the Python API and resumable runs. Each test states
its kind with ``@pytest.mark.reliability("kind")`` (a key of :data:`KINDS`), and each of its
parametrizations is one case, which asserts the exit code or exception type and the value the
message names (a clear error), or the correct result. This script runs the suite and writes

* ``benchmarks/results/reliability.json``: every case (pytest node id, kind, outcome) and, by
  kind, ``cases``, ``answered_well`` (its test passed), ``known_gaps`` (marked ``xfail``: a
  known bad answer, not answered well), ``not_run`` (skipped on this machine) and ``failed``;
* ``benchmarks/results/reliability.md``: the table by kind, which BENCHMARKS.md copies. The
  docs build (``scripts/mkdocs_hooks.py``) refuses a copy that no longer matches, and
  ``tests/test_reliability_figures.py`` checks the figures against the suite as it is now (the
  same cases and kinds, a green run) and against BENCHMARKS.md.

Usage (from the repository root; a few minutes)::

    python scripts/reliability_figures.py
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the suite imports ctrlalign from this checkout
RESULTS = ROOT / "benchmarks" / "results"
JSON_PATH = RESULTS / "reliability.json"
MD_PATH = RESULTS / "reliability.md"

#: the test modules whose tests are the reliability cases (every test in them states a kind)
MODULES = ("tests/test_reliability.py", "tests/test_api_reliability.py")

#: kind → what its cases give (the table's rows, in this order)
KINDS = {
    "config-files": "config files given to `ctrlalign run` (syntax, keys, values, paths)",
    "prompt-files": "prompt files and sources (txt, jsonl, csv, json; fields, ids, encodings)",
    "cli-flags": "`ctrlalign align` / `run` flags (values, choices, models, devices, outputs)",
    "output": "output and resumable runs (disk full, read-only, locks, Ctrl-C, changed prompts, corrupt lines)",
    "api": "Python API entry points (prompts, devices, model folders, configs, rewards)",
    "rewards": "reward outputs (must be real numbers; real ones accepted)",
    "types": "config value types (strict numbers and booleans)",
    "results-files": "results files read back (`ctrlalign bench --report-only`)",
    "checks": "checks that must not refuse legitimate input (σ bound in the control space used)",
    "errors-page": "the errors page (every error importable, every example raises what it says)",
}

#: the columns of the table (BENCHMARKS.md copies it under this header)
HEADER = "| kind of input | cases | answered well | known gaps | not run here |"


@dataclass(frozen=True)
class Case:
    """One reliability case: its pytest node id, kind and outcome (``passed``, ``failed``,
    ``xfailed``, ``xpassed``, ``skipped``, or ``collected`` when only collected)."""

    id: str
    kind: str | None
    outcome: str
    xfail: bool


class CaseRecorder:
    """A pytest plugin recording the cases of a session: kind and xfail marker at collection,
    outcome from the reports."""

    def __init__(self) -> None:
        self.cases: dict[str, Case] = {}

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            marker = item.get_closest_marker("reliability")
            kind = marker.args[0] if marker is not None and marker.args else None
            self.cases[item.nodeid] = Case(item.nodeid, kind, "collected", item.get_closest_marker("xfail") is not None)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        case = self.cases.get(report.nodeid)
        if case is None:
            return
        if report.failed:
            outcome = "failed"
        elif report.skipped:
            outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        elif report.when == "call":
            outcome = "xpassed" if hasattr(report, "wasxfail") else "passed"
        else:
            return
        if case.outcome in ("collected", "passed"):  # a teardown failure overrides a pass
            self.cases[report.nodeid] = Case(case.id, case.kind, outcome, case.xfail)


def collect_cases(run: bool, extra_args: Iterable[str] = ()) -> list[Case]:
    """The cases of :data:`MODULES`: collected only (``run=False``) or run (``run=True``)."""
    recorder = CaseRecorder()
    args = [str(ROOT / m) for m in MODULES] + ["-p", "no:cacheprovider", "-q", f"--rootdir={ROOT}", *extra_args]
    if not run:
        args.append("--collect-only")
    code = pytest.main(args, plugins=[recorder])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) or not recorder.cases:
        raise RuntimeError(f"pytest could not collect the reliability suite (exit code {code})")
    return list(recorder.cases.values())


def figures(cases: Iterable[Case]) -> dict[str, Any]:
    """Cases by kind: ``cases``, ``answered_well``, ``known_gaps``, ``not_run``, ``failed``."""
    cases = list(cases)
    rows = {k: {"kind": k, "description": d, "cases": 0, "answered_well": 0, "known_gaps": 0, "not_run": 0,
                "failed": 0} for k, d in KINDS.items()}
    for c in cases:
        row = rows[c.kind]
        row["cases"] += 1
        key = {"passed": "answered_well", "xfailed": "known_gaps", "skipped": "not_run"}.get(c.outcome, "failed")
        row[key] += 1
    total = {k: sum(r[k] for r in rows.values()) for k in ("cases", "answered_well", "known_gaps", "not_run", "failed")}
    return {"kinds": list(rows.values()), "total": total, "cases": [asdict(c) for c in sorted(cases, key=lambda c: c.id)]}


def markdown(fig: dict[str, Any]) -> str:
    """The table of :func:`figures` (one row per kind and a total)."""
    lines = [HEADER, "|---|---:|---:|---:|---:|"]
    for r in fig["kinds"]:
        lines.append(f"| {r['description']} | {r['cases']} | {r['answered_well']} | {r['known_gaps']} | {r['not_run']} |")
    t = fig["total"]
    share = t["answered_well"] / max(1, t["cases"] - t["not_run"])
    lines.append(f"| **all** | **{t['cases']}** | **{t['answered_well']}** ({share:.0%} of those run) | "
                 f"{t['known_gaps']} | {t['not_run']} |")
    return "\n".join(lines) + "\n"


def problems(fig: dict[str, Any], collected: Iterable[Case], benchmarks_text: str, table: str) -> list[str]:
    """Why the recorded figures ``fig`` (and the ``table`` written from them) do not describe
    the suite as ``collected`` now, or BENCHMARKS.md (``benchmarks_text``) does not hold that
    table; empty when all agree."""
    out = []
    collected = list(collected)
    unmarked = [c.id for c in collected if c.kind not in KINDS]
    if unmarked:
        out.append(f"cases without a known @pytest.mark.reliability(kind) (kinds: {sorted(KINDS)}): {unmarked[:5]}")
    recorded = {c["id"]: c for c in fig["cases"]}
    now = {c.id: c for c in collected}
    if set(recorded) != set(now):
        out.append(f"the suite's cases changed since the figures were written: new {sorted(set(now) - set(recorded))[:5]}, "
                   f"gone {sorted(set(recorded) - set(now))[:5]}")
    changed = [i for i in set(recorded) & set(now) if (recorded[i]["kind"], recorded[i]["xfail"]) != (now[i].kind, now[i].xfail)]
    if changed:
        out.append(f"cases whose kind or xfail marker changed: {sorted(changed)[:5]}")
    if fig != figures(Case(**c) for c in fig["cases"]):
        out.append("the counts by kind are not those of the recorded cases")
    if fig["total"]["failed"]:
        failed = [c["id"] for c in fig["cases"] if c["outcome"] not in ("passed", "xfailed", "skipped")]
        out.append(f"the figures were written from a run with failing cases: {failed[:5]}")
    if table != markdown(fig):
        out.append(f"{MD_PATH.name} is not the table of {JSON_PATH.name}")
    if table.strip() not in benchmarks_text:
        out.append(f"BENCHMARKS.md does not hold the table of {MD_PATH.name} as written")
    return out


def main(argv: list[str] | None = None) -> int:
    fig = figures(collect_cases(run=True, extra_args=argv or ()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    JSON_PATH.write_text(json.dumps(fig, indent=1, ensure_ascii=False) + "\n")
    MD_PATH.write_text(markdown(fig))
    print(markdown(fig))
    print(f"wrote {JSON_PATH.relative_to(ROOT)} and {MD_PATH.relative_to(ROOT)}; copy the table into BENCHMARKS.md")
    return 1 if fig["total"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
