"""The ``ctrlalign`` command line.

* ``ctrlalign align "PROMPT"`` — align one prompt with the default model and reward; prints the
  chosen response and reward, the plain model's response and reward, and the trace.
* ``ctrlalign run CONFIG`` — a prompt set × model × reward × controller from a validated
  config file; resumable; shards over ``torchrun`` ranks.
* ``ctrlalign bench CONFIG`` — matched-budget comparison of controllers (``ctrlalign.bench``):
  results appended to a JSON Lines file, PNG figures and markdown tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from ._checks import ConfigError, RewardError
from .build import (
    build_controller,
    build_dynamics,
    build_reward,
    build_selection,
    build_space,
    check_run_fits,
)
from .config import DEFAULT_PRESET, PRESETS, ModelConfig, RunConfig, load_config, validate_config
from .controllers import CONTROLLERS, Controller
from .data import PromptItem
from .declare import add_arguments, arguments_to_kwargs, override
from .runner import run
from .solve import CandidateRecorder, solve_batch
from .spaces import SPACES
from .store import OutputError, RunError, RunInterrupted, check_output_path

__all__ = ["align_config", "build_parser", "main"]

logger = logging.getLogger("ctrlalign")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None, help="base seed, 0 … 2^64-1 (default 0)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default cpu); under torchrun "
                   "'cuda' means each rank's cuda:LOCAL_RANK")
    p.add_argument("--dtype", default=None, choices=get_args(ModelConfig.model_fields["dtype"].annotation),
                   help="model dtype (auto: bfloat16 where the device computes it natively, else float32)")
    p.add_argument("--trust-remote-code", default=None, action="store_true",
                   help="allow a model whose architecture is code in its repository (only models you trust)")


def _add_logging(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="only ctrlalign's warnings and errors on stderr (no progress bars, no library "
                   "deprecation warnings)")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug messages, and a traceback with every error")


def _add_model(a: argparse.ArgumentParser) -> None:
    """The model section of a run config as flags (default None: the preset's or config's)."""
    a.add_argument("--model", default=None, help="'default' (packaged SmolLM2-135M-Instruct), HF id or path")
    a.add_argument("--max-new-tokens", type=int, default=None, help="T, tokens per response (default: the preset's)")
    a.add_argument("--sampling-temperature", type=float, default=None, dest="sampling_temperature",
                   help="temperature of token sampling (default 1.0, the method's dynamics; the controller's "
                   "weight temperature λ is --temperature)")
    a.add_argument("--top-k", type=int, default=None, help="top-k filter of token sampling (default off)")
    a.add_argument("--top-p", type=float, default=None, help="nucleus filter of token sampling, in (0, 1] (default off)")
    a.add_argument("--greedy", default=None, action=argparse.BooleanOptionalAction,
                   help="greedy decoding of the controlled logits (the response is a function of the controls)")
    a.add_argument("--chat-template", default=None, action=argparse.BooleanOptionalAction,
                   help="apply the tokenizer's chat template when it has one (default yes)")
    a.add_argument("--system-prompt", default=None, help="system message put before the prompt (chat templates)")
    a.add_argument("--engine", default=None, choices=["eager", "static", "llamacpp"],
                   help="rollout engine; 'static' = static KV cache + CUDA graphs (GPU, Llama/Qwen2); "
                        "'llamacpp' = llama.cpp forward pass on the packaged GGUF (CPU; needs llama-cpp-python)")
    a.add_argument("--batch-invariant", default=None, action=argparse.BooleanOptionalAction,
                   help="decode each prompt on its own rows so its result is bitwise the same in any batch "
                        "(eager engine; default on, as in the Python API; x0.54 tokens/s of mixing prompts at n = 8 on CPU)")


def _schedule(text: str) -> list[list[int | float]]:
    """``T:M,T:M,...`` (or ``T:M:R``) as a schedule [[T, M], ...] / [[T, M, R], ...] (checked by the
    controller); an M or R with a decimal point is a fraction of n₀."""
    def count(x: str) -> int | float:
        return float(x) if "." in x else int(x)
    try:
        steps = [step.split(":") for step in text.split(",")]
        if any(len(step) not in (2, 3) for step in steps):
            raise ValueError(text)
        return [[int(step[0]), *map(count, step[1:])] for step in steps]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T:M,T:M,... or T:M:R,... (T an integer; M, R integer row counts "
                                         f"or fractions of n₀ such as 0.5), got {text!r}") from None


def _controller_options() -> set[str]:
    """The option names some registered controller declares (a space option of the same name
    gets no flag of its own)."""
    return {n for sp in CONTROLLERS.specs() for n in sp.names}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (``align``, ``run``, ``bench``); the docs' command-line
    page is generated from it."""
    parser = argparse.ArgumentParser(prog="ctrlalign", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ctrlalign {__version__}")
    _add_logging(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("align", help="align one prompt and show the result against the plain model")
    a.add_argument("prompt", help="the prompt text")
    a.add_argument("--reward", default=None, action="append", dest="rewards", metavar="NAME[:WEIGHT]",
                   help="reward name (sentiment, embedding, judge, toxicity, classifier) with an optional weight; "
                   "repeat to sum")
    a.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help="starting configuration: " + "; ".join(f"{k}: {v['help']}" for k, v in PRESETS.items())
                   + ". Flags below override it")
    a.add_argument("--controller", default=None, choices=list(CONTROLLERS),
                   help="controller (default: the preset's): open loop (weighs whole responses) or closed loop "
                   "(smc, speculative-rejection, receding-horizon: acts on partial responses)")
    add_arguments(a, CONTROLLERS.specs(), aliases={"num_samples": ["-n"], "num_iterations": ["-k"]})
    a.add_argument("--inner", default=None, choices=[k for k, c in CONTROLLERS.items() if issubclass(c, Controller)],
                   help="receding-horizon: the open-loop controller run in every window (default: the preset's); "
                   "the controller flags it takes and receding-horizon does not (-n, -k, --sigma, ...) go to it")
    a.add_argument("--schedule", default=None, type=_schedule, metavar="T:M,T:M,...",
                   help="speculative-rejection: at T tokens keep the M best rows, e.g. 8:16,16:8, or a fraction "
                   "of n₀, e.g. 8:0.5,16:0.25; T:M:R continues with R rows, the survivors forked back, e.g. "
                   "8:8:32,16:8:32 (replaces --block-size/--keep-fraction)")
    a.add_argument("--space", default=None, choices=list(SPACES),
                   help="control space (default: the preset's); its options are the flags that follow")
    add_arguments(a, SPACES.specs(), exclude=_controller_options())
    a.add_argument("--selection", default=None, choices=["best", "reservoir", "final"],
                   help="which response to keep (default: the controller's own: best so far; softmax: reservoir)")
    a.add_argument("--final-samples", type=int, default=None, help="m, draws from the final proposal (--selection final)")
    a.add_argument("--common-random-numbers", default=None, action=argparse.BooleanOptionalAction,
                   help="replay the same rollout random numbers every round")
    _add_model(a)
    a.add_argument("--base", default=None, action=argparse.BooleanOptionalAction,
                   help="also sample and score the plain model's response (default yes)")
    a.add_argument("--output", default=None, metavar="FILE", help="also write the result record (JSON) to FILE")
    a.add_argument("--save-candidates", default=None, metavar="FILE",
                   help="write every one of the n·k candidates (text, reward, iteration, log-probabilities) to "
                   "FILE as JSON lines")
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_common(a)
    _add_logging(a)

    r = sub.add_parser("run", help="run a config file (resumable; torchrun-aware)")
    r.add_argument("config", help="YAML/JSON/TOML config file")
    r.add_argument("--overwrite", action="store_true",
                   help="discard the output's results (another config's, or changed prompts') and start over")
    r.add_argument("--output", default=None, help="override run.output")
    r.add_argument("--limit", type=int, default=None, help="override limit (raising it continues the run)")
    r.add_argument("--save-candidates", default=None, action="store_true",
                   help="keep every candidate in <output stem>.candidates.jsonl (run.save_candidates)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_common(r)
    _add_logging(r)

    b = sub.add_parser("bench", help="matched-budget benchmark of several controllers (ctrlalign.bench)")
    b.add_argument("config", help="YAML/JSON/TOML bench config (see ctrlalign.bench.config.BenchConfig)")
    b.add_argument("--output", default=None, help="override the results file (config output)")
    b.add_argument("--limit", type=int, default=None, help="override limit (number of prompts)")
    b.add_argument("--report-only", action="store_true",
                   help="do not run: rebuild figures and tables from the existing results file (a run "
                   "stopped early is summarised first)")
    b.add_argument("--device", default=None, help="torch device (overrides model.device)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an existing results file instead of resuming it (by default the runs it holds "
                   "are kept and only the missing ones run; a file of another configuration is refused)")
    _add_logging(b)
    return parser


_MODEL_FLAGS = {"model": "name", "max_new_tokens": "max_new_tokens", "sampling_temperature": "temperature",
                "top_k": "top_k", "top_p": "top_p", "greedy": "greedy", "chat_template": "chat_template",
                "system_prompt": "system_prompt", "engine": "engine", "device": "device", "dtype": "dtype",
                "trust_remote_code": "trust_remote_code", "batch_invariant": "batch_invariant"}


def _reward_term(text: str) -> dict[str, Any]:
    """``NAME`` or ``NAME:WEIGHT`` as a reward term (the weight is validated by the config)."""
    name, sep, weight = text.partition(":")
    if not sep:
        return {"name": name}
    try:
        return {"name": name, "weight": float(weight)}
    except ValueError:
        raise ConfigError(f"--reward {text!r}: the weight after ':' must be a number, got {weight!r}") from None


def align_config(args: argparse.Namespace) -> RunConfig:
    """The run config of ``align``'s flags: the preset, then every flag the user set."""
    preset = PRESETS[args.preset]
    ctrl: dict[str, Any] = dict(preset["controller"])
    space: dict[str, Any] = dict(preset.get("space", {}))
    model: dict[str, Any] = dict(preset["model"])
    name = ctrl.get("name", "aisp") if args.controller is None else args.controller
    cls = CONTROLLERS[name]
    if name != ctrl.get("name"):  # another controller: its own defaults, not the preset's ...
        # ... but the preset's runs inside it, when it is an open-loop one
        open_loop = issubclass(CONTROLLERS[ctrl.get("name", "aisp")], Controller)
        inner = {"inner": ctrl} if "inner" in cls.spec().names and open_loop else {}
        ctrl = {"name": name, **inner}
        if not cls.uses_space and args.space is None:
            space = {}
        if cls.needs_sampling and args.greedy is None:
            model.pop("greedy", None)
    if args.inner is not None:
        ctrl["inner"] = {"name": args.inner}
    if args.space is not None and args.space != space.get("name"):
        space = {"name": args.space}  # another space: its own defaults, not the preset's
    space_cls = SPACES[space.get("name", "per-token")]
    flags = arguments_to_kwargs(args, [*CONTROLLERS.specs(), *SPACES.specs()])
    if args.schedule is not None:
        flags["schedule"] = args.schedule
    inner_cls = CONTROLLERS.get(ctrl["inner"]["name"]) if isinstance(ctrl.get("inner"), dict) else None
    routed: dict[str, dict[str, Any]] = {"controller": {}, "inner": {}, "space": {}}
    for key, value in flags.items():  # each flag to the chosen component that takes it
        if key in cls.spec().names:
            routed["controller"][key] = value
        elif inner_cls is not None and key in inner_cls.spec().names:
            routed["inner"][key] = value
        elif key in space_cls.spec().names or key not in _controller_options():
            routed["space"][key] = value
        else:  # refused by the controller's section, naming it
            routed["controller"][key] = value
    ctrl = override(ctrl, routed["controller"], cls.spec())
    if inner_cls is not None:
        ctrl["inner"] = override(ctrl["inner"], routed["inner"], inner_cls.spec())
    space = override(space, routed["space"], space_cls.spec())
    for key in ("selection", "final_samples", "common_random_numbers"):
        if getattr(args, key) is not None:
            ctrl[key] = getattr(args, key)
    for flag, key in _MODEL_FLAGS.items():
        if getattr(args, flag, None) is not None:
            model[key] = getattr(args, flag)
    run: dict[str, Any] = {"seed": 0 if args.seed is None else args.seed, "batch_prompts": 1,
                           "output": args.output or os.devnull}
    if args.base is not None:
        run["base"] = args.base
    if args.save_candidates:  # so that a controller without candidates refuses it before any model work
        run["save_candidates"] = True
    return validate_config({
        "prompts": [args.prompt], "model": model, "controller": ctrl, "run": run, **({"space": space} if space else {}),
        "reward": [_reward_term(x) for x in args.rewards or ["sentiment"]],
    }, "options")


_TRACE_COLUMNS = {  # per kind of controller: (header, key, width, format)
    "open-loop": [
        ("iter", "iteration", 4, "d"), ("mean r", "mean_reward", 8, ".4f"), ("max r", "max_reward", 8, ".4f"),
        ("best r", "best_reward", 8, ".4f"), ("sd r", "reward_std", 7, ".4f"), ("λ", "temperature", 9, ".4g"),
        ("ESS", "ess", 6, ".2f"), ("H(w)", "weight_entropy", 6, ".2f"), ("‖θ‖", "mean_norm", 8, ".3f"),
        ("KL", "kl", 9, ".2f"), ("sec", "seconds", 6, ".2f"),
    ],
    "closed-loop": [  # one row per checkpoint (Checkpoint.summary)
        ("t", "position", 5, "d"), ("rows", "rows", 5, "d"), ("ESS", "ess", 7, ".2f"), ("λ_t", "temperature", 9, ".4g"),
        ("mean score", "mean_score", 10, ".4f"), ("distinct", "distinct", 8, "d"), ("resampled", "resampled", 9, ""),
        ("archived", "archived", 8, "d"),
    ],
}


def _fmt_trace(trace: list[dict[str, Any]], kind: str = "open-loop") -> str:
    """The trace as a table, per iteration (open loop) or per checkpoint (closed loop); a value
    that does not exist, e.g. λ of Best-of-N, is '-'."""
    columns = _TRACE_COLUMNS[kind]
    rows = ["  ".join(f"{h:>{w}}" for h, _, w, _ in columns)]  # two spaces: headings hold one
    for t in trace:
        rows.append("  ".join(f"{'-':>{w}}" if t.get(k) is None else f"{t[k]!s:>{w}}" if not f else f"{t[k]:>{w}{f}}"
                             for _, k, w, f in columns))
    return "\n".join(rows)


def _write_file(path: str, text: str) -> None:
    """Write a file the user named; failures are one-line :class:`OutputError` s."""
    p = Path(path)
    check_output_path(p)
    try:
        if p.parent != Path(""):
            p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {p}: {exc.strerror or exc}") from None


def cmd_align(args: argparse.Namespace) -> int:
    """``ctrlalign align``: build, check, solve one prompt, print (and optionally save) it."""
    cfg = align_config(args)
    for path in (args.output, args.save_candidates):
        if path is not None:
            check_output_path(Path(path))
    item = PromptItem(id="p0", text=args.prompt)
    t0 = time.perf_counter()
    ctrl = build_controller(cfg.controller)
    space = build_space(cfg.space)
    reward = build_reward(cfg.reward, [item])
    logger.info("loading model %r on %s ...", cfg.model.name, cfg.model.device)
    dyn = build_dynamics(cfg.model)
    check_run_fits(dyn, ctrl, [item], space)
    logger.info("model ready in %.1fs (%s); %r%s; reward %s", time.perf_counter() - t0,
                str(dyn.dtype).removeprefix("torch."), ctrl,
                f" in {space.describe()}" if ctrl.uses_space else "", reward.name)
    recorder = CandidateRecorder([item.id]) if args.save_candidates else None
    try:
        rec = solve_batch(dyn, reward, ctrl, [item], cfg.run.seed, base=cfg.run.base,
                          progress=logger.isEnabledFor(logging.INFO), selection=build_selection(cfg.controller),
                          common_random_numbers=cfg.controller.common_random_numbers, candidates=recorder,
                          space=space)[0]
    except KeyboardInterrupt:
        raise RunInterrupted("interrupted: align keeps no partial results; nothing was saved") from None
    rec["seconds_total"] = time.perf_counter() - t0
    if args.output:
        _write_file(args.output, json.dumps(rec, ensure_ascii=False, indent=2) + "\n")
    if recorder is not None:
        _write_file(args.save_candidates, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recorder.rows))
    if args.json:
        print(json.dumps(rec, ensure_ascii=False, indent=2))
        return 0
    print(f"\nPrompt: {args.prompt}\n")
    budget = f"{rec['reward_calls']} reward calls"
    if rec["prefix_calls"]:
        budget += f" + {rec['prefix_calls']} prefix calls"
    budget += f", {rec['tokens']} tokens decoded"
    print(f"Aligned response ({ctrl.name}, {budget})   reward = {rec['reward']:.4f}")
    print("  " + (rec["response"] or "").replace("\n", "\n  "))
    if "base_reward" in rec:
        print(f"\nPlain model response   reward = {rec['base_reward']:.4f}")
        print("  " + (rec["base_response"] or "").replace("\n", "\n  "))
    print("\nTrace" + (" (one row per checkpoint):" if rec["kind"] == "closed-loop" else ":"))
    print(_fmt_trace(rec["trace"], rec["kind"]))
    if rec.get("log_normalizer") is not None:
        print(f"log Ẑ = {rec['log_normalizer']:.4f}   distinct finished responses: {rec['distinct']}")
    print(f"\ntotal {rec['seconds_total']:.1f}s")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``ctrlalign run``: the config with the flags' overrides, run or resumed."""
    overrides: dict[str, Any] = {}
    for flag, key in (("seed", "run.seed"), ("output", "run.output"), ("device", "model.device"),
                      ("dtype", "model.dtype"), ("limit", "limit"), ("save_candidates", "run.save_candidates"),
                      ("trust_remote_code", "model.trust_remote_code")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    cfg = load_config(args.config, overrides)
    out = run(cfg, overwrite=args.overwrite, progress=not args.no_progress and logger.isEnabledFor(logging.INFO))
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``ctrlalign bench``: run (or re-report) a matched-budget benchmark."""
    from pydantic import ValidationError

    from .bench import finish_saved, load_bench_config, run_bench
    from .bench.plots import write_figures
    from .bench.report import markdown_report
    from .config import format_validation_error

    cfg = load_bench_config(args.config)
    try:
        if args.output is not None:
            cfg.output = args.output
        if args.limit is not None:
            cfg.limit = args.limit
        if args.device is not None:
            cfg.model.device = args.device
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "options")) from None
    if args.report_only:  # a run stopped early is summarised (what finished) and the summary saved
        result = finish_saved(cfg, log=logger.info)
    else:
        result = run_bench(cfg, log=logger.info, overwrite=args.overwrite)
    figures = write_figures(result, cfg.figures, prefix=cfg.name, primary=cfg.primary) if cfg.figures else []
    text = markdown_report(result)
    tables = cfg.tables or str(cfg.output).rsplit(".", 1)[0] + ".md"
    _write_file(tables, text)
    print(text)
    logger.info("results: %s\ntables: %s\nfigures: %s", cfg.output, tables, ", ".join(map(str, figures)) or "-")
    return 0


def _configure_logging(args: argparse.Namespace) -> None:
    """Messages go to stderr through the ``ctrlalign`` logger: INFO, WARNING with --quiet,
    DEBUG with --verbose."""
    level = logging.DEBUG if getattr(args, "verbose", False) else (
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    if level > logging.INFO:  # --quiet: no library progress bars or deprecation chatter either
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


#: exit status of each kind of failure; the message is always one ``error: ...`` line (or block)
EXIT_USAGE = 2  # a bad value, file, model or output location: fix the input
EXIT_FAILED = 1  # the run failed on the way (a reward raised, the disk is full): fix and resume
EXIT_INTERRUPTED = 130  # Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ctrlalign``; returns the exit status.

    0 on success; 2 for a bad value, file, model or output (a :class:`ConfigError` /
    ``ValueError`` or :class:`~ctrlalign.store.RunError`; argparse also exits 2); 1 when a run
    fails on the way (a reward error, disk full, read-only output); 130 on Ctrl-C. Each prints
    one short ``error: ...`` message (with ``--verbose``, also the traceback).
    """
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    commands = {"align": cmd_align, "run": cmd_run, "bench": cmd_bench}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt as exc:
        msg = str(exc) or "interrupted"
        print(f"{msg}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OutputError, RewardError) as exc:
        return _fail(exc, EXIT_FAILED)
    except (ValueError, RunError) as exc:
        return _fail(exc, EXIT_USAGE)
    except OSError as exc:
        name = f" {exc.filename}" if exc.filename else ""
        return _fail(OutputError(f"cannot access{name}: {exc.strerror or exc}"), EXIT_FAILED)


def _fail(exc: BaseException, status: int) -> int:
    logger.debug("traceback:", exc_info=exc)
    print(f"error: {exc}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
