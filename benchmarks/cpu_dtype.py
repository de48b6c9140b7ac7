"""The main job in float32 and in bfloat16 on CPU: time, reward and text quality, side by side.

``ctrlalign align PROMPT`` as the README runs it, on the README's prompt and the eight others of
``tests/test_main_job.py``, for four configurations on one machine in one run:

* ``speculative`` (the default preset) in float32 and in bfloat16 (what ``--dtype auto`` picks on
  a CPU with AVX512-BF16 or AMX);
* ``learning`` (the previous default, 16 samples × 8 rounds × 32 tokens) in float32 and bfloat16.

Per configuration: the mean seconds of ``align`` per prompt (``seconds_batch``: the controller and
the plain model's one response, the model already loaded), the kept response's reward, its
distinct-2 ratio, and how many kept responses are *degenerate* (distinct-2 more than 0.1 below the
plain model's, the main-job test's rule). Paired over prompts: bfloat16 − float32 in seconds and
in reward, with 95% Student-t intervals.

Equal in distribution, not bitwise: bfloat16 weights and activations move the next-token law. The
script also reports the total-variation distance between the float32 and bfloat16 next-token
distributions along a float32-sampled 32-token continuation of each prompt (teacher forced), and,
as a yardstick, float32 at temperature 1.1 against temperature 1.

Resumable: every finished (configuration, prompt) is appended to ``--out``'s JSONL; a rerun
skips them. Usage (a speed benchmark: alone on the machine, so under the lock)::

    flock /work/bench.lock python benchmarks/cpu_dtype.py [--threads 1] [--prompts 9]
    python benchmarks/cpu_dtype.py --report-only
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_main_job import OTHERS, README_PROMPT, TOLERANCE

from ctrlalign.bench.agreement import continuation_tv
from ctrlalign.bench.diversity import distinct_n
from ctrlalign.bench.stats import paired_diff_ci
from ctrlalign.build import (
    build_controller,
    build_dynamics,
    build_reward,
    build_selection,
    build_space,
)
from ctrlalign.cli import align_config, build_parser
from ctrlalign.data import PromptItem
from ctrlalign.models import load_packaged
from ctrlalign.solve import solve_batch

#: label → ``ctrlalign align`` flags
CONFIGS = {
    "speculative, float32": ["--dtype", "float32"],
    "speculative, bfloat16": ["--dtype", "bfloat16"],
    "learning, float32": ["--preset", "learning", "--dtype", "float32"],
    "learning, bfloat16": ["--preset", "learning", "--dtype", "bfloat16"],
}
PROMPTS = [README_PROMPT, *OTHERS]
OUT = ROOT / "benchmarks/results/cpu_dtype.jsonl"


@functools.cache
def setup(label: str) -> tuple:
    """(config, dynamics, controller, space) of a configuration, built once."""
    cfg = align_config(build_parser().parse_args(["align", "x", *CONFIGS[label]]))
    return cfg, build_dynamics(cfg.model), build_controller(cfg.controller), build_space(cfg.space)


def run_config(label: str, prompts: list[str], done: set, out: Path) -> None:
    """Align each prompt not yet in ``done`` with one configuration."""
    todo = [p for p in prompts if (label, p) not in done]
    if not todo:
        return
    cfg, dyn, ctrl, space = setup(label)
    for k, text in enumerate(todo):
        item = PromptItem(id=f"p{k}", text=text)
        reward = build_reward(cfg.reward, [item])
        t0 = time.perf_counter()
        rec = solve_batch(dyn, reward, ctrl, [item], cfg.run.seed, base=True, space=space,
                          selection=build_selection(cfg.controller))[0]
        row = {"config": label, "prompt": text, "seconds": time.perf_counter() - t0, "reward": rec["reward"],
               "response": rec["response"], "base_response": rec["base_response"], "base_reward": rec["base_reward"],
               "distinct2": distinct_n(rec["response"], 2), "base_distinct2": distinct_n(rec["base_response"], 2),
               "dtype": str(dyn.dtype).removeprefix("torch.")}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{label:24s} {row['seconds']:6.1f}s reward {row['reward']:.3f} d2 {row['distinct2']:.2f} | "
              f"{row['response'][:70]!r}", flush=True)


def bf16_agreement(prompts: list[str], T: int = 32) -> dict:
    """Mean and max TV between float32 and bfloat16 next-token laws along a float32-sampled
    continuation of each prompt (and float32 at temperature 1.1 against 1, the yardstick):
    :func:`ctrlalign.bench.agreement.continuation_tv`."""
    m32, tok = load_packaged("smollm2-135m")
    m16, _ = load_packaged("smollm2-135m", dtype=torch.bfloat16)
    tv, yard = continuation_tv(m32, m16, tok, prompts, new_tokens=T)
    return {"positions": int(tv.numel()), "tv_mean": float(tv.mean()), "tv_max": float(tv.max()),
            "tv_temperature_1_1_mean": float(yard.mean())}


def report(rows: list[dict], tv: dict | None, meta: dict) -> str:
    """The markdown table: one line per configuration, then the paired bfloat16 − float32 lines."""
    by = {lb: {r["prompt"]: r for r in rows if r["config"] == lb} for lb in CONFIGS}
    lines = ["| configuration | prompts | align s / prompt | reward | distinct-2 | degenerate |",
             "|---|---|---|---|---|---|"]
    for lb, rs in by.items():
        if not rs:
            continue
        v = list(rs.values())
        bad = sum(r["distinct2"] < r["base_distinct2"] - TOLERANCE for r in v)
        lines.append(f"| {lb} | {len(v)} | {np.mean([r['seconds'] for r in v]):.1f} | "
                     f"{np.mean([r['reward'] for r in v]):.3f} | {np.mean([r['distinct2'] for r in v]):.2f} | "
                     f"{bad}/{len(v)} |")
    out = ["\n".join(lines), ""]
    for preset in ("speculative", "learning"):
        a, b = by[f"{preset}, bfloat16"], by[f"{preset}, float32"]
        common = [p for p in a if p in b]
        if len(common) < 2:
            continue
        ratio = np.mean([a[p]["seconds"] for p in common]) / np.mean([b[p]["seconds"] for p in common])
        dr = paired_diff_ci([a[p]["reward"] for p in common], [b[p]["reward"] for p in common])
        out.append(f"- {preset}: bfloat16 takes ×{ratio:.2f} float32's align time; reward bfloat16 − float32 "
                   f"{dr.mean:+.3f} [{dr.low:+.3f}, {dr.high:+.3f}] over {len(common)} prompts")
    old, new = by["learning, float32"], by["speculative, bfloat16"]
    common = [p for p in new if p in old]
    if common:
        ratio = np.mean([new[p]["seconds"] for p in common]) / np.mean([old[p]["seconds"] for p in common])
        out.append(f"- the default now (speculative, bfloat16 by `--dtype auto`) takes ×{ratio:.2f} the previous "
                   f"default's (learning, float32) align time")
    if tv:
        out.append(f"- next-token TV float32 vs bfloat16 over {tv['positions']} positions: mean {tv['tv_mean']:.4f}, "
                   f"max {tv['tv_max']:.4f} (float32 at temperature 1.1 vs 1: mean {tv['tv_temperature_1_1_mean']:.4f})")
    out.append(f"- {meta.get('threads')} thread(s); load average at the start {meta.get('load_start')}, "
               f"at the end {meta.get('load_end')} (`uptime`)")
    return "\n".join(out) + "\n"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip().split(
            "load average:")[-1].strip()
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"how many of the {len(PROMPTS)} prompts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    meta_path = args.out.with_suffix(".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if not args.report_only:
        os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        torch.set_num_threads(args.threads)
        meta.update(threads=args.threads, load_start=uptime())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = [json.loads(x) for x in args.out.read_text().splitlines()] if args.out.exists() else []
        done = {(r["config"], r["prompt"]) for r in rows}
        prompts = PROMPTS[: args.prompts]
        for prompt in prompts:  # configurations alternate prompt by prompt: load drifts hit them alike
            for label in CONFIGS:
                run_config(label, [prompt], done, args.out)
        if "tv" not in meta:
            meta["tv"] = bf16_agreement(prompts)
        meta["load_end"] = uptime()
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    rows = [json.loads(x) for x in args.out.read_text().splitlines()]
    table = report(rows, meta.get("tv"), meta)
    print(table)
    args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
