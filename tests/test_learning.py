"""End to end on the real default model: a controller that learns, the paper's AISP beside it.

The steering reward is MiniLM similarity to a target description. At n = 32 samples and k = 16
rounds on three prompts, the `head-subspace` configuration (AISP in the head's top-32 singular
directions, λ adaptive with ESS = n/4, greedy decoding; ``ctrlalign align``'s default) must
raise its round-mean reward at least 1.5x
from the first round to the last; the paper's per-token AISP runs beside it on the same prompts
and seed (reported, not required to learn). Also: Batched AISP's benchmark script runs.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_steering_controller_learns_on_the_default_model(tmp_path):
    example = importlib.import_module("examples.learning_controllers")
    out = example.main(tmp_path, only=["head-subspace", "paper"])
    best, paper = out["configurations"]["head-subspace"], out["configurations"]["paper"]
    assert out["n"] == 32 and out["k"] == 16
    assert len(best["round_mean"]) == 16
    assert best["rise"] >= 1.5, best["round_mean"]
    print(f"head-subspace x{best['rise']:.2f}, paper x{paper['rise']:.2f}")
    assert (tmp_path / "learning_controllers.png").stat().st_size > 1000


@pytest.mark.slow
def test_batched_aisp_benchmark_script_runs(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "batched_aisp.py"), "--prompts", "2",
                        "--num-samples", "2", "--num-iterations", "2", "--T", "4", "--repeats", "1",
                        "--out", str(out)], check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["stream_rows_per_call"] == [4, 4] and res["ratio_stream_over_bon"] > 0
