"""Seconds per generated token of the packaged causal LMs on CPU (issue 14's budget plan).

For each model of :data:`ctrlalign.models.PACKAGED_MODELS`: one prompt, a batch of n rows × T
new tokens (fixed length, ``ignore_eos``), timed with :meth:`CausalLM.rollout` (the path every
controller uses: one prefilled context, n samples) uncontrolled (V = None) and controlled
(V ~ N(0, σ²I) of shape (1, n, T, d)) with and without the base log-probabilities (the second
vocabulary-sized head product that the token log-ratio needs), and with
``model.generate(do_sample=True)`` on the n rows for reference. Reported: best-of-repeats wall seconds and CPU seconds of this process,
seconds per generated token = seconds / (n·T), and tokens/s. The fluency score of the n
responses under the *other* packaged model is timed too (s per scored response).

Usage (5–10 minutes on a loaded 2-core machine with the converted models cached)::

    OMP_NUM_THREADS=1 python benchmarks/packaged_model_speed.py --threads 1 --out speed.json
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

PROMPT = "Write a short poem about the sea."


def _time(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, best process CPU seconds) over ``repeats`` runs after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def measure(name: str, n: int, T: int, sigma: float, repeats: int, fluency: bool,
            with_generate: bool = True) -> dict:
    from ctrlalign import CausalLM, SamplingConfig, make_generators
    from ctrlalign.bench.fluency import FluencyScorer
    from ctrlalign.models import fluency_model_for, load_packaged, resolve_packaged

    t0 = time.perf_counter()
    model, tok = load_packaged(name)
    load_s = time.perf_counter() - t0
    cfg = SamplingConfig(max_new_tokens=T, ignore_eos=True)
    lm = CausalLM(model, tok, sampling=cfg)
    lm_nobase = CausalLM(model, tok, sampling=cfg, base_logprobs=False, verify=False)
    ctx = lm.prepare([PROMPT])
    g = torch.Generator().manual_seed(0)
    V = sigma * torch.randn(1, n, T, lm.hidden_size, generator=g)

    def gens():
        return [x.rollout for x in make_generators(0, [PROMPT])]

    ids = ctx.input_ids.repeat(n, 1)
    mask = ctx.prefix.attention_mask.repeat(n, 1)

    def generate():
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=None, top_p=None,
                           max_new_tokens=T, min_new_tokens=T, pad_token_id=lm.pad_token_id)

    rows = {}
    texts = None
    cases = [("rollout uncontrolled", lambda: lm.rollout(ctx, None, gens(), n)),
             ("rollout controlled", lambda: lm.rollout(ctx, V, gens(), n)),
             ("controlled, no base lp", lambda: lm_nobase.rollout(ctx, V, gens(), n))]
    if with_generate:
        cases.append(("generate(do_sample)", generate))
    for label, fn in cases:
        wall, cpu = _time(fn, repeats)
        rows[label] = {"seconds": wall, "cpu_seconds": cpu, "s_per_token": wall / (n * T),
                       "cpu_s_per_token": cpu / (n * T), "tokens_per_s": n * T / wall}
    out = lm.rollout(ctx, None, gens(), n)
    texts = [t for row in out.texts for t in row] if out.texts is not None else None
    spec = resolve_packaged(name)
    res = {"model": name, "title": spec.title, "d": lm.hidden_size, "vocab": lm.vocab_size,
           "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "load_seconds": load_s,
           "prompt_tokens": int(ctx.input_ids.shape[1]), "n": n, "T": T, "sigma": sigma, "rows": rows,
           "sample_text": texts[0] if texts else None}
    if fluency and texts:
        other = fluency_model_for(name)
        scorer = FluencyScorer.packaged(other)
        t0 = time.perf_counter()
        s = scorer.score([PROMPT] * len(texts), texts)
        secs = time.perf_counter() - t0
        res["fluency"] = {"scorer": other, "seconds": secs, "s_per_response": secs / len(texts),
                          "mean_logprob": float(s.mean_logprob.nanmean()),
                          "mean_tokens": float(s.num_tokens.double().mean())}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--sigma", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-fluency", action="store_true")
    ap.add_argument("--no-generate", action="store_true", help="skip the model.generate reference")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": a.threads,
                           "torch": torch.__version__, "loadavg_start": os.getloadavg()},
               "models": []}
    for name in a.models.split(","):
        r = measure(name, a.n, a.T, a.sigma, a.repeats, not a.no_fluency, not a.no_generate)
        results["models"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "rows"}), flush=True)
        for label, row in r["rows"].items():
            print(f"  {name:14s} {label:22s} {row['seconds']:7.2f} s  {1e3 * row['s_per_token']:7.2f} ms/token "
                  f"(cpu {1e3 * row['cpu_s_per_token']:6.2f})  {row['tokens_per_s']:7.1f} tok/s", flush=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
