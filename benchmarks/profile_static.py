"""Where a decode step's GPU time goes: kernels of the static engine (eager mode, so each
kernel is visible to the profiler) on a Llama-3-8B-shaped model at one batch.

Run on a GPU: ``python benchmarks/profile_static.py [--batch 512] [--model llama3-8b]
[--new-tokens 128] [--kv-block 16|none] [--no-fuse]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_rollout import MODELS, build

from ctrlalign.dynamics.decoding import SamplingConfig
from ctrlalign.dynamics.engines.static import StaticEngine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama3-8b", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--kv-block", default="16", help="StaticEngine kv_block (an int, or 'none')")
    ap.add_argument("--no-fuse", action="store_true", help="StaticEngine fuse_weights=False")
    args = ap.parse_args()
    kv_block = None if args.kv_block.lower() == "none" else int(args.kv_block)
    model = build(args.model)
    B, P, T, n = args.batch, args.prompt_len, args.new_tokens, 8
    D = B // n
    eng = StaticEngine(model, max_batch=B, max_length=P + T, dtype=torch.bfloat16, compile="none",
                      kv_block=kv_block, fuse_weights=not args.no_fuse)
    vocab, d = model.config.vocab_size, model.config.hidden_size
    ids = torch.randint(3, vocab, (D, P), device="cuda")
    u = torch.rand(D, n, T, device="cuda")
    v = 0.3 * torch.randn(D, n, T, d, device="cuda", dtype=torch.bfloat16)
    cfg = SamplingConfig(max_new_tokens=T, ignore_eos=True)
    pre = eng.prefill(ids, torch.ones_like(ids))
    dec = lambda: eng.decode(pre, num_samples=n, controls=v, uniforms=u, config=cfg, eos_token_ids=2, pad_token_id=0)
    dec()
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        dec()
        torch.cuda.synchronize()
    total = sum(e.device_time_total for e in prof.key_averages())
    print(f"{args.model} B={B} P={P} T={T}: GPU kernel time per step {total / T / 1e3:.2f} ms")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=25, max_name_column_width=70))


if __name__ == "__main__":
    main()
