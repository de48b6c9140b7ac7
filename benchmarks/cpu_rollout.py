"""CPU benchmark of CausalLM rollouts on the default model (SmolLM2-135M-Instruct).

Measures, at D prompts × n samples × T new tokens (fixed length: ignore_eos / min_new_tokens):

* ``generate``: ``model.generate(do_sample=True)`` on the D·n left-padded rows (it prefills
  every row, as a user of ``generate`` would);
* ``ours``: :meth:`CausalLM.rollout` reusing one prefilled context (prefill reported apart),
  uncontrolled (V = None) and controlled (V ~ N(0, σ²), τ = T), with and without
  ``base_logprobs``; control overhead = controlled / uncontrolled − 1 at equal settings;
* peak memory (VmHWM) of a fresh process running D=8, n=32, T=64 controlled with base
  log-probabilities.

Usage::

    python benchmarks/cpu_rollout.py --out results.json [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# import the ctrlalign next to this script (the repository checkout), not another install
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain photosynthesis to a child.",
    "What are three tips for staying productive when working from home?",
    "Describe your ideal weekend.",
    "Give me a recipe idea for dinner tonight.",
    "Why is the sky blue?",
    "Write a friendly email inviting a colleague to lunch.",
    "Summarise the plot of a detective story in two sentences.",
]


def vm_hwm_mb() -> float:
    """Peak resident set size of this process (VmHWM), MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def speed(D: int, n: int, T: int, sigma: float, repeats: int) -> dict:
    from ctrlalign import CausalLM, SamplingConfig, make_generators

    cfg = SamplingConfig(max_new_tokens=T, ignore_eos=True)
    lm = CausalLM.from_pretrained("default", sampling=cfg)
    lm_nobase = CausalLM(lm.model, lm.tokenizer, sampling=cfg, base_logprobs=False, verify=False)
    prompts = PROMPTS[:D]
    t0 = time.perf_counter()
    ctx = lm.prepare(prompts)
    prefill_s = time.perf_counter() - t0
    gens = lambda: [g.rollout for g in make_generators(0, prompts)]
    g = torch.Generator().manual_seed(0)
    V = sigma * torch.randn(D, n, T, lm.hidden_size, generator=g)

    ids = ctx.input_ids.repeat_interleave(n, 0)
    mask = ctx.attention_mask.repeat_interleave(n, 0)

    def run_generate():
        with torch.inference_mode():
            lm.model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=None,
                top_p=None,
                max_new_tokens=T,
                min_new_tokens=T,
                pad_token_id=lm.pad_token_id,
            )

    cases = {
        "generate(do_sample=True)": run_generate,
        "ours uncontrolled, base_logprobs": lambda: lm.rollout(ctx, None, gens(), n),
        "ours controlled, base_logprobs": lambda: lm.rollout(ctx, V, gens(), n),
        "ours uncontrolled, no base_logprobs": lambda: lm_nobase.rollout(ctx, None, gens(), n),
        "ours controlled, no base_logprobs": lambda: lm_nobase.rollout(ctx, V, gens(), n),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm-up each once
        fn()
    for _ in range(repeats):  # interleave repetitions so drift hits every case alike
        for k, fn in cases.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    rows = {}
    for k, ts in times.items():
        best = min(ts)
        rows[k] = {
            "seconds_best": best,
            "seconds_median": statistics.median(ts),
            "seconds_all": ts,
            "tokens_per_s": D * n * T / best,
            # CPU seconds of this process: with --threads 1 not inflated by other processes
            "cpu_seconds_best": min(cpu[k]),
            "cpu_seconds_all": cpu[k],
        }
    # best-of-repeats: on a shared machine other processes only ever add time
    ours_free = rows["ours uncontrolled, base_logprobs"]["seconds_best"]
    ours_ctl = rows["ours controlled, base_logprobs"]["seconds_best"]
    nb_free = rows["ours uncontrolled, no base_logprobs"]["seconds_best"]
    nb_ctl = rows["ours controlled, no base_logprobs"]["seconds_best"]
    gen = rows["generate(do_sample=True)"]["seconds_best"]
    c = {k: r["cpu_seconds_best"] for k, r in rows.items()}
    return {
        "D": D,
        "n": n,
        "T": T,
        "sigma": sigma,
        "cpu_control_overhead_pct_no_base_logprobs": 100
        * (c["ours controlled, no base_logprobs"] / c["ours uncontrolled, no base_logprobs"] - 1),
        "cpu_control_overhead_pct_with_base_logprobs": 100
        * (c["ours controlled, base_logprobs"] / c["ours uncontrolled, base_logprobs"] - 1),
        "cpu_speedup_vs_generate_controlled_with_base": c["generate(do_sample=True)"]
        / c["ours controlled, base_logprobs"],
        "prefill_seconds (once per run, D rows)": prefill_s,
        "rows": rows,
        "control_overhead_pct_no_base_logprobs": 100 * (nb_ctl / nb_free - 1),
        "control_overhead_pct_with_base_logprobs": 100 * (ours_ctl / ours_free - 1),
        "speedup_vs_generate_controlled_with_base": gen / ours_ctl,
        "speedup_vs_generate_uncontrolled_no_base": gen / nb_free,
    }


def memory_child(D: int, n: int, T: int) -> dict:
    """Run in a fresh process: load, prefill, one controlled rollout; report VmHWM."""
    from ctrlalign import CausalLM, SamplingConfig, make_generators

    lm = CausalLM.from_pretrained(
        "default", sampling=SamplingConfig(max_new_tokens=T, ignore_eos=True)
    )
    after_load = vm_rss_mb()
    hwm_load = vm_hwm_mb()
    prompts = (PROMPTS * ((D + len(PROMPTS) - 1) // len(PROMPTS)))[:D]
    prompts = [f"{p} (#{j})" for j, p in enumerate(prompts)]
    ctx = lm.prepare(prompts)
    V = 0.3 * torch.randn(D, n, T, lm.hidden_size)
    t0 = time.perf_counter()
    out = lm.rollout(ctx, V, [g.rollout for g in make_generators(0, prompts)], n)
    secs = time.perf_counter() - t0
    return {
        "D": D,
        "n": n,
        "T": T,
        "prompt_tokens_padded": int(ctx.input_ids.shape[1]),
        "rss_after_load_mb": after_load,
        "peak_rss_after_load_mb": hwm_load,
        "peak_rss_mb": vm_hwm_mb(),
        "rollout_seconds": secs,
        "tokens_per_s": D * n * T / secs,
        "generated_tokens": int(out.lengths.sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--D", type=int, default=4)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--sigma", type=float, default=0.3)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine",
    )
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.memory_child:
        print(json.dumps(memory_child(8, 32, 64)))
        return

    res = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_at_start": os.getloadavg(),
        }
    }
    res["speed"] = speed(args.D, args.n, args.T, args.sigma, args.repeats)
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child"]
        + ([f"--threads={args.threads}"] if args.threads else []),
        capture_output=True,
        text=True,
        check=True,
    )
    res["memory"] = json.loads(proc.stdout.strip().splitlines()[-1])
    res["machine"]["loadavg_at_end"] = os.getloadavg()

    s = res["speed"]
    print(
        f"\nD={s['D']} prompts x n={s['n']} samples x T={s['T']} tokens, CPU threads={res['machine']['threads']}"
    )
    print(f"prefill (once per run): {s['prefill_seconds (once per run, D rows)']:.3f} s")
    print(f"{'case':40s} {'best s':>8s} {'median s':>9s} {'tokens/s':>9s} {'best CPU s':>10s}")
    for k, r in s["rows"].items():
        print(
            f"{k:40s} {r['seconds_best']:8.3f} {r['seconds_median']:9.3f} "
            f"{r['tokens_per_s']:9.1f} {r['cpu_seconds_best']:10.3f}"
        )
    print(
        "(tokens/s from the best of the repeats; a median far above the best means the machine was busy)"
    )
    print(
        f"control overhead, no base_logprobs:   {s['control_overhead_pct_no_base_logprobs']:+.1f} %"
    )
    print(
        f"control overhead, with base_logprobs: {s['control_overhead_pct_with_base_logprobs']:+.1f} %"
    )
    print(
        f"speed-up vs generate (controlled + base_logprobs): x{s['speedup_vs_generate_controlled_with_base']:.2f}"
    )
    m = res["memory"]
    print(
        f"memory D={m['D']} n={m['n']} T={m['T']} (prompt {m['prompt_tokens_padded']} tokens): "
        f"peak RSS {m['peak_rss_mb']:.0f} MB (after load {m['rss_after_load_mb']:.0f} MB), "
        f"{m['tokens_per_s']:.0f} tokens/s"
    )
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
