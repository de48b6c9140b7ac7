"""Batched AISP vs Best-of-N wall-clock at equal total samples, on the default model (CPU or GPU).

P prompts, N = n·k samples per prompt, T new tokens (fixed length). Every decode call has
the same number of rows R = D·N:

* ``bon``: Best-of-N, D prompts per call with N samples each (P/D calls);
* ``aisp-stream``: AISP through :func:`ctrlalign.align_stream` with S = κ·D = k·D prompts in
  flight and n samples each (R = S·n rows per call, k rounds per prompt);
* ``aisp-plain``: AISP through :func:`ctrlalign.align` on D prompts at a time (D·n rows per
  call): what a user gets without the scheduler.

The ratio that matters is ``aisp-stream / bon`` (target ≤ 1.10). Prints a table and writes JSON.

Usage::

    python benchmarks/batched_aisp.py --out benchmarks/results/batched_aisp.json [--engine static --device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

import ctrlalign as ca
from ctrlalign.dynamics.decoding import SamplingConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_speed import PROMPTS  # the same 8 prompts (this script's folder is on sys.path)


def timed(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    lm = ca.CausalLM.from_pretrained(
        "default", device=args.device, dtype=dtype, engine=args.engine, base_logprobs=False,
        sampling=SamplingConfig(max_new_tokens=args.T, ignore_eos=True))
    reward = ca.LexiconSentiment()
    prompts = (PROMPTS * ((args.prompts + len(PROMPTS) - 1) // len(PROMPTS)))[: args.prompts]
    prompts = [f"{p} ({i})" for i, p in enumerate(prompts)]  # distinct prompts
    n, k, D = args.num_samples, args.num_iterations, args.batch_prompts
    N = n * k
    aisp = ca.AISP(num_samples=n, num_iterations=k, sigma=0.3, target_ess=0.5)
    bon = ca.BestOfN(num_samples=N, num_iterations=1, sigma=0.0)

    def bon_run():
        return [ca.align(lm, reward, bon, prompts[i:i + D], seed=0) for i in range(0, len(prompts), D)]

    def stream_run():
        return ca.align_stream(lm, reward, aisp, prompts, batch_prompts=k * D, space=ca.Shared(), seed=0)

    def plain_run():
        return [ca.align(lm, reward, aisp, prompts[i:i + D], seed=0) for i in range(0, len(prompts), D)]

    timed(lambda: ca.align(lm, reward, ca.BestOfN(num_samples=2, num_iterations=1), prompts[:1]))  # warm-up
    rows = {}
    for rep in range(args.repeats):
        for name, fn in (("bon", bon_run), ("aisp-stream", stream_run), ("aisp-plain", plain_run)):
            secs, out = timed(fn)
            rows.setdefault(name, []).append(secs)
            if name == "aisp-stream":
                rows.setdefault("_rows", out.meta["rows"])
            print(f"rep {rep} {name:<12} {secs:8.2f} s", flush=True)
    best = {name: min(v) for name, v in rows.items() if not name.startswith("_")}
    tokens = len(prompts) * N * args.T
    result = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": args.threads,
                    "device": args.device, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "torch": torch.__version__},
        "settings": {"prompts": len(prompts), "n": n, "k": k, "N": N, "D_bon": D, "S_stream": k * D, "T": args.T,
                     "rows_per_call": D * N, "engine": args.engine, "repeats": args.repeats},
        "seconds": rows, "best_seconds": best,
        "tokens_per_second": {name: tokens / s for name, s in best.items()},
        "ratio_stream_over_bon": best["aisp-stream"] / best["bon"],
        "ratio_plain_over_bon": best["aisp-plain"] / best["bon"],
        "stream_rows_per_call": rows.pop("_rows"),
    }
    print("\n| run | best s | tok/s | / BoN |\n|---|---|---|---|")
    for name, s in best.items():
        print(f"| {name} | {s:.2f} | {tokens / s:.0f} | {s / best['bon']:.3f} |")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--prompts", type=int, default=8, help="P, prompts")
    ap.add_argument("--num-samples", type=int, default=8, help="n")
    ap.add_argument("--num-iterations", type=int, default=4, help="k")
    ap.add_argument("--batch-prompts", type=int, default=1, help="D, prompts per Best-of-N call")
    ap.add_argument("--T", type=int, default=16, help="new tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engine", default="eager", choices=["eager", "static"])
    args = ap.parse_args()
    result = run(args)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
