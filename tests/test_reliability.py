"""Reliability: bad or edge-case inputs across the CLI, config files and the Python API.

Each row of a table is one bad input; the test asserts the exit code (or the exception type)
and that the message names the offending value. Nothing here may end in a traceback.
The cases that need processes (the output lock, Ctrl-C) run the CLI as a subprocess.

A tiny random Llama saved as a real checkpoint stands in for the model.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_model, make_tokenizer

import ctrlalign as ca
from ctrlalign._checks import ConfigError
from ctrlalign.build import build_reward, check_device
from ctrlalign.cli import main
from ctrlalign.config import RewardTerm, RunConfig
from ctrlalign.data import load_prompts
from ctrlalign.store import read_results

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    make_model("llama").save_pretrained(path)
    make_tokenizer(chat_template=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny):
    """Broken model folders: bad config.json, none, not a causal LM, remote code."""
    base = tmp_path_factory.mktemp("models")
    broken = base / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", ')
    empty = base / "empty"
    empty.mkdir()
    encoder = base / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"model_type": "distilbert", "architectures": ["DistilBertModel"]}))
    remote = base / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({
        "model_type": "llama", "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}))
    return {"broken": broken, "empty": empty, "encoder": encoder, "remote": remote, "tiny": tiny}


def run_main(argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``ctrlalign ARGV`` in this process (argparse exits included)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: bad flag or choice
        rc = exc.code
    return rc, capsys.readouterr().err


def good_config(tmp_path: Path, tiny: Path, **sections) -> dict:
    cfg = {
        "prompts": ["hello", "the sea"],
        "model": {"name": str(tiny), "max_new_tokens": 4},
        "controller": {"name": "aisp", "num_samples": 2, "num_iterations": 1},
        "run": {"output": str(tmp_path / "out.jsonl"), "batch_prompts": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_json(tmp_path: Path, data, name: str = "c.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


# --------------------------------------------------------------------------------------------
# 1. config files given to `ctrlalign run`: (id, file name, content (str or bytes), fragments)

RAW_CONFIGS = [
    ("yaml-syntax", "c.yaml", "prompts: [a\ncontroller: {name: aisp}\n", ["YAML syntax error", "line 2, column"]),
    ("yaml-tab", "c.yaml", "prompts:\n\t- a\n", ["YAML syntax error", "line 2"]),
    ("json-syntax", "c.json", '{"prompts": ["a"],}', ["JSON syntax error at line 1, column"]),
    ("toml-syntax", "c.toml", 'prompts = ["a"]\nx = \n', ["TOML syntax error", "line 2"]),
    ("not-utf8", "c.yaml", b"prompts: [caf\xe9]\n", ["c.yaml", "not UTF-8", "0xe9"]),
    ("wrong-suffix", "c.txt", "prompts: [a]\n", ["c.txt", "must end in .yaml"]),
    ("top-level-list", "c.yaml", "- a\n- b\n", ["mapping", "list"]),
    ("top-level-scalar", "c.json", '"prompts"', ["mapping", "str"]),
    ("unknown-section", "c.yaml", "prompts: [a]\ncontroler: {}\n", ["controler: unknown key"]),
    ("unknown-run-key", "c.yaml", "prompts: [a]\nrun: {outptu: x}\n", ["run.outptu: unknown key"]),
    ("no-prompts", "c.yaml", "model: {}\n", ["prompts: Field required"]),
    ("empty-prompt-list", "c.yaml", "prompts: []\n", ["prompts", "empty"]),
    ("empty-prompt", "c.yaml", "prompts: ['']\n", ["prompt 0", "empty"]),
    ("blank-prompt", "c.yaml", "prompts: ['   ']\n", ["prompt 0", "whitespace-only"]),
    ("lone-surrogate", "c.json", '{"prompts": ["ok", "bad \\ud800"]}', ["prompt 1", "lone surrogate"]),
    ("prompts-empty-string", "c.yaml", "prompts: ''\n", ["prompts", "empty string"]),
    ("sigma-negative", "c.yaml", "prompts: [a]\ncontroller: {sigma: -1}\n", ["controller.sigma", "got -1"]),
    ("sigma-nan", "c.yaml", "prompts: [a]\ncontroller: {sigma: .nan}\n", ["controller.sigma", "nan"]),
    ("n-zero", "c.yaml", "prompts: [a]\ncontroller: {num_samples: 0}\n", ["controller.num_samples", "got 0"]),
    ("k-fraction", "c.yaml", "prompts: [a]\ncontroller: {num_iterations: 2.5}\n", ["num_iterations", "2.5"]),
    ("controller-name", "c.yaml", "prompts: [a]\ncontroller: {name: foo}\n", ["controller.name", "'foo'"]),
    ("alpha-for-bon", "c.yaml", "prompts: [a]\ncontroller: {name: bon, alpha: 0.5}\n",
     ["controller.alpha does not apply to controller 'bon'"]),
    ("alpha-range", "c.yaml", "prompts: [a]\ncontroller: {alpha: 1.5}\n", ["controller.alpha", "1.5"]),
    ("target-ess-range", "c.yaml", "prompts: [a]\ncontroller: {target_ess: 2}\n", ["target_ess", "got 2"]),
    ("space-unknown", "c.yaml", "prompts: [a]\nspace: {name: diagonal}\n", ["space.name", "'diagonal'"]),
    ("space-unknown-short", "c.yaml", "prompts: [a]\nspace: diagonal\n", ["space.name", "'diagonal'"]),
    ("space-in-controller", "c.yaml", "prompts: [a]\ncontroller: {space: shared}\n",
     ["controller.space", "section of its own", "space: {name:"]),
    ("horizon-in-controller", "c.yaml", "prompts: [a]\ncontroller: {horizon: 8}\n", ["controller.horizon", "space:"]),
    ("rank-for-shared", "c.yaml", "prompts: [a]\nspace: {name: shared, rank: 4}\n",
     ["space.rank does not apply to control space 'shared'"]),
    ("block-size-zero", "c.yaml", "prompts: [a]\nspace: {name: blocks, block_size: 0}\n", ["space.block_size", "got 0"]),
    ("directions-list", "c.yaml", "prompts: [a]\nspace: {name: subspace, directions: [[1, 0]]}\n",
     ["space.directions", "'head'"]),
    ("selection-unknown", "c.yaml", "prompts: [a]\ncontroller: {selection: worst}\n", ["controller.selection", "worst"]),
    ("max-new-tokens-zero", "c.yaml", "prompts: [a]\nmodel: {max_new_tokens: 0}\n", ["model.max_new_tokens", "got 0"]),
    ("dtype", "c.yaml", "prompts: [a]\nmodel: {dtype: float64}\n", ["model.dtype", "float64"]),
    ("sampling-temperature-zero", "c.yaml", "prompts: [a]\nmodel: {temperature: 0}\n", ["model.temperature", "got 0"]),
    ("top-p", "c.yaml", "prompts: [a]\nmodel: {top_p: 1.5}\n", ["model.top_p", "1.5"]),
    ("top-k", "c.yaml", "prompts: [a]\nmodel: {top_k: 0}\n", ["model.top_k", "got 0"]),
    ("device-spelling", "c.yaml", "prompts: [a]\nmodel: {device: gpu0}\n", ["model.device", "'gpu0'"]),
    ("model-empty", "c.yaml", "prompts: [a]\nmodel: {name: ''}\n", ["model.name", "empty"]),
    ("engine", "c.yaml", "prompts: [a]\nmodel: {engine: turbo}\n", ["model.engine", "turbo"]),
    ("reward-unknown", "c.yaml", "prompts: [a]\nreward: [{name: sentimnt}]\n", ["reward.0.name", "sentimnt"]),
    ("reward-weight-nan", "c.yaml", "prompts: [a]\nreward: [{name: sentiment, weight: .nan}]\n",
     ["reward.0.weight", "finite", "nan"]),
    ("reward-weight-inf", "c.yaml", "prompts: [a]\nreward: [{name: sentiment, weight: .inf}]\n",
     ["reward.0.weight", "finite", "inf"]),
    ("reward-empty", "c.yaml", "prompts: [a]\nreward: []\n", ["reward", "at least one"]),
    ("seed-negative", "c.yaml", "prompts: [a]\nrun: {seed: -1}\n", ["run.seed", "got -1"]),
    ("seed-too-big", "c.yaml", f"prompts: [a]\nrun: {{seed: {2**64}}}\n", ["run.seed", str(2**64)]),
    ("batch-zero", "c.yaml", "prompts: [a]\nrun: {batch_prompts: 0}\n", ["run.batch_prompts", "got 0"]),
    ("output-empty", "c.yaml", "prompts: [a]\nrun: {output: ''}\n", ["run.output", "empty"]),
    ("limit-zero", "c.yaml", "prompts: [a]\nlimit: 0\n", ["limit", "got 0"]),
    ("prompt-source-key", "c.yaml", "prompts: {path: x.csv, txt_field: q}\n", ["txt_field"]),
]


@pytest.mark.reliability("config-files")
@pytest.mark.parametrize("case, name, content, fragments", RAW_CONFIGS, ids=[c[0] for c in RAW_CONFIGS])
def test_bad_config_file(tmp_path, capsys, case, name, content, fragments):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    rc, err = run_main(["run", p, "--no-progress"], capsys)
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.reliability("config-files")
@pytest.mark.parametrize("kind, fragment", [("missing", "not found"), ("directory", "is a directory")])
def test_config_path_problems(tmp_path, capsys, kind, fragment):
    target = tmp_path / ("missing.yaml" if kind == "missing" else "dir.yaml")
    if kind == "directory":
        target.mkdir()
    rc, err = run_main(["run", target], capsys)
    assert rc == 2 and fragment in err and str(target) in err, err


# --------------------------------------------------------------------------------------------
# 2. prompt sources: (id, file name, content, extra PromptSource keys or None, fragments)

PROMPT_FILES = [
    ("txt-not-utf8", "p.txt", b"hello\n\xff\xfe\n", None, ["p.txt", "not UTF-8"]),
    ("jsonl-bad-line", "p.jsonl", '{"prompt": "a"}\n{oops\n', None, ["p.jsonl:2", "not valid JSON"]),
    ("jsonl-no-prompt", "p.jsonl", '{"question": "a"}\n', None, ["p.jsonl:1", "'prompt'"]),
    ("jsonl-duplicate-id", "p.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', None,
     ["duplicate id 'a'"]),
    ("jsonl-empty-prompt", "p.jsonl", '{"id": "q7", "prompt": "  "}\n', None, ["prompt 'q7'", "whitespace-only"]),
    ("jsonl-lone-surrogate", "p.jsonl", '{"id": "q8", "prompt": "x \\udc00"}\n', None, ["prompt 'q8'", "surrogate"]),
    ("jsonl-only-blank", "p.jsonl", "\n\n", None, ["holds no prompts"]),
    ("csv-missing-field", "p.csv", "question,id\nhi,1\n", {"text_field": "prompt"}, ["p.csv:2", "'prompt'", "question"]),
    ("csv-missing-id-field", "p.csv", "question\nhi\n", {"text_field": "question", "id_field": "qid"}, ["'qid'"]),
    ("json-object-no-field", "p.json", '{"rows": [{"prompt": "a"}]}', {}, ["prompts.field", "rows"]),
    ("json-wrong-field", "p.json", '{"rows": [{"prompt": "a"}]}', {"field": "data"}, ["'data'"]),
    ("json-syntax", "p.json", '[{"prompt": "a"},]', {}, ["p.json", "line 1"]),
    ("json-not-records", "p.json", '["a", "b"]', {}, ["record 0", "str"]),
    ("json-text-not-string", "p.json", '[{"prompt": 3}]', {}, ["'prompt'", "int"]),
    ("source-suffix", "p.xlsx", "x", {}, ["p.xlsx", ".parquet"]),
]


@pytest.mark.reliability("prompt-files")
@pytest.mark.parametrize("case, name, content, source, fragments", PROMPT_FILES, ids=[c[0] for c in PROMPT_FILES])
def test_bad_prompt_file(tmp_path, capsys, tiny, case, name, content, source, fragments):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    prompts = str(p) if source is None else {"path": str(p), **source}
    cfg = write_json(tmp_path, good_config(tmp_path, tiny, prompts=prompts))
    rc, err = run_main(["run", cfg, "--no-progress"], capsys)
    assert rc == 2, err
    for f in fragments:
        assert f in err, (f, err)
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.meta.json").exists()


@pytest.mark.reliability("prompt-files")
@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_prompt_path_missing_or_directory(tmp_path, capsys, tiny, kind):
    target = tmp_path / "prompts"
    if kind == "directory":
        target.mkdir()
    cfg = write_json(tmp_path, good_config(tmp_path, tiny, prompts=str(target)))
    rc, err = run_main(["run", cfg], capsys)
    assert rc == 2 and str(target) in err
    assert ("is a directory" if kind == "directory" else "neither a packaged set") in err


@pytest.mark.reliability("prompt-files")
def test_prompt_sources_load(tmp_path):
    """The data-file formats load with a chosen text field (the good path of the table above)."""
    (tmp_path / "p.csv").write_text("qid,question,ref\n7,why is the sky blue,light\n8,hello,\n")
    items = load_prompts({"path": str(tmp_path / "p.csv"), "text_field": "question", "id_field": "qid",
                          "reference_field": "ref"})
    assert [(it.id, it.text, it.reference) for it in items] == [("7", "why is the sky blue", "light"),
                                                                 ("8", "hello", "")]
    (tmp_path / "p.json").write_text(json.dumps({"data": [{"q": "a"}, {"q": "b"}]}))
    items = load_prompts({"path": str(tmp_path / "p.json"), "text_field": "q", "field": "data"})
    assert [(it.id, it.text) for it in items] == [("row1", "a"), ("row2", "b")]
    (tmp_path / "p.jsonl").write_text('{"q": "x"}\n\n{"q": "y"}\n')
    assert [it.text for it in load_prompts({"path": str(tmp_path / "p.jsonl"), "text_field": "q"})] == ["x", "y"]


# --------------------------------------------------------------------------------------------
# 3. `ctrlalign align` flags: (id, extra argv, exit status, fragments). The prompt is "hello".

ALIGN_FLAGS = [
    ("empty-prompt", ["--prompt-text", ""], 2, ["prompt 0", "empty"]),
    ("blank-prompt", ["--prompt-text", " \t "], 2, ["prompt 0", "whitespace-only"]),
    ("undecodable-argv", ["--prompt-text", "caf\udce9"], 2, ["prompt 0", "surrogate"]),
    ("reward-weight-text", ["--reward", "sentiment:abc"], 2, ["sentiment:abc", "'abc'"]),
    ("reward-weight-nan", ["--reward", "sentiment:nan"], 2, ["reward.0.weight", "nan"]),
    ("reward-unknown", ["--reward", "sentimnt"], 2, ["sentimnt"]),
    ("alpha-for-bon", ["--controller", "bon", "--alpha", "0.5"], 2, ["alpha does not apply to controller 'bon'"]),
    ("temperature-for-cem", ["--controller", "cem", "--temperature", "0.3"], 2,
     ["temperature does not apply to controller 'cem'"]),
    ("sigma-negative", ["--sigma", "-1"], 2, ["sigma", "got -1"]),
    ("n-zero", ["-n", "0"], 2, ["num_samples", "got 0"]),
    ("target-ess", ["--target-ess", "1.5"], 2, ["target_ess", "1.5"]),
    ("sigma-not-number", ["--sigma", "big"], 2, ["--sigma", "'big'"]),
    ("space-choice", ["--space", "diagonal"], 2, ["--space", "'diagonal'"]),
    ("rank-zero", ["--space", "subspace", "--rank", "0"], 2, ["space.rank", "got 0"]),
    ("rank-for-shared", ["--space", "shared", "--rank", "4"], 2, ["space.rank does not apply to control space 'shared'"]),
    ("horizon-past-T", ["--horizon", "8"], 2, ["horizon (τ) = 8 exceeds", "4"]),
    ("controller-choice", ["--controller", "ppo"], 2, ["--controller", "'ppo'"]),
    ("top-p-zero", ["--top-p", "0"], 2, ["model.top_p", "got 0"]),
    ("top-k-zero", ["--top-k", "0"], 2, ["model.top_k", "got 0"]),
    ("sampling-temperature", ["--sampling-temperature", "-2"], 2, ["model.temperature", "-2"]),
    ("max-new-tokens", ["--max-new-tokens", "0"], 2, ["model.max_new_tokens", "got 0"]),
    ("seed-negative", ["--seed", "-1"], 2, ["run.seed", "got -1"]),
    ("seed-2^64", ["--seed", str(2**64)], 2, ["run.seed", str(2**64)]),
    ("final-samples", ["--selection", "final", "--final-samples", "0"], 2, ["final_samples", "got 0"]),
    ("system-prompt-surrogate", ["--system-prompt", "x\udcff"], 2, ["system_prompt", "surrogate"]),
    ("device-spelling", ["--device", "gpu"], 2, ["model.device", "'gpu'"]),
    ("device-cuda", ["--device", "cuda"], 2, ["device 'cuda'", "--device cpu"]),
    ("device-cuda-index", ["--device", "cuda:3"], 2, ["device 'cuda:3'"]),
    ("model-empty", ["--model", ""], 2, ["model.name", "empty"]),
    ("model-missing-path", ["--model", "/nonexistent/model/dir"], 2, ["'/nonexistent/model/dir'", "no such folder"]),
    ("model-offline-id", ["--model", "nobody/no-such-model"], 2, ["'nobody/no-such-model'", "not found", "OFFLINE"]),
    ("model-invalid-id", ["--model", "not a valid id!"], 2, ["'not a valid id!'"]),
    ("model-broken-config", ["--model", "{broken}"], 2, ["config.json", "JSON syntax error", "line 1"]),
    ("model-no-config", ["--model", "{empty}"], 2, ["no config.json"]),
    ("model-is-file", ["--model", "{broken}/config.json"], 2, ["is a file"]),
    ("model-not-causal", ["--model", "{encoder}"], 2, ["'distilbert'", "not a causal language model"]),
    ("model-remote-code", ["--model", "{remote}"], 2, ["--trust-remote-code"]),
    ("sigma-overflow", ["--model", "{tiny}", "--sigma", "1e30"], 2, ["sigma (σ) = 1e+30", "overflow", "σ <="]),
    ("sigma-overflow-fp16", ["--model", "{tiny}", "--sigma", "500", "--dtype", "float16"], 2,
     ["sigma (σ) = 500", "float16"]),
    ("long-prompt", ["--model", "{tiny}", "--prompt-text", " ".join(["hello"] * 300)], 2,
     ["prompt 'p0'", "context of 256 tokens", "refused"]),
    ("output-is-dir", ["--model", "{tiny}", "--output", "{tmp}"], 2, ["is a directory"]),
    ("output-under-file", ["--model", "{tiny}", "--output", "{broken}/config.json/out.json"], 2,
     ["config.json", "is a file, not a folder"]),
    ("candidates-is-dir", ["--model", "{tiny}", "--save-candidates", "{tmp}"], 2, ["is a directory"]),
    ("flag-unknown", ["--sigmaa", "1"], 2, ["--sigmaa"]),
]


@pytest.mark.reliability("cli-flags")
@pytest.mark.parametrize("case, extra, status, fragments", ALIGN_FLAGS, ids=[c[0] for c in ALIGN_FLAGS])
def test_bad_align_flags(tmp_path, capsys, models, case, extra, status, fragments):
    subst = {k: str(v) for k, v in models.items()} | {"tmp": str(tmp_path)}
    extra = [x.format(**subst) if x.startswith("{") else x for x in extra]
    prompt = "hello"
    if "--prompt-text" in extra:
        i = extra.index("--prompt-text")
        prompt = extra[i + 1]
        extra = extra[:i] + extra[i + 2:]
    if "--model" not in extra:
        extra = [*extra, "--model", str(models["tiny"])]
    rc, err = run_main(["align", prompt, "--preset", "learning", "-n", "2", "-k", "1", "--max-new-tokens", "4", "-q",
                        *extra], capsys)
    assert rc == status, err
    assert "Traceback" not in err
    for f in fragments:
        assert f.format(**subst) in err, (f, err)


# --------------------------------------------------------------------------------------------
# 4. run flags and output locations


RUN_FLAGS = [
    ("limit-zero", ["--limit", "0"], ["limit", "got 0"]),
    ("limit-text", ["--limit", "many"], ["--limit", "'many'"]),
    ("seed-negative", ["--seed", "-3"], ["run.seed", "got -3"]),
    ("dtype-choice", ["--dtype", "float64"], ["--dtype", "'float64'"]),
    ("device-cuda", ["--device", "cuda"], ["device 'cuda'"]),
    ("output-is-dir", ["--output", "{tmp}"], ["run.output", "is a directory"]),
    ("output-under-file", ["--output", "{cfg}/out.jsonl"], ["c.json", "is a file, not a folder"]),
]


@pytest.mark.reliability("cli-flags")
@pytest.mark.parametrize("case, extra, fragments", RUN_FLAGS, ids=[c[0] for c in RUN_FLAGS])
def test_bad_run_flags(tmp_path, capsys, tiny, case, extra, fragments):
    cfg = write_json(tmp_path, good_config(tmp_path, tiny))
    extra = [x.format(tmp=tmp_path, cfg=cfg) for x in extra]
    rc, err = run_main(["run", cfg, "--no-progress", *extra], capsys)
    assert rc == 2, err
    for f in fragments:
        assert f in err, (f, err)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.reliability("output")
@pytest.mark.parametrize("code, reason", [(errno.EROFS, "read-only"), (errno.ENOSPC, "disk is full"),
                                          (errno.EACCES, "permission denied")])
def test_unwritable_output_ends_in_one_line(tmp_path, capsys, tiny, monkeypatch, code, reason):
    """A read-only file system, a full disk or no permission: exit 1, one line naming the
    file and the cause, results written so far kept."""
    from ctrlalign import store

    cfg = write_json(tmp_path, good_config(tmp_path, tiny))
    calls = {"n": 0}
    real = os.fsync

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] >= 2:  # the first prompt is written, the second fails
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(store.os, "fsync", failing_fsync)
    rc, err = run_main(["run", cfg, "--no-progress", "-q"], capsys)
    assert rc == 1 and "Traceback" not in err
    assert f"cannot write {tmp_path / 'out.jsonl'}: " in err and reason in err
    assert "run the same command to resume" in err
    kept = read_results(tmp_path / "out.jsonl")
    assert [r["id"] for r in kept][:1] == ["p0"]  # the line whose fsync failed may be there too
    monkeypatch.setattr(store.os, "fsync", real)
    rc, err = run_main(["run", cfg, "--no-progress", "-q"], capsys)
    assert rc == 0, err
    assert [r["id"] for r in read_results(tmp_path / "out.jsonl")] == ["p0", "p1"]


@pytest.mark.reliability("output")
def test_read_only_location_for_the_lock(tmp_path, capsys, tiny, monkeypatch):
    cfg = write_json(tmp_path, good_config(tmp_path, tiny, run={"output": str(tmp_path / "ro" / "out.jsonl")}))

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    rc, err = run_main(["run", cfg, "--no-progress"], capsys)
    assert rc == 1 and "read-only" in err and "out.jsonl.lock" in err


# --------------------------------------------------------------------------------------------
# 5. Python API


#: (id, a call of the API, the fragment its error names)
API_ERRORS = [
    ("unknown-prompt-set", lambda: load_prompts("no-such-set"), "'no-such-set'"),
    ("empty-prompt", lambda: load_prompts(["a", ""]), "prompt 'p1'"),
    ("prompt-not-text", lambda: load_prompts([3]), "prompt 'p0' must be text, got int"),
    ("seed-negative", lambda: RunConfig(prompts=["x"], run={"seed": -1}), "run.seed"),
    ("reward-weight-nan", lambda: RunConfig(prompts=["x"], reward=[{"name": "sentiment", "weight": float("nan")}]),
     "weight"),
    ("device-cuda", lambda: check_device("cuda"), "device 'cuda'"),
    ("device-unknown", lambda: check_device("tpu"), "'tpu'"),
    ("reward-option", lambda: build_reward([RewardTerm(name="sentiment", options={"lexicon": 1})]),
     "reward 'sentiment'"),
    ("reward-references", lambda: build_reward([RewardTerm(name="embedding", options={"references": "from_prompts"})],
                                               load_prompts(["a"])), "no reference"),
    ("align-prompt-not-state", lambda: ca.align(ca.LinearGaussian(torch.eye(4), horizon=2, hidden_size=2),
                                                ca.QuadraticReward(torch.zeros(4)), ca.AISP(), "a prompt"),
     "'a prompt'"),
]


@pytest.mark.reliability("api")
@pytest.mark.parametrize("case, call, fragment", API_ERRORS, ids=[c[0] for c in API_ERRORS])
def test_api_errors_name_the_value(case, call, fragment):
    with pytest.raises((ValueError, ConfigError)) as exc:
        call()
    assert fragment in str(exc.value), (fragment, str(exc.value))


# --------------------------------------------------------------------------------------------
# 6. output that cannot mix or lose results


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctrlalign.cli", *args], capture_output=True, text=True,
                          env=_env(), timeout=300, check=False, **kw)


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


@pytest.mark.reliability("output")
def test_changed_prompt_is_refused_and_overwrite_reruns(tmp_path, capsys, tiny):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hello"}\n{"id": "b", "prompt": "the sea"}\n')
    cfg = write_json(tmp_path, good_config(tmp_path, tiny, prompts=str(prompts)))
    assert run_main(["run", cfg, "-q", "--no-progress"], capsys)[0] == 0
    before = (tmp_path / "out.jsonl").read_text()
    prompts.write_text('{"id": "a", "prompt": "hello"}\n{"id": "b", "prompt": "the moon"}\n')
    rc, err = run_main(["run", cfg, "-q", "--no-progress"], capsys)
    assert rc == 2 and "prompt 'b' changed" in err and "'the moon'" in err and "--overwrite" in err
    assert (tmp_path / "out.jsonl").read_text() == before
    rc, err = run_main(["run", cfg, "-q", "--no-progress", "--overwrite"], capsys)
    assert rc == 0, err
    assert [r["prompt"] for r in read_results(tmp_path / "out.jsonl")] == ["hello", "the moon"]


@pytest.mark.reliability("output")
def test_corrupt_middle_line_is_reported_and_nothing_deleted(tmp_path, capsys, tiny):
    cfg = write_json(tmp_path, good_config(tmp_path, tiny, prompts=["hello", "the sea", "a big dog"]))
    out = tmp_path / "out.jsonl"
    assert run_main(["run", cfg, "-q", "--no-progress", "--limit", "2"], capsys)[0] == 0
    lines = out.read_text().splitlines(keepends=True)
    corrupt = lines[0] + '{"id": "p1", "resp\n' + lines[1][:10]  # a bad middle line and a partial last line
    out.write_text(corrupt)
    rc, err = run_main(["run", cfg, "-q", "--no-progress"], capsys)
    assert rc == 2 and f"{out}:2: corrupt line" in err
    assert out.read_text() == corrupt  # nothing deleted, not even the partial last line


@pytest.mark.reliability("output")
def test_failed_start_does_not_block_the_corrected_config(tmp_path, capsys, tiny):
    bad = write_json(tmp_path, good_config(tmp_path, tiny, model={"name": str(tmp_path / "typo")}))
    rc, err = run_main(["run", bad, "-q"], capsys)
    assert rc == 2 and "typo" in err
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.meta.json").exists()
    good = write_json(tmp_path, good_config(tmp_path, tiny), name="good.json")
    rc, err = run_main(["run", good, "-q", "--no-progress"], capsys)
    assert rc == 0, err


@pytest.mark.reliability("output")
def test_raising_limit_continues_and_summary_and_candidates(tmp_path, capsys, tiny):
    cfg = write_json(tmp_path, good_config(tmp_path, tiny, prompts=["hello", "the sea", "a big dog"],
                                           run={"save_candidates": True}))
    out = tmp_path / "out.jsonl"
    assert run_main(["run", cfg, "--no-progress", "--limit", "1"], capsys)[0] == 0
    first = out.read_text()
    rc, err = run_main(["run", cfg, "--no-progress", "--limit", "3"], capsys)
    assert rc == 0, err
    assert "1 already done" in err and out.read_text().startswith(first)
    assert [r["id"] for r in read_results(out)] == ["p0", "p1", "p2"]
    assert "aligned reward: mean" in err and "plain reward" in err and "95% CI" in err
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["prompts"] == 3 and summary["aligned"]["n"] == 3 and len(summary["difference"]["ci95"]) == 2
    cands = read_results(tmp_path / "out.candidates.jsonl")
    assert len(cands) == 3 * 2 * 1  # prompts × n × k
    row = cands[0]
    assert {"id", "iteration", "sample", "text", "reward", "log_weight", "logprob", "base_logprob",
            "token_logprobs", "base_token_logprobs"} <= set(row)
    assert len(row["token_logprobs"]) == row["length"]


@pytest.mark.reliability("output")
def test_candidates_of_unfinished_prompts_are_pruned(tmp_path, capsys, tiny):
    cfg = write_json(tmp_path, good_config(tmp_path, tiny, run={"save_candidates": True}))
    cands = tmp_path / "out.candidates.jsonl"
    cands.write_text(json.dumps({"id": "p0", "iteration": 1, "sample": 0}) + "\n")  # left by a kill
    assert run_main(["run", cfg, "-q", "--no-progress"], capsys)[0] == 0
    rows = read_results(cands)
    assert len(rows) == 4 and len({(r["id"], r["iteration"], r["sample"]) for r in rows}) == 4


@pytest.mark.reliability("output")
def test_second_run_on_the_same_output_is_refused_naming_the_holder(tmp_path, tiny):
    prompts = [f"hello {i}" for i in range(40)]
    cfg = write_json(tmp_path, good_config(tmp_path, tiny, prompts=prompts, model={"max_new_tokens": 16}))
    first = subprocess.Popen([sys.executable, "-m", "ctrlalign.cli", "run", str(cfg), "--no-progress"], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "out.jsonl.lock").exists():
            time.sleep(0.05)
        while time.time() < deadline and not (tmp_path / "out.jsonl.lock").read_text().strip():
            time.sleep(0.05)
        r = cli("run", str(cfg), "--no-progress")
        assert r.returncode == 2, r.stderr
        assert "in use by another run" in r.stderr and f"pid {first.pid}" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        first.kill()
        first.wait()


@pytest.mark.reliability("output")
def test_ctrl_c_says_what_is_saved_and_the_same_command_resumes(tmp_path, tiny):
    prompts = [f"hello {i}" for i in range(40)]
    cfg = write_json(tmp_path, good_config(tmp_path, tiny, prompts=prompts, model={"max_new_tokens": 16}))
    out = tmp_path / "out.jsonl"
    # a shell's background job runs with SIGINT ignored, which a child inherits (Python then
    # installs no KeyboardInterrupt handler): while starting the child, catch SIGINT here, so
    # that the child starts with the default disposition wherever the suite runs
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ctrlalign.cli", "run", str(cfg), "--no-progress", "-q"],
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.time() + 240
    while time.time() < deadline and len(read_results(out)) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [x for x in err.strip().splitlines() if x]
    assert len(lines) == 1 and "Traceback" not in err, err
    saved = len(read_results(out))
    assert f"interrupted: {saved} of 40 results are saved in {out}" in lines[0]
    assert "run the same command to resume" in lines[0]
