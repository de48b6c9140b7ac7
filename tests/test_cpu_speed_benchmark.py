"""The pure parts of ``benchmarks/cpu_speed.py``: roofline arithmetic and the generated report."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cs = _load("cpu_speed", ROOT / "benchmarks" / "cpu_speed.py")

SHAPE = {"d": 576, "layers": 30, "heads": 9, "kv_heads": 3, "head_dim": 64, "ffn": 1536, "vocab": 49152, "tied": 1}


def _tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("tied", [True, False])
def test_matrix_params_counts_every_linear_layer_and_the_head(tied):
    """matrix_params = the weights of every nn.Linear (q, k, v, o, MLP, head) of a real model."""
    import torch

    model = _tiny_llama(tied)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert cs.matrix_params(cs.model_shape(model.config)) == linear
    # power: counting the (untied) embedding as well would be wrong by V·d
    emb = model.get_input_embeddings().weight.numel()
    assert cs.matrix_params(cs.model_shape(model.config)) + emb != linear


def test_smollm2_numbers():
    """SmolLM2-135M: 134.5 M parameters, of which 28.3 M (V·d) in the tied embedding/head; no
    biases, so the matrices hold all but the norms' 576·61 weights."""
    assert cs.matrix_params(SHAPE) == 134_515_008 - 576 * 61
    assert cs.kv_bytes_per_token(SHAPE, 4) == 2 * 30 * 3 * 64 * 4
    assert cs.mean_context(38, 32) == 38 + 16.5


@given(st.integers(1, 4096), st.integers(1, 512), st.integers(1, 128))
def test_roofline_bounds(rows, T, L):
    """Compute bound P/F does not depend on rows; memory bound rows·β/M grows with rows towards
    β/(KV bytes·c̄); the roofline is their minimum; F = 2·matrix params at zero context."""
    P, beta, W = 5e10, 2e10, 5.4e8
    r = cs.roofline(SHAPE, rows, T, L, W, 4, P, beta)
    r1 = cs.roofline(SHAPE, 1, T, L, W, 4, P, beta)
    assert r["compute_tokens_per_s"] == r1["compute_tokens_per_s"]
    c = cs.mean_context(L, T)
    assert r["compute_tokens_per_s"] == pytest.approx(P / (2 * cs.matrix_params(SHAPE) + 4 * 30 * 9 * 64 * c))
    assert r["memory_tokens_per_s"] == pytest.approx(rows * beta / (W + rows * cs.kv_bytes_per_token(SHAPE, 4) * c))
    assert r["memory_tokens_per_s"] >= r1["memory_tokens_per_s"] * (1 - 1e-12)
    assert r["memory_tokens_per_s"] < beta / (cs.kv_bytes_per_token(SHAPE, 4) * c)
    assert r["roofline_tokens_per_s"] == min(r["compute_tokens_per_s"], r["memory_tokens_per_s"])
    assert cs.flops_per_token(SHAPE, 0) == 2 * cs.matrix_params(SHAPE)


def test_grid_and_estimate():
    assert cs.grid([1, 32, 128], [32, 128], 8192) == [(32, 1), (32, 32), (32, 128), (128, 1), (128, 32)]
    assert len(cs.grid([1, 256], [32, 128], None)) == 4
    one = cs.estimate_seconds([(32, 1)], 1, 1, step_s=lambda r: 1.0)
    assert one == pytest.approx(1.25 * 32)
    assert cs.estimate_seconds([(32, 1)], 3, 2, step_s=lambda r: 1.0) == pytest.approx(3 * 2.25 * 32)


def test_inverse_cdf_picks_the_token_whose_interval_holds_u():
    import numpy as np

    logits = np.log(np.array([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [1.0, 1e-9, 1e-9]]))
    assert cs.inverse_cdf(logits, np.array([0.1, 0.45, 0.99, 0.999])).tolist() == [0, 1, 2, 0]


