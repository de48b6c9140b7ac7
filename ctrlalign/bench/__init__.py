"""Matched-budget benchmarks: every controller gets exactly N reward calls per prompt.

``run_bench(config) -> BenchResult`` (:mod:`~ctrlalign.bench.harness`), split by job: the plan
and resuming (:mod:`~ctrlalign.bench.plan`), one run (:mod:`~ctrlalign.bench.execute`), the
results and their file (:mod:`~ctrlalign.bench.result`, a :mod:`ctrlalign.store`), held-out
scores (:mod:`~ctrlalign.bench.score`), aggregates (:mod:`~ctrlalign.bench.summary`), goal
checks (:mod:`~ctrlalign.bench.verdict`); metrics (:mod:`~ctrlalign.bench.stats`,
:mod:`~ctrlalign.bench.diversity`, :mod:`~ctrlalign.bench.frontier`, :mod:`~ctrlalign.bench.scales`), figures
(:mod:`~ctrlalign.bench.plots`) and markdown tables (:mod:`~ctrlalign.bench.report`); from the
shell, ``ctrlalign bench CONFIG``.
"""

from ..rewards.counting import CountingReward
from .config import BenchConfig, BenchController, SweepGrid, load_bench_config
from .harness import finish_saved, run_bench
from .result import BenchResult
from .score import finish_bench
from .summary import compare, summarize
from .verdict import goal_status

__all__ = [
           "BenchConfig",
           "BenchController",
           "BenchResult",
           "CountingReward",
           "SweepGrid",
           "compare",
           "finish_bench",
           "finish_saved",
           "goal_status",
           "load_bench_config",
           "run_bench",
           "summarize",
]
