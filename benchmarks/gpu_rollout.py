"""GPU rollout benchmark: StaticEngine (controlled, CUDA graphs) vs ``transformers.generate``.

One command, on a CUDA machine::

    python benchmarks/gpu_rollout.py --out benchmarks/results/gpu_rollout.json
    python benchmarks/gpu_rollout.py --quick            # smoke run (small model, batch 32, T=32)
    python benchmarks/gpu_rollout.py --models llama3-8b --batches 512 --no-generate --ablation
                                                        # + what each engine option buys
    python benchmarks/gpu_rollout.py --device cpu --models tiny --batches 8 --new-tokens 8 --ablation
                                                        # CPU smoke test of this script (CI runs it)

Random-weight models (bf16, created directly on the GPU): a SmolLM2-135M-shaped and a
Llama-3-8B-shaped Llama. 64-token prompts, 128 new tokens, fixed length (``ignore_eos`` /
``min_new_tokens``). For each batch B (rows decoded together) it reports:

* ``generate``: ``model.generate(do_sample=True, min_new_tokens=T, max_new_tokens=T)`` on B rows;
* ``engine``: StaticEngine end-to-end (prefill of D = B/8 prompts + decode of n = 8 samples each,
  controls on all T steps), and decode alone;
* roofline: 2·N FLOPs per token (N = parameters of all matmuls, output head included, embedding
  lookup excluded) at the bf16 matmul TFLOP/s measured here on an 8192³ GEMM;
* control overhead: controlled (τ = T) vs uncontrolled decode in the engine, and the cost of
  also computing base log-probabilities;
* AISP-like cost: k = 4 decodes of n = B/(4D) samples on one prefix (plus drawing the controls
  and uniforms on the GPU) vs one Best-of-N decode of 4n samples (same total samples, B rows).
* with ``--ablation``: decode-only tokens/s of the engine with each option switched off in turn
  (``fuse_weights``, ``kv_block``, ``compile="cudagraph"`` vs ``"cudagraph_eager"``), so a run
  shows what each one buys on that device.

On ``--device cpu`` the engine runs eagerly (``compile="none"``) and the roofline uses a
float32 CPU matmul: that mode exists to smoke-test this script without a GPU, not to measure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ctrlalign.dynamics.decoding import SamplingConfig
from ctrlalign.dynamics.engines.static import StaticEngine

MODELS = {
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1000, tie_word_embeddings=False, rope_theta=10000.0),
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
}


DEVICE = "cuda"  # set by main(); "cpu" only for smoke tests
DTYPE = torch.bfloat16


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")


def empty_cache() -> None:
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def matmul_tflops() -> float:
    n = 8192 if DEVICE == "cuda" else 512
    a = torch.randn(n, n, device=DEVICE, dtype=DTYPE)
    b = torch.randn(n, n, device=DEVICE, dtype=DTYPE)
    for _ in range(3):
        a @ b
    ts = timed(lambda: [a @ b for _ in range(20)], 3)
    return 2 * n**3 * 20 / min(ts) / 1e12


def build(name: str):
    import transformers

    cfg = transformers.LlamaConfig(max_position_embeddings=4096, **MODELS[name])
    cfg._attn_implementation = "sdpa"
    with torch.device(DEVICE):
        try:
            model = transformers.LlamaForCausalLM._from_config(cfg, dtype=DTYPE)
        except TypeError:
            model = transformers.LlamaForCausalLM._from_config(cfg, torch_dtype=DTYPE)
    model = model.to(DTYPE).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model


def matmul_params(model) -> int:
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    n = sum(p.numel() for p in model.parameters())
    if emb is not head:
        n -= emb.numel()  # a lookup, not a matmul; a tied head is counted once, as the head
    return n


def bench_generate(model, B, P, T, reps):
    ids = torch.randint(3, model.config.vocab_size, (B, P), device=DEVICE)
    mask = torch.ones_like(ids)
    kw = dict(do_sample=True, temperature=1.0, top_k=None, top_p=None, pad_token_id=0, eos_token_id=2)

    def run(t):
        return model.generate(input_ids=ids, attention_mask=mask, min_new_tokens=t, max_new_tokens=t, **kw)

    with torch.no_grad():
        run(4)  # warm-up
        reset_peak()
        out = None
        ts = timed(lambda: run(T), reps)
        out = run(2)
    assert out.shape[0] == B
    return dict(seconds=min(ts), tokens_per_s=B * T / min(ts), peak_mem_gb=peak_gb())


def decode_workload(eng, vocab, d, B, P, T, n=8):
    """D = B/n random prompts of length P, prefilled once, with pre-drawn uniforms and controls
    (σ = 0.3) for n samples each. Returns (D, n, ids, v, dec) where ``dec(controls, base=False)``
    decodes all B rows at fixed length T."""
    D = max(1, B // n)
    n = B // D
    ids = torch.randint(3, vocab, (D, P), device=DEVICE)
    cfg = SamplingConfig(max_new_tokens=T, ignore_eos=True)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    u = torch.rand(D, n, T, device=DEVICE, generator=g)
    v = 0.3 * torch.randn(D, n, T, d, device=DEVICE, generator=g, dtype=DTYPE)
    pre = eng.prefill(ids, torch.ones_like(ids))

    def dec(controls, base=False):
        return eng.decode(pre, num_samples=n, controls=controls, uniforms=u, config=cfg, eos_token_ids=2,
                          pad_token_id=0, base_logprobs=base)

    return D, n, ids, v, dec


def bench_engine(eng, vocab, d, B, P, T, reps, n=8):
    reset_peak()
    D, n, ids, v, dec = decode_workload(eng, vocab, d, B, P, T, n)
    mask = torch.ones_like(ids)
    res: dict = dict(D=D, n=n)
    sync()
    t0 = time.perf_counter()
    dec(v)  # first call captures the graphs
    sync()
    res["first_call_s"] = time.perf_counter() - t0
    dec(None), dec(v, True)
    t_pre = min(timed(lambda: eng.prefill(ids, mask), reps))
    t_c = min(timed(lambda: dec(v), reps))
    t_u = min(timed(lambda: dec(None), reps))
    t_cb = min(timed(lambda: dec(v, True), reps))
    res.update(
        prefill_s=t_pre, decode_controlled_s=t_c, decode_uncontrolled_s=t_u, decode_controlled_base_s=t_cb,
        tokens_per_s=B * T / (t_pre + t_c), decode_tokens_per_s=B * T / t_c,
        control_overhead=t_c / t_u - 1, base_logprob_overhead=t_cb / t_u - 1,
        peak_mem_gb=peak_gb(),
    )
    return res


def bench_aisp(eng, vocab, d, B, P, T, reps, k=4, n_bon=32):
    """k decodes of n = n_bon/k samples vs one decode of n_bon samples, D = B/n_bon prompts."""
    n_bon = min(n_bon, B)
    D = B // n_bon
    n = n_bon // k
    ids = torch.randint(3, vocab, (D, P), device=DEVICE)
    pre = eng.prefill(ids, torch.ones_like(ids))
    cfg = SamplingConfig(max_new_tokens=T, ignore_eos=True)
    g = torch.Generator(device=DEVICE).manual_seed(1)

    def bon():
        u = torch.rand(D, n_bon, T, device=DEVICE, generator=g)
        eng.decode(pre, num_samples=n_bon, controls=None, uniforms=u, config=cfg, eos_token_ids=2, pad_token_id=0)

    def aisp_rounds(prefix, D, n):
        """k controlled decodes of n samples for D prompts, with the mean update between them."""
        mean = torch.zeros(D, T, d, device=DEVICE)
        for _ in range(k):
            u = torch.rand(D, n, T, device=DEVICE, generator=g)
            V = (mean[:, None] + 0.3 * torch.randn(D, n, T, d, device=DEVICE, generator=g)).to(DTYPE)
            eng.decode(prefix, num_samples=n, controls=V, uniforms=u, config=cfg, eos_token_ids=2, pad_token_id=0)
            w = torch.softmax(torch.randn(D, n, device=DEVICE, generator=g), -1)  # stand-in for rewards
            mean = torch.einsum("dn,dntk->dtk", w, V.float())

    def aisp():
        aisp_rounds(pre, D, n)

    bon(), aisp()
    t_bon = min(timed(bon, reps))
    t_aisp = min(timed(aisp, reps))
    # equal batch: the device's batch B is the limit for both. AISP: k iterations of B rows
    # (D2 = B/8 prompts x 8 samples, controlled, with the mean update); BoN with 4·8 = 32
    # samples for the same D2 prompts then also needs k calls of B rows (uncontrolled).
    n2 = min(8, B)
    D2 = B // n2
    ids2 = torch.randint(3, vocab, (D2, P), device=DEVICE)
    pre2 = eng.prefill(ids2, torch.ones_like(ids2))

    def bon_eq():
        for _ in range(k):
            u = torch.rand(D2, n2, T, device=DEVICE, generator=g)
            eng.decode(pre2, num_samples=n2, controls=None, uniforms=u, config=cfg, eos_token_ids=2, pad_token_id=0)

    def aisp_eq():
        aisp_rounds(pre2, D2, n2)

    bon_eq(), aisp_eq()
    t_bon_eq = min(timed(bon_eq, reps))
    t_aisp_eq = min(timed(aisp_eq, reps))
    return dict(D=D, k=k, n=n, n_bon=n_bon, bon_s=t_bon, aisp_s=t_aisp, aisp_over_bon=t_aisp / t_bon,
                equal_batch=dict(D=D2, n=n2, bon_s=t_bon_eq, aisp_s=t_aisp_eq,
                                 aisp_over_bon=t_aisp_eq / t_bon_eq))


ABLATIONS = {  # name: engine options (on top of the defaults)
    "default": {},
    "no fuse_weights": dict(fuse_weights=False),
    "no kv_block": dict(kv_block=None),
    "neither": dict(fuse_weights=False, kv_block=None),
    "cudagraph_eager": dict(compile="cudagraph_eager"),
}


def bench_ablation(model, B, P, T, reps, engine_kw) -> dict:
    """Decode-only tokens/s (controlled, n = 8) for each engine variant of :data:`ABLATIONS`."""
    out = {}
    for name, kw in ABLATIONS.items():
        kw = {**engine_kw, **kw}
        if DEVICE != "cuda" and kw.get("compile") not in (None, "none"):
            continue
        eng = StaticEngine(model, max_batch=B, max_length=P + T, dtype=DTYPE, **kw)
        D, n, _, v, dec = decode_workload(eng, model.config.vocab_size, model.config.hidden_size, B, P, T)
        dec(v)  # capture
        t = min(timed(lambda dec=dec, v=v: dec(v), reps))
        out[name] = dict(options=kw, compile_used=eng.compile, decode_s=t, decode_tokens_per_s=D * n * T / t)
        eng.clear()
        del eng, dec
        empty_cache()
    base = out["default"]["decode_tokens_per_s"]
    for r in out.values():
        r["relative_to_default"] = r["decode_tokens_per_s"] / base
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,llama3-8b")
    ap.add_argument("--batches", default="32,128,512")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gen-reps", type=int, default=1)
    ap.add_argument("--no-generate", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: smollm2-135m, batch 32, T=32")
    ap.add_argument("--out", default=None, help="write JSON here")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: eager float32 smoke test of this script (no meaningful numbers)")
    ap.add_argument("--kv-block", default="16", help="StaticEngine kv_block (an int, or 'none')")
    ap.add_argument("--no-fuse", action="store_true", help="StaticEngine fuse_weights=False")
    ap.add_argument("--compile", default=None, choices=["cudagraph", "cudagraph_eager", "none"],
                    help="StaticEngine compile mode (default: cudagraph on CUDA, none on CPU)")
    ap.add_argument("--ablation", action="store_true",
                    help="also time decode with each engine option switched off (see ABLATIONS)")
    a = ap.parse_args(argv)
    if a.quick:
        a.models, a.batches, a.new_tokens, a.reps = "smollm2-135m", "32", 32, 2
    global DEVICE, DTYPE
    DEVICE = a.device
    DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    if DEVICE == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device here; use --device cpu for a smoke test")
    kv_block = None if a.kv_block.lower() == "none" else int(a.kv_block)
    engine_kw = dict(kv_block=kv_block, fuse_weights=not a.no_fuse,
                     compile=a.compile or ("cudagraph" if DEVICE == "cuda" else "none"))
    if a.no_generate is False and DEVICE == "cpu":
        a.no_generate = True  # generate on CPU is not what this script compares
    torch.manual_seed(0)
    P, T = a.prompt_len, a.new_tokens
    batches = [int(b) for b in a.batches.split(",")]
    tflops = matmul_tflops()
    dev_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke test)"
    report = dict(device=dev_name, torch=torch.__version__, matmul_tflops_bf16=tflops,
                  prompt_len=P, new_tokens=T, engine_options=engine_kw, models={})
    import transformers

    report["transformers"] = transformers.__version__
    print(f"engine options {engine_kw}")
    print(f"device {report['device']}  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"bf16 matmul {tflops:.0f} TFLOP/s", flush=True)
    for name in a.models.split(","):
        t0 = time.perf_counter()
        model = build(name)
        N = matmul_params(model)
        roof = tflops * 1e12 / (2 * N)
        mr = dict(matmul_params=N, roofline_tokens_per_s=roof, build_s=time.perf_counter() - t0, batches={})
        report["models"][name] = mr
        print(f"\n== {name}: {N/1e9:.3f}B matmul params, roofline {roof:,.0f} tok/s (built in {mr['build_s']:.0f}s)",
              flush=True)
        if not a.no_generate:
            for B in batches:
                r = bench_generate(model, B, P, T, a.gen_reps)
                mr["batches"].setdefault(str(B), {})["generate"] = r
                print(f"  generate B={B}: {r['tokens_per_s']:,.0f} tok/s  peak {r['peak_mem_gb']:.1f} GiB", flush=True)
                empty_cache()
        eng = StaticEngine(model, max_batch=max(batches), max_length=P + T, dtype=DTYPE, **engine_kw)
        for B in batches:
            r = bench_engine(eng, model.config.vocab_size, model.config.hidden_size, B, P, T, a.reps)
            r["fraction_of_roofline"] = r["tokens_per_s"] / roof
            r["decode_fraction_of_roofline"] = r["decode_tokens_per_s"] / roof
            ag = bench_aisp(eng, model.config.vocab_size, model.config.hidden_size, B, P, T, a.reps)
            e = mr["batches"].setdefault(str(B), {})
            e["engine"], e["aisp_vs_bon"] = r, ag
            if "generate" in e:
                e["speedup_vs_generate"] = r["tokens_per_s"] / e["generate"]["tokens_per_s"]
            print(f"  engine B={B} (D={r['D']}×n={r['n']}): {r['tokens_per_s']:,.0f} tok/s "
                  f"({r['fraction_of_roofline']:.0%} roofline; decode only {r['decode_tokens_per_s']:,.0f}), "
                  f"control +{r['control_overhead']:.1%}, +base {r['base_logprob_overhead']:.1%}, "
                  f"peak {r['peak_mem_gb']:.1f} GiB, first call {r['first_call_s']:.1f}s; "
                  f"AISP(k=4,n={ag['n']})/BoN(n={ag['n_bon']}) = {ag['aisp_over_bon']:.2f}, "
                  f"at equal batch {ag['equal_batch']['aisp_over_bon']:.3f}", flush=True)
            eng.clear()
        mr["compile_used"] = eng.compile  # "cudagraph_eager" here means torch.compile fell back
        del eng
        empty_cache()
        if a.ablation:
            for B in batches:
                ab = bench_ablation(model, B, P, T, a.reps, engine_kw)
                mr["batches"][str(B)]["ablation"] = ab
                print(f"  ablation B={B}: " + ", ".join(
                    f"{k} {r['decode_tokens_per_s']:,.0f} tok/s ({r['relative_to_default']:.3f})" for k, r in ab.items()),
                    flush=True)
        del model
        empty_cache()
        if a.out:  # partial results survive a later failure
            os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
            with open(a.out, "w") as f:
                json.dump(report, f, indent=2)

    # table
    rows = ["| model | B | generate tok/s | engine tok/s | speedup | % roofline | decode-only tok/s | "
            "control overhead | +base logprobs | AISP/BoN time (same D) | AISP/BoN time (equal batch) | "
            "peak GiB (gen / engine) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, mr in report["models"].items():
        for B, e in mr["batches"].items():
            g, r, ag = e.get("generate"), e["engine"], e["aisp_vs_bon"]
            rows.append(
                f"| {name} | {B} | {g['tokens_per_s']:,.0f} | " if g else f"| {name} | {B} | – | "
            )
            rows[-1] += (
                f"{r['tokens_per_s']:,.0f} | {e.get('speedup_vs_generate', float('nan')):.1f}× | "
                f"{r['fraction_of_roofline']:.1%} | {r['decode_tokens_per_s']:,.0f} | {r['control_overhead']:+.1%} | "
                f"{r['base_logprob_overhead']:+.1%} | {ag['aisp_over_bon']:.2f} | {ag['equal_batch']['aisp_over_bon']:.3f} | "
                f"{g['peak_mem_gb'] if g else float('nan'):.1f} / {r['peak_mem_gb']:.1f} |"
            )
    report["table_markdown"] = "\n".join(rows)
    print("\n" + report["table_markdown"], flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
