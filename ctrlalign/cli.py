"""The ``ctrlalign`` command line.

* ``ctrlalign align "PROMPT"`` — align one prompt with the default model and reward; prints the
  chosen response and reward, the plain model's response and reward, and the trace.
* ``ctrlalign run CONFIG`` — a prompt set × model × reward × controller from a validated
  config file; resumable; shards over ``torchrun`` ranks.
* ``ctrlalign bench CONFIG`` — matched-budget comparison of controllers (``ctrlalign.bench``):
  results JSON, PNG figures and markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from .config import PRESETS
from .controllers import CONTROLLERS, spec

__all__ = ["main"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None, help="base seed (default 0)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="model dtype")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctrlalign", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ctrlalign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("align", help="align one prompt and show the result against the plain model")
    a.add_argument("prompt", help="the prompt text")
    a.add_argument("--model", default="default", help="'default' (packaged SmolLM2-135M-Instruct), HF id or path")
    a.add_argument("--reward", default=None, action="append", dest="rewards",
                   help="reward name (sentiment, embedding, judge, toxicity, classifier); repeat to sum")
    a.add_argument("--preset", default="learning", choices=sorted(PRESETS),
                   help="starting configuration: " + "; ".join(f"{k}: {v['help']}" for k, v in PRESETS.items())
                   + ". Flags below override it")
    a.add_argument("--controller", default=None, choices=list(CONTROLLERS), help="controller (default: the preset's)")
    spec.add_arguments(a, [c.spec() for c in CONTROLLERS.values()],
                       aliases={"num_samples": ["-n"], "num_iterations": ["-k"]})
    a.add_argument("--selection", default=None, choices=["best", "reservoir", "final"],
                   help="which response to keep (default: the controller's own: best so far; softmax: reservoir)")
    a.add_argument("--final-samples", type=int, default=None, help="m, draws from the final proposal (--selection final)")
    a.add_argument("--common-random-numbers", default=None, action=argparse.BooleanOptionalAction,
                   help="replay the same rollout random numbers every round")
    a.add_argument("--greedy", default=None, action=argparse.BooleanOptionalAction,
                   help="greedy decoding of the controlled logits (the response is a function of the controls)")
    a.add_argument("--max-new-tokens", type=int, default=None, help="T, tokens per response (default: the preset's)")
    a.add_argument("--engine", default="eager", choices=["eager", "static"],
                   help="rollout engine; 'static' = static KV cache + CUDA graphs (GPU, Llama/Qwen2)")
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_common(a)

    r = sub.add_parser("run", help="run a config file (resumable; torchrun-aware)")
    r.add_argument("config", help="YAML/JSON/TOML config file")
    r.add_argument("--overwrite", action="store_true", help="discard results of a different config")
    r.add_argument("--output", default=None, help="override run.output")
    r.add_argument("--limit", type=int, default=None, help="override limit")
    r.add_argument("--no-progress", action="store_true")
    _add_common(r)

    b = sub.add_parser("bench", help="matched-budget benchmark of several controllers (ctrlalign.bench)")
    b.add_argument("config", help="YAML/JSON/TOML bench config (see ctrlalign.bench.config.BenchConfig)")
    b.add_argument("--output", default=None, help="override the results JSON path")
    b.add_argument("--limit", type=int, default=None, help="override limit (number of prompts)")
    b.add_argument("--report-only", action="store_true",
                   help="do not run: rebuild figures and tables from the existing results JSON")
    b.add_argument("--device", default=None, help="torch device (overrides model.device)")
    return parser


def _build_align_config(args: argparse.Namespace):
    from .config import RunConfig

    preset = PRESETS[args.preset]
    rewards = args.rewards or ["sentiment"]
    ctrl: dict[str, Any] = dict(preset["controller"])
    if args.controller is not None and args.controller != ctrl.get("name"):
        ctrl = {"name": args.controller}  # another controller: its own defaults, not the preset's
    ctrl.update(spec.arguments_to_kwargs(args, [c.spec() for c in CONTROLLERS.values()]))
    for key in ("selection", "final_samples", "common_random_numbers"):
        if getattr(args, key) is not None:
            ctrl[key] = getattr(args, key)
    model: dict[str, Any] = {"name": args.model, "engine": args.engine, **preset["model"]}
    for key in ("max_new_tokens", "greedy", "device", "dtype"):
        if getattr(args, key, None) is not None:
            model[key] = getattr(args, key)
    return RunConfig.model_validate({
        "prompts": [args.prompt], "model": model, "reward": [{"name": x} for x in rewards], "controller": ctrl,
        "run": {"seed": args.seed or 0, "batch_prompts": 1, "output": os.devnull},
    })


def _fmt_trace(trace: list[dict[str, float]]) -> str:
    head = f"{'iter':>4} {'mean r':>8} {'max r':>8} {'best r':>8} {'ESS':>6} {'H(w)':>6} {'‖U‖':>8} {'KL':>9} {'sec':>6}"
    rows = [head]
    for t in trace:
        rows.append(f"{t['iteration']:>4d} {t['mean_reward']:>8.4f} {t['max_reward']:>8.4f} {t['best_reward']:>8.4f} "
                    f"{t['ess']:>6.2f} {t['weight_entropy']:>6.2f} {t['mean_norm']:>8.3f} {t['kl']:>9.2f} "
                    f"{t['seconds']:>6.2f}")
    return "\n".join(rows)


def cmd_align(args: argparse.Namespace) -> int:
    from .data import PromptItem
    from .runner import build_dynamics, solve_batch

    cfg = _build_align_config(args)
    t0 = time.perf_counter()
    print(f"loading model {cfg.model.name!r} on {cfg.model.device} ...", file=sys.stderr, flush=True)
    dyn = build_dynamics(cfg)
    reward = cfg.build_reward()
    ctrl = cfg.controller.build()
    print(f"model ready in {time.perf_counter() - t0:.1f}s; {ctrl!r}; reward {reward.name}", file=sys.stderr, flush=True)
    rec = solve_batch(dyn, reward, ctrl, [PromptItem(id="p0", text=args.prompt)], cfg.run.seed, base=True,
                      progress=True, selection=cfg.controller.build_selection(),
                      common_random_numbers=cfg.controller.common_random_numbers)[0]
    rec["seconds_total"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(rec, ensure_ascii=False, indent=2))
        return 0
    print(f"\nPrompt: {args.prompt}\n")
    print(f"Aligned response ({ctrl.name}, {rec['reward_calls']} reward calls)   reward = {rec['reward']:.4f}")
    print("  " + (rec["response"] or "").replace("\n", "\n  "))
    print(f"\nPlain model response   reward = {rec['base_reward']:.4f}")
    print("  " + (rec["base_response"] or "").replace("\n", "\n  "))
    print("\nTrace:")
    print(_fmt_trace(rec["trace"]))
    print(f"\ntotal {rec['seconds_total']:.1f}s")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runner import ConfigChangedError, run

    overrides: dict[str, Any] = {}
    if args.seed is not None:
        overrides["run.seed"] = args.seed
    if args.output is not None:
        overrides["run.output"] = args.output
    if args.device is not None:
        overrides["model.device"] = args.device
    if args.dtype is not None:
        overrides["model.dtype"] = args.dtype
    cfg = load_config(args.config, overrides)
    if args.limit is not None:
        cfg.limit = args.limit
    try:
        out = run(cfg, overwrite=args.overwrite, progress=not args.no_progress,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    except ConfigChangedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchResult, load_bench_config, run_bench
    from .bench.plots import write_figures
    from .bench.report import markdown_report

    cfg = load_bench_config(args.config)
    if args.output is not None:
        cfg.output = args.output
    if args.limit is not None:
        cfg.limit = args.limit
    if args.device is not None:
        cfg.model.device = args.device
    if args.report_only:
        result = BenchResult.load(cfg.output)
        if not result.summary:  # a run stopped early: summarise the completed part
            from .bench.harness import finish_bench

            finish_bench(result, cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
            result.save(cfg.output)
    else:
        result = run_bench(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    figures = write_figures(result, cfg.figures, prefix=cfg.name, primary=cfg.primary) if cfg.figures else []
    text = markdown_report(result)
    tables = cfg.tables or str(cfg.output).rsplit(".", 1)[0] + ".md"
    with open(tables, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(text)
    print(f"results: {cfg.output}\ntables: {tables}\nfigures: {', '.join(map(str, figures)) or '-'}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ctrlalign``; returns the exit status (2 on invalid input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "align":
            return cmd_align(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "bench":
            return cmd_bench(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
