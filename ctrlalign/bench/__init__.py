"""Matched-budget benchmarks: every controller gets exactly N reward calls per prompt.

``run_bench(config) -> BenchResult`` (:mod:`~ctrlalign.bench.harness`), metrics
(:mod:`~ctrlalign.bench.metrics`), figures (:mod:`~ctrlalign.bench.plots`) and markdown tables
(:mod:`~ctrlalign.bench.report`); from the shell, ``ctrlalign bench CONFIG``.
"""

from .config import BenchConfig, BenchController, SweepGrid, load_bench_config
from .harness import (
           BenchResult,
           CountingReward,
           compare,
           finish_bench,
           goal_status,
           run_bench,
           summarize,
)

__all__ = [
           "BenchConfig",
           "BenchController",
           "BenchResult",
           "CountingReward",
           "SweepGrid",
           "compare",
           "finish_bench",
           "goal_status",
           "load_bench_config",
           "run_bench",
           "summarize",
]
