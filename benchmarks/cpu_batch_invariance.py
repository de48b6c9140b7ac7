"""Batch invariance of the eager engine on the default model (SmolLM2-135M, float32, CPU).

Two parts (each well under a minute with one thread):

* ``speed``: controlled rollouts with base log-probabilities, D prompts × n samples × T tokens
  (fixed length), tokens per second of ``batch_invariant=False`` (one left-padded batch) and
  ``True`` (prompt by prompt), best of ``--repeats`` CPU times, repetitions interleaved;
* ``invariance``: 8 prompts × 8 samples × 16 tokens, each prompt alone vs in the batch of 8:
  samples whose tokens differ, and samples whose logprobs / base logprobs differ in any bit.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/cpu_batch_invariance.py speed [--D 4 --n 8 --T 32]
    OMP_NUM_THREADS=1 python benchmarks/cpu_batch_invariance.py invariance
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from cpu_speed import PROMPTS  # the same 8 prompts (this script's folder is on sys.path)

from ctrlalign import CausalLM, SamplingConfig, make_generators


def gens(prompts: list[str]) -> list[torch.Generator]:
    return [g.rollout for g in make_generators(0, prompts)]


def engines(lm: CausalLM, sampling: SamplingConfig) -> dict[bool, CausalLM]:
    """batch_invariant → a CausalLM on the same weights."""
    return {
        inv: CausalLM(lm.model, lm.tokenizer, sampling=sampling, verify=False,
                      engine_options={"batch_invariant": inv})
        for inv in (False, True)
    }


def speed(lm: CausalLM, D: int, n: int, T: int, repeats: int) -> None:
    """Tokens/s of a controlled rollout (base logprobs on), each mode, best CPU time."""
    prompts = PROMPTS[:D]
    V = 0.5 * torch.randn(D, n, T, lm.hidden_size, generator=torch.Generator().manual_seed(0))
    lms = engines(lm, SamplingConfig(max_new_tokens=T, ignore_eos=True))
    ctxs = {k: m.prepare(prompts) for k, m in lms.items()}
    times: dict[bool, list[float]] = {k: [] for k in lms}
    for k, m in lms.items():  # warm-up
        m.rollout(ctxs[k], V, gens(prompts), n)
    for _ in range(repeats):
        for k, m in lms.items():
            c0 = time.process_time()
            m.rollout(ctxs[k], V, gens(prompts), n)
            times[k].append(time.process_time() - c0)
    base = D * n * T / min(times[False])
    for k, ts in times.items():
        tps = D * n * T / min(ts)
        print(f"batch_invariant={k!s:5}  D={D} n={n} T={T}: {tps:7.1f} tok/s "
              f"(CPU s {[round(t, 2) for t in ts]}), {tps / base:.2f}x of batched")


def invariance(lm: CausalLM, n: int = 8, T: int = 16) -> None:
    """Samples (of 8·n) differing between alone and batched, per mode."""
    for inv, m in engines(lm, SamplingConfig(max_new_tokens=T)).items():
        batch = m.rollout(m.prepare(PROMPTS), None, gens(PROMPTS), n)
        tok = lp = blp = 0
        for j, p in enumerate(PROMPTS):
            a = m.rollout(m.prepare([p]), None, gens([p]), n)
            tok += int((a.tokens[0] != batch.tokens[j]).any(-1).sum())
            lp += int((a.logprobs[0] != batch.logprobs[j]).any(-1).sum())
            blp += int((a.base_logprobs[0] != batch.base_logprobs[j]).any(-1).sum())
        print(f"batch_invariant={inv!s:5}  8 prompts x {n} samples x {T} tokens, alone vs batched: "
              f"tokens differ in {tok}, logprobs in {lp}, base logprobs in {blp} of {8 * n} samples")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["speed", "invariance"])
    ap.add_argument("--D", type=int, default=4)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    lm = CausalLM.from_pretrained("default")
    if args.part == "speed":
        speed(lm, args.D, args.n, args.T, args.repeats)
    else:
        invariance(lm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
