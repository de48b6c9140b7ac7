"""Side by side on CPU: the llama.cpp engine, the eager engine and raw llama.cpp decode calls.

One prompt ("Write a short poem about the sea.", chat template), n rows, T = 64 new tokens
(fixed length, ``ignore_eos``), the packaged SmolLM2-135M-Instruct, ``--threads`` threads for
both torch and llama.cpp. Tokens per second = n·T / wall time of one rollout (prefill excluded,
the prefix is reused), best of ``--repeats`` at 1 and 4 rows, one run above:

* ``llamacpp``: :meth:`CausalLM.rollout` uncontrolled (V = None), controlled with a per-token
  control (V (1, n, T, d): one W·v_t per step) and with a shared one (a stride-0 view: one W·v
  per rollout); base log-probabilities on (the library default);
* ``eager``: uncontrolled and per-token (a shared control costs it the same per step);
* ``llamacpp_q8``: the llama.cpp engine on the same weights re-quantised to Q8_0
  (:func:`~ctrlalign.dynamics.engines.to_gguf.write_llama_gguf`, ``weights="q8_0"``), uncontrolled;
* ``raw``: the same ``llama_decode`` calls the engine makes (n tokens, n sequences sharing the
  prompt's cells, logits of all n rows copied out), the next tokens the argmax of those logits
  in numpy: llama.cpp's speed with the least Python around it.

Run it alone (``flock /work/bench.lock``), at normal priority; it prints the load average.

Usage::

    python benchmarks/llamacpp_speed.py [--rows 1 4 16 32 128] [--T 64] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from ctrlalign import CausalLM, SamplingConfig
from ctrlalign.dynamics.engines.llamacpp_runtime import Sequences
from ctrlalign.dynamics.engines.to_gguf import write_llama_gguf

PROMPT = "Write a short poem about the sea."


def best_time(fn, repeats: int) -> float:
    """The least wall time of ``repeats`` calls."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def raw_decode(lm: CausalLM, ctx, n: int, T: int) -> None:
    """T − 1 llama_decode calls of n tokens (the engine's shape), argmax next tokens in numpy."""
    rt = lm.engine.runtime
    prefix = ctx.prefix
    rows = Sequences(rt, rt.acquire(n))
    for dst in rows.ids.tolist():
        rt.copy(int(prefix.sequences.ids[0]), dst)
    tok = np.full(n, int(prefix.logits[0].argmax()), dtype=np.int32)
    pos = np.repeat(prefix.lengths, n)
    for t in range(T - 1):
        tok = rt.decode(tok, pos + t, rows.ids).argmax(1).astype(np.int32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 32, 128])
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--engines", nargs="+", default=["raw", "llamacpp", "llamacpp_q8", "eager"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    T = args.T
    sampling = SamplingConfig(max_new_tokens=T, ignore_eos=True)
    eager = CausalLM.from_pretrained("default", sampling=sampling)
    llama = CausalLM(eager.model, eager.tokenizer, sampling=sampling, verify=False, engine="llamacpp",
                     engine_options={"n_threads": args.threads, "n_ctx": 4096 + max(args.rows) * T})
    lms = {"llamacpp": llama, "eager": eager}
    if "llamacpp_q8" in args.engines:  # the same weights re-quantised to Q8_0 (written once, temporary)
        q8 = write_llama_gguf(eager.model, Path(tempfile.mkdtemp()) / "smollm2-q8_0.gguf", weights="q8_0")
        lms["llamacpp_q8"] = CausalLM(eager.model, eager.tokenizer, sampling=sampling, verify=False, engine="llamacpp",
                                      engine_options={"gguf": q8, "n_threads": args.threads,
                                                      "n_ctx": 4096 + max(args.rows) * T})
    for lm in lms.values():  # warm-up: first calls allocate
        lm.rollout(lm.prepare([PROMPT]), None, [torch.Generator().manual_seed(0)], 2)
    load_before = os.getloadavg()
    rows = []
    for n in args.rows:
        reps = args.repeats if n <= 4 else 1
        ctxs = {k: m.prepare([PROMPT]) for k, m in lms.items()}
        g = torch.Generator().manual_seed(n)
        per_token = 0.5 * torch.randn(1, n, T, eager.hidden_size, generator=g)
        shared = per_token[:, :, :1].expand(1, n, T, eager.hidden_size)
        plan = []  # (engine, control, V): every engine uncontrolled first, then the controlled runs
        for control, V in (("none", None), ("per_token", per_token), ("shared", shared)):
            for name in args.engines:
                if control == "none" or name == "llamacpp" or (name == "eager" and control == "per_token"):
                    plan.append((name, control, V))  # eager runs a shared control per step like a per-token one
        for name, control, V in plan:
            if name == "raw":
                raw_decode(llama, ctxs["llamacpp"], min(n, 4), 4)  # warm-up
                s = best_time(lambda c=ctxs["llamacpp"], n=n: raw_decode(llama, c, n, T), reps)
            else:
                lm, ctx = lms[name], ctxs[name]
                s = best_time(lambda lm=lm, ctx=ctx, V=V, n=n: lm.rollout(ctx, V, [torch.Generator().manual_seed(0)], n),
                              reps)
            rows.append({"engine": name, "rows": n, "control": control, "tokens_per_s": n * T / s, "seconds": s})
            print(rows[-1], flush=True)
    load_after = os.getloadavg()
    result = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF in llama.cpp, float32 torch)", "T": T,
              "threads": args.threads, "loadavg_before": load_before, "loadavg_after": load_after,
              "cpu": platform.processor() or platform.machine(), "rows": rows,
              "llama_cpp_python": __import__("llama_cpp").__version__, "torch": torch.__version__}
    print(f"load average before {load_before}, after {load_after}")
    table = {}
    for r in rows:
        table.setdefault(r["rows"], {})[f'{r["engine"]}/{r["control"]}'] = r["tokens_per_s"]
    cols = sorted({k for v in table.values() for k in v})
    print("| rows | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for n, v in table.items():
        print(f"| {n} | " + " | ".join(f"{v.get(c, float('nan')):.0f}" for c in cols) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
