"""CPU decoding speed of every engine on the packaged SmolLM2-135M-Instruct, against the roofline.

One run on one machine measures tokens/s of sampled decoding (temperature 1, no top-k/top-p,
fixed length: ``ignore_eos``) of ``rows`` rows × T new tokens after one short chat prompt, at
every (rows, T) of the grid (default rows ∈ {1, 4, 16, 32, 128, 256}, T ∈ {32, 128}), for:

* ``generate``: ``transformers`` ``model.generate(do_sample=True, top_k=0, top_p=1)`` on the rows (it prefills every
  row, as a user of ``generate`` would; the prompt is short, so that is a small share);
* every engine of :data:`ctrlalign.dynamics.engines.registry.ENGINES` (found in the registry, so a
  newly registered engine is measured too): :meth:`CausalLM.rollout` of one prefilled prompt ×
  ``rows`` samples, uncontrolled (V = None), the default ``base_logprobs``; an engine that cannot
  be built on CPU is skipped with its error recorded; the engines of ``--bf16-engines`` (default
  ``eager``) again with the model in bfloat16 (what ``--dtype auto`` loads on a CPU with
  AVX512-BF16 or AMX: equal in distribution to float32, not bitwise);
* ``llama.cpp``: llama-cpp-python's raw ``llama_decode`` on the same GGUF file: the prompt once
  (sequence 0, its KV cache copied to the other rows' sequences), then one batch of ``rows``
  tokens (one per sequence) per step, logits of every row, inverse-CDF sampling in numpy.
  Skipped with the reason when llama-cpp-python is not installed.

Tokens/s = rows·T / best wall seconds of ``--repeats`` runs after a short warm-up (other processes
only ever add time on a shared machine). The prefill of the ctrlalign engines is outside the timed
call (it happens once per run there); llama.cpp's is too; ``generate``'s is inside.

**Roofline.** For each shape, from the model config: FLOPs per generated token
F = 2·(matrix parameters + V·d) + 4·layers·heads·head_dim·c̄ (attention over the mean context
c̄ = L + (T+1)/2), bytes per decoding step M = weight bytes + rows·KV bytes per token·c̄
(fp32 weights and KV for torch, bfloat16 ones for its bfloat16 series; the GGUF's own tensor
bytes and an f16 KV cache for llama.cpp).
With the machine's peak P (FLOP/s, a large fp32 torch matmul; a bfloat16 one for bfloat16) and bandwidth β (bytes/s, a large
tensor copy, read + write), the compute bound is P / F tokens/s and the memory bound
rows·β / M tokens/s; the roofline is the smaller.

**Main job.** ``ctrlalign align PROMPT --json`` with the default configuration (what
``bash scripts/main.sh`` runs): seconds of ``align`` (``seconds_batch``), of ``align`` with the
model load (``seconds_total``) and of the whole command (process start to exit).

Usage (wrap it in ``flock`` so that two speed benchmarks never share the machine)::

    flock /work/bench.lock python benchmarks/cpu_speed.py                    # the whole grid
    flock /work/bench.lock python benchmarks/cpu_speed.py --quick            # rows 1, 32; T = 32
    python benchmarks/cpu_speed.py --rows 1 4 16 32 --tokens 32 128 --max-row-tokens 8192
    python benchmarks/cpu_speed.py --report-only                              # table + plot from the JSON

Writes ``benchmarks/results/cpu_speed.json`` (``--out``), ``benchmarks/results/cpu_speed.md`` (the
table BENCHMARKS.md copies; the docs build checks the copy) and ``docs/img/cpu_speed.png``.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_JSON = RESULTS / "cpu_speed.json"
DEFAULT_FIGURE = ROOT / "docs" / "img" / "cpu_speed.png"

#: prompts of the older CPU benchmarks (batched_aisp.py, cpu_batch_invariance.py import them)
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
PROMPT = PROMPTS[0]
MAIN_JOB_PROMPT = "Write one sentence about your weekend."  # scripts/main.sh's default
ROWS = (1, 4, 16, 32, 128, 256)
TOKENS = (32, 128)
LLAMA_CPP = "llama.cpp"
GENERATE = "generate"
#: roofline kinds (results key → table label): the torch model in fp32 and in bfloat16, the GGUF file
ROOFLINES = {"fp32": "fp32", "bf16": "bfloat16", "gguf": "GGUF"}


# --- pure parts: roofline arithmetic and the report --------------------------------------------

def model_shape(config) -> dict[str, int]:
    """The numbers of a Llama-like ``transformers`` config that the roofline needs.

    Returns d (hidden size), layers, heads, kv_heads, head_dim, ffn (intermediate size), vocab,
    tied (1 if the head shares the embedding's weights)."""
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return {"d": int(config.hidden_size), "layers": int(config.num_hidden_layers), "heads": heads,
            "kv_heads": int(getattr(config, "num_key_value_heads", None) or heads), "head_dim": head_dim,
            "ffn": int(config.intermediate_size), "vocab": int(config.vocab_size),
            "tied": int(bool(getattr(config, "tie_word_embeddings", False)))}


def matrix_params(shape: dict[str, int]) -> int:
    """Parameters of the matrix products one token goes through: per layer q, k, v, o
    (d·heads·hd + 2·d·kv_heads·hd + heads·hd·d) and the gated MLP (3·d·ffn), plus the head (V·d).
    The embedding lookup reads one row per token and is not counted (for a tied head it is the
    head's matrix, counted once)."""
    d, hd = shape["d"], shape["head_dim"]
    attn = d * shape["heads"] * hd * 2 + 2 * d * shape["kv_heads"] * hd
    return shape["layers"] * (attn + 3 * d * shape["ffn"]) + shape["vocab"] * d


def mean_context(prompt_len: int, T: int) -> float:
    """Mean number of keys attended to over T decoding steps after a prompt of ``prompt_len``
    tokens: the mean of L + t for t = 1..T, i.e. L + (T+1)/2."""
    return prompt_len + (T + 1) / 2


def flops_per_token(shape: dict[str, int], context: float) -> float:
    """FLOPs of one decoded token: 2 per multiply-add of the matrix products, plus attention
    q·Kᵀ and p·V over ``context`` keys (2·2·heads·head_dim·context per layer)."""
    return 2.0 * matrix_params(shape) + 4.0 * shape["layers"] * shape["heads"] * shape["head_dim"] * context


def kv_bytes_per_token(shape: dict[str, int], bytes_per_value: float) -> float:
    """Bytes of K and V cached per token and row: 2·layers·kv_heads·head_dim values."""
    return 2.0 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * bytes_per_value


def roofline(shape: dict[str, int], rows: int, T: int, prompt_len: int, weight_bytes: float,
             kv_bytes_per_value: float, peak_flops: float, bandwidth: float) -> dict[str, float]:
    """Upper bounds on tokens/s for ``rows`` rows × T tokens (one decoding step decodes one token
    of every row).

    compute = P / F (F = :func:`flops_per_token` at the mean context); memory = rows·β / M with
    M = weight_bytes + rows·KV bytes per token·c̄ read per step; roofline = min of the two.
    """
    c = mean_context(prompt_len, T)
    compute = peak_flops / flops_per_token(shape, c)
    step_bytes = weight_bytes + rows * kv_bytes_per_token(shape, kv_bytes_per_value) * c
    memory = rows * bandwidth / step_bytes
    return {"compute_tokens_per_s": compute, "memory_tokens_per_s": memory,
            "roofline_tokens_per_s": min(compute, memory), "step_bytes": step_bytes,
            "flops_per_token": flops_per_token(shape, c)}


def load_average(uptime_line: str) -> str:
    """The three load averages of an ``uptime`` line (the whole line if it has none)."""
    return uptime_line.rsplit("load average:", 1)[-1].strip()


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def series_names(res: dict) -> list[str]:
    """Measured series in table order: generate, the ctrlalign engines (registry order), llama.cpp."""
    names = list(dict.fromkeys(c["series"] for c in res["cells"]))
    return sorted(names, key=lambda n: 0 if n == GENERATE else 2 if n.startswith(LLAMA_CPP) else 1)


def _cell(res: dict, series: str, rows: int, T: int) -> dict | None:
    for c in res["cells"]:
        if c["series"] == series and c["rows"] == rows and c["T"] == T:
            return c
    return None


def report(res: dict) -> str:
    """The markdown table of a results dict (as :func:`main` writes it): one line per (T, rows),
    tokens/s per series, and the rooflines (fp32, bfloat16 when measured, GGUF; compute / memory bound,
    tokens/s)."""
    names = series_names(res)
    def label(n: str) -> str:
        if n == GENERATE:
            return "`generate`"
        if n.startswith(LLAMA_CPP):
            return f"llama.cpp (raw decode{n[len(LLAMA_CPP):]})"
        engine, _, variant = n.partition(", ")
        return f"`{engine}` engine" + (f", {variant}" if variant else "")

    kinds = [k for k in ROOFLINES if k in res["roofline"]]
    head = ["T", "rows"] + [label(n) for n in names] + [f"roofline {ROOFLINES[k]} (compute / memory)" for k in kinds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shapes = sorted({(c["T"], c["rows"]) for c in res["cells"]})
    for T, rows in shapes:
        row = [str(T), str(rows)]
        for n in names:
            c = _cell(res, n, rows, T)
            row.append("–" if c is None or c.get("tokens_per_s") is None else _fmt(c["tokens_per_s"]))
        for kind in kinds:
            r = res["roofline"].get(kind, {}).get(f"{T}x{rows}")
            row.append("–" if r is None else f"{_fmt(r['compute_tokens_per_s'])} / {_fmt(r['memory_tokens_per_s'])}")
        lines.append("| " + " | ".join(row) + " |")
    m = res["machine"]
    out = ["\n".join(lines), ""]
    facts = [f"{m['nproc']} CPUs (nproc), {res['threads']} thread{'s' * (res['threads'] > 1)} per engine, {m.get('processor') or '?'}",
             f"peak fp32 GEMM {m['peak_gflops']:.1f} GFLOP/s"
             + (f", bfloat16 GEMM {m['peak_gflops_bf16']:.1f} GFLOP/s" if m.get("peak_gflops_bf16") else "")
             + f", copy bandwidth {m['bandwidth_gb_s']:.1f} GB/s",
             f"load average (1, 5, 15 min) {load_average(m['uptime_start'])} at the start, "
             f"{load_average(m['uptime_end'])} at the end (`uptime`; other work shared the machine)",
             f"prompt {res['prompt_tokens']} tokens; best of {res['repeats']} after a warm-up"]
    skipped = res.get("skipped", {})
    if skipped:
        facts.append("skipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    job = res.get("main_job")
    if job:
        if "error" in job:
            facts.append(f"main job: failed ({job['error']})")
        else:
            facts.append(f"main job (`ctrlalign align`, default config): align {job['align_s']:.1f} s, "
                         f"with model load {job['align_with_load_s']:.1f} s, whole command {job['command_s']:.1f} s")
    out += [f"- {f}" for f in facts]
    return "\n".join(out) + "\n"


def plot(res: dict, path: Path) -> None:
    """Tokens/s against rows (log-log), one solid line per series, the fp32, bfloat16 and GGUF
    rooflines dashed, dash-dotted and dotted, one panel per T; drawn and checked by :mod:`ctrlalign.bench.plots`
    (≥ 1000 px wide, text ≥ 10 pt)."""
    import matplotlib.pyplot as plt

    from ctrlalign.bench.plots import figure_style, save_figure

    Ts = sorted({c["T"] for c in res["cells"]})
    with figure_style():
        fig, axes = plt.subplots(1, len(Ts), figsize=(13, 5), squeeze=False)
        for ax, T in zip(axes[0], Ts):
            for n in series_names(res):
                pts = sorted((c["rows"], c["tokens_per_s"]) for c in res["cells"]
                             if c["series"] == n and c["T"] == T and c.get("tokens_per_s"))
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=n)
            for kind, style in (("fp32", "k--"), ("bf16", "k-."), ("gguf", "k:")):
                pts = sorted((int(k.split("x")[1]), v["roofline_tokens_per_s"])
                             for k, v in res["roofline"].get(kind, {}).items() if int(k.split("x")[0]) == T)
                if pts:
                    ax.plot(*zip(*pts), style, label=f"roofline {kind}")
            ax.set(xscale="log", yscale="log", xlabel="rows decoded together", ylabel="tokens/s",
                   title=f"T = {T} new tokens")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        save_figure(fig, path)


def grid(rows: list[int], tokens: list[int], max_row_tokens: int | None) -> list[tuple[int, int]]:
    """(T, rows) shapes to measure, T-major; those with rows·T > ``max_row_tokens`` left out."""
    return [(T, r) for T in tokens for r in rows if max_row_tokens is None or r * T <= max_row_tokens]


def estimate_seconds(shapes: list[tuple[int, int]], num_series: int, repeats: int,
                     step_s: Callable[[int], float] = lambda rows: 0.06 + 0.004 * rows) -> float:
    """Rough seconds for the grid: (repeats + 0.25 warm-up) runs of T steps per shape and series,
    a step of ``rows`` rows taking ``step_s(rows)`` (by default the eager engine's order of
    magnitude on a 2-core machine)."""
    return sum((repeats + 0.25) * T * step_s(r) for T, r in shapes) * num_series


# --- measuring --------------------------------------------------------------------------------

def uptime() -> str:
    """The machine's load averages (1, 5, 15 min) as ``uptime`` prints them."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def peak_gemm_flops(torch, n: int = 2048, repeats: int = 5, dtype=None) -> float:
    """Best FLOP/s of an n×n by n×n matmul (2n³ FLOPs; fp32 unless ``dtype``) over ``repeats`` runs."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2.0 * n**3 / best


def copy_bandwidth(torch, mbytes: int = 512, repeats: int = 5) -> float:
    """Best bytes/s of copying an fp32 tensor of ``mbytes`` MB into another (read + write)."""
    src = torch.randn(mbytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2.0 * src.numel() * 4 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gguf_weight_bytes(path: Path) -> tuple[float, str]:
    """Bytes of the GGUF tensors a decoding step reads: all of them, except the token embedding
    when a separate output head exists (then only rows of it are looked up). Also a short note."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors and "token_embd.weight" in tensors:
        return total - tensors["token_embd.weight"], "separate output head"
    return total, "tied head (token_embd read as the head)"


class LlamaCppRaw:
    """llama.cpp through llama-cpp-python's low-level API: a context of ``rows`` sequences (the KV
    cache as llama.cpp lays it out by default), raw batched ``llama_decode`` calls with one
    sequence per row, sampling in numpy."""

    def __init__(self, gguf: Path, threads: int):
        import llama_cpp

        self.lib = llama_cpp
        # llama.cpp's log (every context and graph) off; the callback must outlive the model
        self.quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(self.quiet, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        load = getattr(llama_cpp, "llama_model_load_from_file", None) or llama_cpp.llama_load_model_from_file
        self.model = load(str(gguf).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self.threads = threads
        self.ctx = None
        self.shape = None

    def context(self, rows: int, length: int):
        """A context for ``rows`` sequences of up to ``length`` tokens each (reused if it fits)."""
        lib = self.lib
        if self.ctx is not None and self.shape[0] >= rows and self.shape[1] >= length:
            self.clear()
            return self.ctx
        if self.ctx is not None:
            lib.llama_free(self.ctx)
        p = lib.llama_context_default_params()
        p.n_ctx = rows * length
        p.n_batch = max(rows, length)
        p.n_ubatch = max(rows, length)
        p.n_seq_max = rows
        p.n_threads = p.n_threads_batch = self.threads
        make = getattr(lib, "llama_init_from_model", None) or lib.llama_new_context_with_model
        self.ctx = make(self.model, p)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {rows} sequences × {length} tokens")
        self.shape = (rows, length)
        return self.ctx

    def clear(self) -> None:
        lib = self.lib
        if hasattr(lib, "llama_get_memory"):
            lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        else:
            lib.llama_kv_self_clear(self.ctx)

    def copy_sequence(self, src: int, dst: int) -> None:
        """Make sequence ``dst`` share sequence ``src``'s cached tokens (the prompt)."""
        lib = self.lib
        if hasattr(lib, "llama_get_memory"):
            lib.llama_memory_seq_cp(lib.llama_get_memory(self.ctx), src, dst, -1, -1)
        else:
            lib.llama_kv_self_seq_cp(self.ctx, src, dst, -1, -1)

    def decode(self, prompt: list[int], rows: int, T: int, seed: int) -> tuple[float, np.ndarray]:
        """Prefill ``prompt`` once (sequence 0, then copied to the other rows' sequences), then T
        steps of one ``llama_decode`` of ``rows`` tokens (one per sequence, logits of all) and
        inverse-CDF sampling. Returns (seconds of the T steps, tokens (rows, T))."""
        lib = self.lib
        ctx = self.context(rows, len(prompt) + T + 1)
        L = len(prompt)
        batch = lib.llama_batch_init(max(rows, L), 0, 1)
        try:
            batch.n_tokens = L
            for i, tok in enumerate(prompt):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, i, 1, i == L - 1
                batch.seq_id[i][0] = 0
            if lib.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompt")
            for s in range(1, rows):
                self.copy_sequence(0, s)
            rng = np.random.default_rng(seed)
            uniforms = rng.random((T, rows))
            out = np.empty((rows, T), dtype=np.int64)
            last = ctypes.cast(lib.llama_get_logits_ith(ctx, L - 1), ctypes.POINTER(ctypes.c_float))
            logits = np.repeat(np.ctypeslib.as_array(last, shape=(1, self.n_vocab)), rows, axis=0)
            # every step: token s of sequence s at position L + t, logits of all (set once here)
            for s in range(rows):
                batch.n_seq_id[s], batch.logits[s] = 1, True
                batch.seq_id[s][0] = s
            tokens = np.ctypeslib.as_array(batch.token, shape=(rows,))
            pos = np.ctypeslib.as_array(batch.pos, shape=(rows,))
            t0 = time.perf_counter()
            for t in range(T):
                out[:, t] = inverse_cdf(logits, uniforms[t])
                if t == T - 1:
                    break
                batch.n_tokens = rows
                tokens[:] = out[:, t]
                pos[:] = L + t
                if lib.llama_decode(ctx, batch) != 0:
                    raise RuntimeError(f"llama_decode failed at step {t} with {rows} sequences")
                ptr = ctypes.cast(lib.llama_get_logits(ctx), ctypes.POINTER(ctypes.c_float))
                logits = np.ctypeslib.as_array(ptr, shape=(rows, self.n_vocab))
            return time.perf_counter() - t0, out
        finally:
            lib.llama_batch_free(batch)


def inverse_cdf(logits, u):
    """Token of each row drawn by inverse CDF from softmax(logits) (rows, V) with uniforms u (rows,)."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    return np.minimum((cdf < (u * cdf[:, -1])[:, None]).sum(axis=1), logits.shape[1] - 1)


def main_job(timeout: float) -> dict:
    """Run ``ctrlalign align MAIN_JOB_PROMPT --json`` (the default config) and time it."""
    exe = Path(sys.executable).with_name("ctrlalign")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from ctrlalign.cli import main; main()"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + ["align", MAIN_JOB_PROMPT, "--json"], capture_output=True, text=True, check=False,
                          env=env, timeout=timeout, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}", "command_s": wall}
    rec = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"align_s": rec["seconds_batch"], "align_with_load_s": rec["seconds_total"], "command_s": wall,
            "reward": rec.get("reward")}


def measure(args) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(ROOT))
    import torch

    from ctrlalign import CausalLM, SamplingConfig, make_generators
    from ctrlalign.dynamics.engines.registry import ENGINES
    from ctrlalign.models import load_packaged, packaged_gguf_path

    torch.set_num_threads(args.threads)
    res: dict = {"threads": args.threads, "repeats": args.repeats, "prompt": PROMPT, "cells": [], "skipped": {},
                 "roofline": {}, "machine": {
                     "nproc": os.cpu_count(), "processor": _cpu_name(), "python": platform.python_version(),
                     "torch": torch.__version__, "uptime_start": uptime()}}
    print(f"load: {res['machine']['uptime_start']}; nproc {os.cpu_count()}", flush=True)
    res["machine"]["peak_gflops"] = peak_gemm_flops(torch) / 1e9
    res["machine"]["bandwidth_gb_s"] = copy_bandwidth(torch) / 1e9
    if args.bf16_engines:
        res["machine"]["peak_gflops_bf16"] = peak_gemm_flops(torch, dtype=torch.bfloat16) / 1e9
    print(f"peak fp32 GEMM {res['machine']['peak_gflops']:.1f} GFLOP/s, bfloat16 "
          f"{res['machine'].get('peak_gflops_bf16', float('nan')):.1f}, copy {res['machine']['bandwidth_gb_s']:.1f} GB/s",
          flush=True)

    model, tok = load_packaged("smollm2-135m")
    gguf = packaged_gguf_path("smollm2-135m")
    shape = model_shape(model.config)
    res["model"] = {"name": "smollm2-135m", "gguf": gguf.name, **shape,
                    "params": sum(p.numel() for p in model.parameters())}
    gguf_bytes, gguf_note = gguf_weight_bytes(gguf)
    res["model"]["gguf_weight_bytes"], res["model"]["gguf_note"] = gguf_bytes, gguf_note
    fp32_bytes = 4.0 * sum(p.numel() for p in model.parameters())  # tied: embedding = head, counted once

    shapes = grid(args.rows, args.tokens, args.max_row_tokens)
    lms: dict[str, Callable[[int], object]] = {}
    engines = [e for e in ENGINES if args.engines is None or e in args.engines]
    bf16_model = load_packaged("smollm2-135m", dtype=torch.bfloat16)[0] if args.bf16_engines else None
    variants = [(name, model) for name in engines] + [(f"{name}, bfloat16", bf16_model) for name in args.bf16_engines]
    for series_name, weights in variants:
        name = series_name.split(",")[0]
        try:
            opts = json.loads(args.engine_options.get(name, "{}"))
            lm = CausalLM(weights, tok, engine=name, engine_options=opts,
                          sampling=SamplingConfig(max_new_tokens=max(args.tokens), ignore_eos=True))
            lms[series_name] = lm
        except Exception as e:  # noqa: BLE001 - any engine that cannot run here is recorded, not fatal
            res["skipped"][series_name] = f"{type(e).__name__}: {e}"
    base = lms.get("eager") or next(iter(lms.values()))
    ctx = base.prepare([PROMPT])
    prompt_ids = [int(i) for i, m in zip(ctx.input_ids[0], ctx.attention_mask[0]) if m]
    L = len(prompt_ids)
    res["prompt_tokens"] = L
    llamas: dict[str, LlamaCppRaw] = {}
    for k in [] if args.no_llama_cpp else [args.threads] + [k for k in args.llama_threads if k != args.threads]:
        name = LLAMA_CPP if k == args.threads else f"{LLAMA_CPP}, {k} thread{'s' * (k > 1)}"
        try:
            llamas[name] = LlamaCppRaw(gguf, k)
            import llama_cpp

            res["machine"]["llama_cpp_python"] = llama_cpp.__version__
        except Exception as e:  # noqa: BLE001 - not installed or not buildable: recorded
            res["skipped"][name] = f"{type(e).__name__}: {e}"
    for T in sorted({T for T, _ in shapes}):
        for r in sorted({r for t, r in shapes if t == T}):
            res["roofline"].setdefault("fp32", {})[f"{T}x{r}"] = roofline(
                shape, r, T, L, fp32_bytes, 4, res["machine"]["peak_gflops"] * 1e9, res["machine"]["bandwidth_gb_s"] * 1e9)
            if args.bf16_engines:
                res["roofline"].setdefault("bf16", {})[f"{T}x{r}"] = roofline(
                    shape, r, T, L, fp32_bytes / 2, 2, res["machine"]["peak_gflops_bf16"] * 1e9,
                    res["machine"]["bandwidth_gb_s"] * 1e9)
            res["roofline"].setdefault("gguf", {})[f"{T}x{r}"] = roofline(
                shape, r, T, L, gguf_bytes, 2, res["machine"]["peak_gflops"] * 1e9, res["machine"]["bandwidth_gb_s"] * 1e9)

    def run_engine(lm, rows, T):
        lmT = lm.with_sampling(max_new_tokens=T)
        ctx_e = lmT.prepare([PROMPT])

        def go():
            gens = [g.rollout for g in make_generators(0, [PROMPT])]
            t0 = time.perf_counter()
            lmT.rollout(ctx_e, None, gens, rows)
            return time.perf_counter() - t0
        return go

    def run_generate(rows, T):
        ids = ctx.input_ids.repeat(rows, 1)
        mask = ctx.attention_mask.repeat(rows, 1)

        def go():
            t0 = time.perf_counter()
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                               temperature=1.0, max_new_tokens=T, min_new_tokens=T, pad_token_id=base.pad_token_id)
            return time.perf_counter() - t0
        return go

    def run_llama(llama, rows, T):
        return lambda: llama.decode(prompt_ids, rows, T, seed=0)[0]

    series: dict[str, Callable] = {} if args.no_generate else {GENERATE: run_generate}
    for name, lm in lms.items():
        series[name] = functools.partial(run_engine, lm)
    for name, llama in llamas.items():
        series[name] = functools.partial(run_llama, llama)
    est = estimate_seconds(shapes, len(series), args.repeats)
    print(f"{len(shapes)} shapes × {len(series)} series ({', '.join(series)}); rough estimate "
          f"{est / 60:.0f} min (progress below refines it)", flush=True)
    done_steps = spent = 0.0
    total_steps = sum(T * (args.repeats + 0.25) for T, _ in shapes) * len(series)
    t_start = time.perf_counter()
    for T, rows in shapes:
        for name, make in series.items():
            try:
                go = make(rows, T)
                make(rows, min(T, 8))()  # warm-up: a short run of the same rows
                times, cpu = [], []
                for _ in range(args.repeats):
                    c0 = time.process_time()
                    times.append(go())
                    cpu.append(time.process_time() - c0)  # whole call, this process's threads
                best = min(times)
                cell = {"series": name, "rows": rows, "T": T, "seconds_best": best, "seconds_all": times,
                        "cpu_seconds_all": cpu, "tokens_per_s": rows * T / best}
            except Exception as e:  # noqa: BLE001 - one failing shape does not end the run
                cell = {"series": name, "rows": rows, "T": T, "tokens_per_s": None,
                        "error": f"{type(e).__name__}: {e}"}
            res["cells"].append(cell)
            done_steps += T * (args.repeats + 0.25)
            spent = time.perf_counter() - t_start
            eta = spent / done_steps * (total_steps - done_steps)
            tps = "failed: " + cell["error"] if cell["tokens_per_s"] is None else f"{cell['tokens_per_s']:8.1f} tokens/s"
            print(f"[{spent / 60:5.1f} min, ~{eta / 60:.0f} min left] T={T:4d} rows={rows:4d} {name:10s} {tps}",
                  flush=True)
    if not args.no_main_job:
        print("main job: ctrlalign align (default config) ...", flush=True)
        try:
            res["main_job"] = main_job(timeout=1800)
        except Exception as e:  # noqa: BLE001
            res["main_job"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"main job: {res['main_job']}", flush=True)
    res["machine"]["uptime_end"] = uptime()
    return res


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_outputs(res: dict, json_path: Path, figure: Path | None) -> None:
    """The results JSON (unless it is the file read), the markdown table next to it, the figure."""
    md = json_path.with_suffix(".md")
    md.write_text(report(res))
    print(report(res))
    print(f"wrote {md}")
    if figure is not None:
        try:
            plot(res, figure)
            print(f"wrote {figure}")
        except ImportError:
            print("matplotlib not installed: no figure")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=list(ROWS))
    ap.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS), help="values of T")
    ap.add_argument("--max-row-tokens", type=int, default=None,
                    help="leave out shapes with rows·T above this (8192: T=128 up to 32 rows, T=32 at all)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="rows 1 and 32, T = 32, one repeat, no main job")
    ap.add_argument("--engines", nargs="+", default=None, help="registry engines to measure (default: all)")
    ap.add_argument("--bf16-engines", nargs="*", default=["eager"],
                    help="registry engines also measured with the model in bfloat16 (`--dtype auto` on a CPU with "
                         "AVX512-BF16 or AMX); none: leave bfloat16 out")
    ap.add_argument("--engine-options", action="append", default=[], metavar="NAME=JSON",
                    help="options for one registry engine's factory (repeatable)")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--no-generate", action="store_true", help="leave out transformers' generate")
    ap.add_argument("--llama-threads", type=int, nargs="*", default=[],
                    help="also measure llama.cpp at these thread counts (its threads spin-wait, which a "
                         "busy machine punishes)")
    ap.add_argument("--no-main-job", action="store_true")
    ap.add_argument("--out", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--figure", type=Path, default=DEFAULT_FIGURE)
    ap.add_argument("--report-only", action="store_true", help="table and figure from --out; measure nothing")
    a = ap.parse_args(argv)
    a.engine_options = dict(s.split("=", 1) for s in a.engine_options)
    if a.quick:
        a.rows, a.tokens, a.repeats, a.no_main_job = [1, 32], [32], 1, True
    return a


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.report_only:
        res = json.loads(args.out.read_text())
    else:
        res = measure(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.out}")
    write_outputs(res, args.out, args.figure)


if __name__ == "__main__":
    main()