def _results():
    machine = {"nproc": 2, "processor": "test CPU", "peak_gflops": 50.0, "bandwidth_gb_s": 20.0,
               "uptime_start": " 19:00:00 up 2:00,  0 user,  load average: 1.00, 0.50, 0.25",
               "uptime_end": "load average: 2.00, 1.00, 0.50"}
    cells = [{"series": "llama.cpp", "rows": 1, "T": 32, "tokens_per_s": 100.0},
             {"series": "eager", "rows": 1, "T": 32, "tokens_per_s": 12.345},
             {"series": "generate", "rows": 1, "T": 32, "tokens_per_s": 9.0},
             {"series": "eager", "rows": 4, "T": 32, "tokens_per_s": 1234.5},
             {"series": "generate", "rows": 4, "T": 32, "tokens_per_s": None, "error": "boom"}]
    roof = {"fp32": {"32x1": {"compute_tokens_per_s": 180.0, "memory_tokens_per_s": 37.2, "roofline_tokens_per_s": 37.2},
                     "32x4": {"compute_tokens_per_s": 180.0, "memory_tokens_per_s": 148.0, "roofline_tokens_per_s": 148.0}},
            "gguf": {"32x1": {"compute_tokens_per_s": 180.0, "memory_tokens_per_s": 220.0, "roofline_tokens_per_s": 180.0}}}
    return {"threads": 2, "repeats": 2, "prompt_tokens": 38, "machine": machine, "cells": cells, "roofline": roof,
            "skipped": {"static": "NotImplementedError: no"},
            "main_job": {"align_s": 66.0, "align_with_load_s": 70.0, "command_s": 103.0}}


def test_report_table_from_json():
    text = cs.report(_results())
    lines = text.splitlines()
    assert lines[0] == ("| T | rows | `generate` | `eager` engine | llama.cpp (raw decode) | "
                        "roofline fp32 (compute / memory) | roofline GGUF (compute / memory) |")
    assert lines[2] == "| 32 | 1 | 9.0 | 12.3 | 100 | 180 / 37.2 | 180 / 220 |"
    assert lines[3] == "| 32 | 4 | – | 1,234 | – | 180 / 148 | – |"  # failed, missing and unmeasured cells
    assert "load average (1, 5, 15 min) 1.00, 0.50, 0.25 at the start, 2.00, 1.00, 0.50 at the end" in text
    assert "static: NotImplementedError: no" in text
    assert "align 66.0 s, with model load 70.0 s, whole command 103.0 s" in text


def test_report_only_writes_the_table_and_the_docs_check_accepts_its_copy(tmp_path):
    """--report-only regenerates the markdown from the JSON; the docs build's copied-table check
    accepts BENCHMARKS-style text holding that table and refuses it after one number changed."""
    import json

    pytest.importorskip("mkdocs")
    pytest.importorskip("matplotlib")
    from mkdocs.exceptions import PluginError

    out = tmp_path / "cpu_speed.json"
    out.write_text(json.dumps(_results()))
    cs.main(["--report-only", "--out", str(out), "--figure", str(tmp_path / "f.png")])
    md = (tmp_path / "cpu_speed.md").read_text()
    assert md == cs.report(_results())
    from PIL import Image

    assert Image.open(tmp_path / "f.png").size[0] >= 1000
    hooks = _load("mkdocs_hooks_cs", ROOT / "scripts" / "mkdocs_hooks.py")
    hooks.ROOT = tmp_path  # results read from tmp_path/benchmarks/results
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "cpu_speed.md").write_text(md)
    hooks._check_copied_tables("intro\n\n" + md, "BENCHMARKS.md")
    with pytest.raises(PluginError):
        hooks._check_copied_tables(md.replace("1,234", "1,235"), "BENCHMARKS.md")


def test_benchmarks_md_copies_the_cpu_speed_table():
    """BENCHMARKS.md holds the table benchmarks/results/cpu_speed.md was generated with."""
    md = (ROOT / "benchmarks" / "results" / "cpu_speed.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert "\n".join(table) in (ROOT / "BENCHMARKS.md").read_text()
