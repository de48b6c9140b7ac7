"""The main job: ``ctrlalign run`` — resumable across processes, sharded over torchrun ranks.

A tiny random Llama (saved to disk as a real transformers checkpoint) stands in for the
model; the reward is the real VADER lexicon. The end-to-end run on the real default model is
in the slow test at the bottom.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_model, make_tokenizer

from ctrlalign.store import read_results

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["happy good love", "sad bad hate", "the sea", "a big dog", "the small cat", "the sun and the moon",
         "tell me a story", "write a poem", "why is the sky blue", "hello", "thanks", "what is love"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    make_model("llama").save_pretrained(path)
    make_tokenizer(chat_template=True).save_pretrained(path)
    return path


def write_config(tmp_path: Path, checkpoint: Path, prompts: list[str], *, output: str = "out.jsonl",
                 sigma: float = 0.5, batch: int = 1, tokens: int = 12) -> Path:
    cfg = {
        "prompts": prompts,
        "model": {"name": str(checkpoint), "max_new_tokens": tokens},
        "reward": [{"name": "sentiment"}],
        "controller": {"name": "aisp", "num_samples": 4, "num_iterations": 2, "sigma": sigma,
                       "temperature": 0.2, "alpha": 0.9},
        "run": {"output": str(tmp_path / output), "seed": 3, "batch_prompts": batch},
    }
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "ctrlalign.cli", *args], capture_output=True, text=True,
                          env=e, timeout=300, check=False, **kw)


def test_run_writes_one_line_per_prompt_and_resumes(tmp_path, tiny_checkpoint):
    cfg = write_config(tmp_path, tiny_checkpoint, WORDS[:4], batch=2)
    r = cli("run", str(cfg), "--no-progress")
    assert r.returncode == 0, r.stderr
    recs = read_results(tmp_path / "out.jsonl")
    assert [x["id"] for x in recs] == ["p0", "p1", "p2", "p3"]
    for x in recs:
        assert {"response", "reward", "base_response", "base_reward", "trace", "config_hash", "versions"} <= set(x)
        assert x["reward_calls"] == 8 and len(x["trace"]) == 2
        assert x["reward"] >= max(t["max_reward"] for t in x["trace"]) - 1e-9
    # a second run with the same command does nothing and keeps the file as it was
    before = (tmp_path / "out.jsonl").read_text()
    r = cli("run", str(cfg), "--no-progress")
    assert r.returncode == 0 and "4 already done" in r.stderr
    assert (tmp_path / "out.jsonl").read_text() == before


def test_changed_config_is_refused_unless_overwrite(tmp_path, tiny_checkpoint):
    cfg = write_config(tmp_path, tiny_checkpoint, WORDS[:2])
    assert cli("run", str(cfg), "--no-progress").returncode == 0
    cfg = write_config(tmp_path, tiny_checkpoint, WORDS[:2], sigma=0.9)
    r = cli("run", str(cfg), "--no-progress")
    assert r.returncode == 2
    assert "different configuration" in r.stderr and "controller.sigma" in r.stderr
    assert len(read_results(tmp_path / "out.jsonl")) == 2  # nothing lost
    r = cli("run", str(cfg), "--no-progress", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert len(read_results(tmp_path / "out.jsonl")) == 2


def test_bad_config_file_names_the_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("prompts: [a]\ncontroller: {name: aisp, sigma: -1, nsamples: 3}\n")
    r = cli("run", str(p))
    assert r.returncode == 2
    assert "controller.sigma" in r.stderr and "controller.nsamples: unknown key" in r.stderr


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, tiny_checkpoint):
    prompts = WORDS * 3  # 36 prompts, one per batch: long enough to be killed mid-run
    prompts = [f"{p} {i}" for i, p in enumerate(prompts)]
    cfg = write_config(tmp_path, tiny_checkpoint, prompts, tokens=16)
    out = tmp_path / "out.jsonl"
    e = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
             PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "ctrlalign.cli", "run", str(cfg), "--no-progress"],
                            env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(read_results(out)) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = read_results(out)
    assert 3 <= len(first) < len(prompts), "the run was not killed mid-way"
    # simulate a kill in the middle of writing a line
    with open(out, "a") as fh:
        fh.write('{"id": "p999", "response": "half a li')
    r = cli("run", str(cfg), "--no-progress")
    assert r.returncode == 0, r.stderr
    final = read_results(out)
    ids = [x["id"] for x in final]
    assert sorted(ids, key=lambda s: int(s[1:])) == [f"p{i}" for i in range(len(prompts))]
    assert len(ids) == len(set(ids))
    assert final[: len(first)] == first  # finished prompts untouched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_shards_prompts_and_merges(tmp_path, tiny_checkpoint):
    prompts = WORDS[:5]
    single = tmp_path / "single"
    single.mkdir()
    cfg = write_config(single, tiny_checkpoint, prompts, batch=2)
    assert cli("run", str(cfg), "--no-progress").returncode == 0
    ref = {x["id"]: x for x in read_results(single / "out.jsonl")}

    dist = tmp_path / "dist"
    dist.mkdir()
    cfg = write_config(dist, tiny_checkpoint, prompts, batch=2)
    e = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
             PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={_free_port()}", "-m", "ctrlalign.cli", "run", str(cfg), "--no-progress"],
                       capture_output=True, text=True, env=e, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    merged = read_results(dist / "out.jsonl")
    assert [x["id"] for x in merged] == [f"p{i}" for i in range(5)]
    assert (dist / "out.rank0-of-2.jsonl").exists() and (dist / "out.rank1-of-2.jsonl").exists()
    assert [x["id"] for x in read_results(dist / "out.rank1-of-2.jsonl")] == ["p1", "p3"]
    # sharding never changes a prompt's result: each prompt owns its generators
    for x in merged:
        assert x["response"] == ref[x["id"]]["response"]
        assert x["reward"] == pytest.approx(ref[x["id"]]["reward"], abs=1e-6)


@pytest.mark.slow
def test_cli_align_end_to_end_on_the_default_model():
    """The README's main job on the real packaged SmolLM2: a response, its reward, the plain
    model's response and reward, and a trace with n·k reward calls."""
    r = cli("align", "Write one sentence about the sea.", "--preset", "learning", "-n", "4", "-k", "2",
            "--max-new-tokens", "16", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(r.stdout)
    assert rec["response"] and rec["base_response"]
    assert rec["reward_calls"] == 8 and len(rec["trace"]) == 2
    assert -1.0 <= rec["base_reward"] <= 1.0 and -1.0 <= rec["reward"] <= 1.0
    assert rec["reward"] >= max(t["max_reward"] for t in rec["trace"]) - 1e-9


def test_reward_failure_names_prompt_and_sample_and_keeps_finished_prompts(tmp_path, tiny_checkpoint):
    """A reward that raises on the third prompt stops the run with a RewardError naming the
    prompt and sample; the two prompts finished before it stay in the results file, and a
    rerun after the fix completes only the missing ones."""
    import ctrlalign as ca
    from ctrlalign._checks import RewardError
    from ctrlalign.config import RunConfig
    from ctrlalign.rewards import register_reward
    from ctrlalign.rewards.registry import REWARDS
    from ctrlalign.runner import run

    class Picky(ca.Reward):
        name = "picky"
        broken = True

        def __call__(self, prompts, outcomes):
            import torch

            out = torch.zeros(outcomes.num_prompts, outcomes.num_samples)
            for d, p in enumerate(prompts):
                if Picky.broken and p.startswith("the sea"):
                    raise RuntimeError("cannot score the sea")
                out[d] = torch.tensor([float(len(t)) for t in outcomes.texts[d]])
            return out

    register_reward("picky", Picky)
    try:
        cfg = RunConfig.model_validate({
            "prompts": WORDS[:4], "model": {"name": str(tiny_checkpoint), "max_new_tokens": 6},
            "reward": ["picky"], "controller": {"name": "aisp", "num_samples": 3, "num_iterations": 1},
            "run": {"output": str(tmp_path / "out.jsonl"), "batch_prompts": 1, "base": False},
        })
        with pytest.raises(RewardError, match=r"raised RuntimeError: cannot score the sea.*prompt 0.*sample 0.*0=p2"):
            run(cfg, progress=False, log=lambda s: None)
        assert [x["id"] for x in read_results(tmp_path / "out.jsonl")] == ["p0", "p1"]
        Picky.broken = False
        run(cfg, progress=False, log=lambda s: None)
        assert [x["id"] for x in read_results(tmp_path / "out.jsonl")] == ["p0", "p1", "p2", "p3"]
    finally:
        REWARDS.pop("picky")
