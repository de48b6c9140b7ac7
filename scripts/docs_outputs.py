"""Run the commands the documentation shows, and keep what they printed and returned.

For each NAME this writes, from one run:

* ``docs/snippets/NAME_output.txt``: what the command printed (the pages include it verbatim);
* ``docs/snippets/NAME.json``: the numbers of that same run (what the example's ``main``
  returned, or the parsed trace of ``ctrlalign align``), plus ``seconds``, the wall-clock time;
* the example's figure in ``docs/img/`` (``--out docs/img``).

Pages quote numbers about a run only through ``<<run:NAME#key/...|format>>``, which the mkdocs
hook (``scripts/mkdocs_hooks.py``) replaces with values from ``NAME.json`` at build time, so
the prose and the output above it always come from the same run.

    python scripts/docs_outputs.py toy_gaussian swap_controllers custom_components   # seconds
    python scripts/docs_outputs.py align align_smollm2 choose_parameters fast_rollouts  # real model
    python scripts/docs_outputs.py --list

NAME is an example in ``examples/`` (run as ``python examples/NAME.py --out docs/img`` with its
defaults) or one of the commands in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "docs" / "snippets"
IMG = ROOT / "docs" / "img"

#: the `ctrlalign align` runs shown in the docs: name -> argv
COMMANDS = {
    "align": ["align", "Write one sentence about your weekend."],
    "align_learning": ["align", "Write one sentence about your weekend.", "--preset", "learning"],
}


def _plain(obj):
    """JSON-able copy: tensors and arrays to lists, non-finite floats to None, keys to str."""
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def _parse_align(text: str) -> dict:
    """The numbers of a `ctrlalign align` printout: rewards, the trace table, the total time."""
    lines = text.splitlines()
    out: dict = {}
    for line in lines:
        if line.startswith("Aligned response"):
            out["reward"] = float(line.rsplit("=", 1)[1])
            for key, words in (("reward_calls", "reward calls"), ("prefix_calls", "prefix calls"),
                               ("tokens", "tokens decoded")):
                found = re.search(rf"(\d+) {words}", line)
                if found:
                    out[key] = int(found.group(1))
        elif line.startswith("Plain model response"):
            out["base_reward"] = float(line.rsplit("=", 1)[1])
        elif line.startswith("total "):
            out["seconds_total"] = float(line.split()[1].rstrip("s"))
    head = next(i for i, line in enumerate(lines) if line.startswith("Trace")) + 1
    # columns are separated by two or more spaces; known ones get the trace's own field names,
    # new ones (the CLI grows) a slug of their heading
    names = {"iter": "iteration", "mean r": "mean_reward", "max r": "max_reward",
             "best r": "best_reward", "ESS": "ess", "H(w)": "weight_entropy", "‖U‖": "mean_norm",
             "‖θ‖": "mean_norm", "sd r": "reward_std", "λ": "temperature", "KL": "kl", "sec": "seconds",
             "t": "position", "λ_t": "temperature", "mean score": "mean_score"}
    cols = [names.get(c, re.sub(r"\W+", "_", c).strip("_").lower())
            for c in re.split(r"\s{2,}", lines[head].strip())]
    trace = []
    for line in lines[head + 1:]:
        if not line.strip():
            break
        values = line.split()
        if len(values) != len(cols):
            raise ValueError(f"trace row {line!r} does not match the header {lines[head]!r}")
        trace.append({c: (int(v) if c in ("iteration", "position", "rows", "distinct") else None if v == "-"
                          else v == "True" if v in ("True", "False") else float(v)) for c, v in zip(cols, values)})
    out["trace"] = trace
    return out


def run_one(name: str) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    if name in COMMANDS:
        from ctrlalign import cli

        argv = COMMANDS[name]
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            rc = cli.main(argv)
        if rc:
            raise SystemExit(f"{name}: ctrlalign exited with {rc}\n{stderr.getvalue()}")
        shown = " ".join(a if a.startswith("-") or a.replace(".", "").isdigit() else json.dumps(a)
                         for a in argv[1:])
        text = f"$ ctrlalign {argv[0]} {shown}\n" + stderr.getvalue() + stdout.getvalue()
        data = _parse_align(stdout.getvalue())
    else:
        module = importlib.import_module(f"examples.{name}")
        with contextlib.redirect_stdout(stdout):
            returned = module.main(IMG)
        text = stdout.getvalue()
        data = {"result": _plain(returned)}
    data["seconds"] = time.perf_counter() - t0
    text = text.replace(str(ROOT) + os.sep, "")
    (SNIPPETS / f"{name}_output.txt").write_text(text.rstrip("\n") + "\n")
    (SNIPPETS / f"{name}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"{name}: {data['seconds']:.1f} s -> docs/snippets/{name}_output.txt, {name}.json",
          file=sys.stderr)


def main(argv=None) -> int:
    examples = sorted(p.stem for p in (ROOT / "examples").glob("*.py"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"any of {sorted(COMMANDS) + examples}")
    ap.add_argument("--list", action="store_true", help="list the names and exit")
    args = ap.parse_args(argv)
    if args.list or not args.names:
        print("\n".join(sorted(COMMANDS) + examples))
        return 0
    unknown = [n for n in args.names if n not in COMMANDS and n not in examples]
    if unknown:
        ap.error(f"unknown: {unknown}")
    # what a reader needs, not progress bars or library deprecation notices
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    sys.path.insert(0, str(ROOT))
    for name in args.names:
        run_one(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
