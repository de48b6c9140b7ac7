"""Tutorial 5: fast rollouts with the static engine, on the packaged SmolLM2 (CPU or GPU).

The same model is wrapped twice: ``CausalLM(engine="eager")`` decodes through the Hugging Face
module with a dynamic KV cache; ``CausalLM(engine="static")`` runs
:class:`~ctrlalign.dynamics.engines.static.StaticEngine` (its own forward pass over the same
weights, a static KV cache, fused Q/K/V and gate/up weights, and — on a GPU — one CUDA graph per
decode step). The script

1. times one controlled rollout of D prompts × n samples × T tokens with each engine (same
   controls, same per-prompt generators) and reports tokens/s and how many tokens agree;
2. runs AISP end to end through the static engine with the VADER sentiment reward.

On a CPU (float32, ``compile="none"``) the two engines implement the same decoding contract,
so they agree token for token except where float32 rounding differences (1e-5 in the
logits) move a draw that lands on a CDF boundary between two very unlikely tokens; after such
a flip the row's continuation differs. On a GPU the static engine runs in bfloat16 with CUDA
graphs and agrees in distribution (see tests/test_static_engine.py). Writes
fast_rollouts.png (tokens/s per engine) into ``--out``.

Run: ``python examples/fast_rollouts.py [--out docs/img] [--quick]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import ctrlalign as ca

PROMPTS = ["Describe a rainy Monday.", "Write one sentence about your weekend.",
           "Give me a recipe idea for dinner tonight.", "Explain photosynthesis to a child."]


def main(out: Path | None = None, quick: bool = False, num_samples: int = 8, max_new_tokens: int = 32,
         repeats: int = 3) -> dict:
    if quick:
        num_samples, max_new_tokens, repeats = 4, 12, 1
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    sampling = ca.SamplingConfig(max_new_tokens=max_new_tokens)
    eager = ca.CausalLM.from_pretrained("default", device=device, dtype=dtype, sampling=sampling)
    # the same weights under the static engine (no second copy of the model)
    static = ca.CausalLM(eager.model, eager.tokenizer, sampling=sampling, engine="static",
                         engine_options={"max_batch": len(PROMPTS) * num_samples})
    D, n, T = len(PROMPTS), num_samples, max_new_tokens
    controls = 0.3 * torch.randn(D, n, T, eager.hidden_size, generator=torch.Generator().manual_seed(0))
    controls = controls.to(device=device, dtype=dtype)

    def generators():
        return [torch.Generator(device=device).manual_seed(100 + j) for j in range(D)]

    results: dict = {}
    outs = {}
    for name, lm in (("eager", eager), ("static", static)):
        ctx = lm.prepare(PROMPTS)
        lm.rollout(ctx, controls, generators(), n)  # warm-up (the static engine builds its buffers/graphs)
        times = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs[name] = lm.rollout(ctx, controls, generators(), n)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        results[name] = {"seconds": min(times), "tokens_per_s": D * n * T / min(times)}
        print(f"{name:>6} engine: {D}×{n}×{T} tokens in {min(times):.3f} s = {results[name]['tokens_per_s']:,.0f} tok/s")
    a, b = outs["eager"].tokens, outs["static"].tokens
    agree = float((a == b).float().mean())
    first = float((a[..., 0] == b[..., 0]).float().mean())
    rows = float((a == b).all(-1).float().mean())
    results["token_agreement"], results["first_token_agreement"], results["identical_rows"] = agree, first, rows
    results["speedup"] = results["static"]["tokens_per_s"] / results["eager"]["tokens_per_s"]
    print(f"static / eager: ×{results['speedup']:.2f}; tokens agree {agree:.1%} "
          f"(first token {first:.1%}, identical rows {rows:.1%})")

    # AISP end to end through the static engine
    aisp = ca.AISP(num_samples=n, num_iterations=2 if quick else 3, sigma=0.1, temperature=0.1, alpha=0.99)
    res = ca.align(static, ca.LexiconSentiment(), aisp, PROMPTS[:2], seed=0)
    results["aisp_rewards"] = res.rewards.tolist()
    for d, prompt in enumerate(PROMPTS[:2]):
        print(f"AISP (static engine) {prompt!r}: reward {float(res.rewards[d]):.3f}\n    "
              + (res.texts[d] or "").replace("\n", " ")[:160])

    if out is not None:
        import matplotlib.pyplot as plt

        from ctrlalign.bench.plots import figure_style, save_figure

        with figure_style():
            fig, ax = plt.subplots(figsize=(8, 3.4))
            names = ["eager", "static"]
            ax.barh(names, [results[k]["tokens_per_s"] for k in names], color=["#999", "#3f51b5"])
            for i, k in enumerate(names):
                ax.text(results[k]["tokens_per_s"], i, f" {results[k]['tokens_per_s']:,.0f}", va="center")
            ax.set_xlabel("tokens/s (controlled rollout)"), ax.set_ylabel("engine")
            ax.set_title(f"SmolLM2-135M on {'GPU' if cuda else 'CPU'}: D={D}, n={n}, T={T}")
            ax.set_xlim(0, 1.25 * max(results[k]["tokens_per_s"] for k in names))
            save_figure(fig, out / "fast_rollouts.png")
        print("wrote", out / "fast_rollouts.png")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for the plot")
    ap.add_argument("--quick", action="store_true", help="n = 4, 12 tokens, one repeat")
    args = ap.parse_args()
    main(args.out, quick=args.quick)
