"""mkdocs hook: publish the test files as documentation pages.

Every ``tests/test_*.py`` becomes a page ``source/tests/<name>.md`` with one section per top-level
function or class (anchor = the exact name, e.g. ``#TestContract``) holding its source.
The Concepts page links each theorem to its test through these anchors, and
``mkdocs build --strict`` (with ``validation.anchors: warn``) fails when a linked test is
renamed or removed. The pages are generated at build time, so they never go stale.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, InclusionLevel

ROOT = Path(__file__).resolve().parent.parent


def _page(path: Path) -> str:
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    rel = path.relative_to(ROOT).as_posix()
    out = [f"# `{rel}`", ""]
    doc = ast.get_docstring(tree)
    if doc:
        out += [doc, ""]
    out += [(f"Source of `{rel}` in the repository, one section per test or helper. Run a test "
             f"with `python -m pytest {rel}::NAME`."), ""]
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue  # every top-level test, helper and class gets a section
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        body = "\n".join(lines[start - 1:node.end_lineno])
        out += [f"## `{node.name}` {{#{node.name}}}", "",
                f"`{rel}`, line {start}", "",
                f'```python linenums="{start}"', body, "```", ""]
    return "\n".join(out)


MATHJAX = ROOT / "docs" / "vendor" / "mathjax" / "tex-mml-chtml.js"


def on_config(config):
    # The site's math comes from its own copy of MathJax (mkdocs.yml extra_javascript), never
    # a CDN; without it every formula would show as raw TeX, so the build stops here.
    if not MATHJAX.is_file():
        raise PluginError(f"{MATHJAX.relative_to(ROOT)} is missing: run `python "
                          "scripts/vendor_mathjax.py` (bash scripts/docs.sh does) before mkdocs")
    for js in config.extra_javascript:
        if str(js).startswith(("http://", "https://", "//")):
            raise PluginError(f"extra_javascript {js}: the site must not load scripts from the "
                              "network (it is read offline)")
    return config


def on_files(files, config):
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        files.append(File.generated(config, f"source/tests/{path.stem}.md", content=_page(path),
                                    inclusion=InclusionLevel.NOT_IN_NAV))
    files.append(File.generated(config, "cli.md", content=_cli_page()))
    return files


# --- BENCHMARKS.md inside the site --------------------------------------------------------
# BENCHMARKS.md lives at the repository root and links its figures as `docs/img/x.png`. Pages
# include it whole (`<!-- include-file "BENCHMARKS.md" -->`) or one section of it
# (`<!-- include-section "BENCHMARKS.md" "Heading" -->`) at build time, with those links
# rewritten relative to the docs folder, so they resolve and --strict checks them. A missing
# file or heading fails the build.

SECTION = re.compile(r'^<!-- include-section "(?P<file>[^"]+)" "(?P<heading>[^"]+)" -->$', re.MULTILINE)
WHOLE = re.compile(r'^<!-- include-file "(?P<file>[^"]+)" -->$', re.MULTILINE)


def _docs_relative(text: str, page_src_uri: str) -> str:
    up = "../" * page_src_uri.count("/")
    return re.sub(r"\]\(docs/", f"]({up}", text)


def _section(path: Path, heading: str) -> str:
    lines = path.read_text().split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"^(#+)\s+(.*)$", line)
        if m and m.group(2).strip() == heading:
            level = len(m.group(1))
            end = len(lines)
            for j in range(i + 1, len(lines)):
                n = re.match(r"^(#+)\s", lines[j])
                if n and len(n.group(1)) <= level:
                    end = j
                    break
            return "\n".join(lines[i + 1:end]).strip("\n")
    raise PluginError(f'include-section: no heading "{heading}" in {path.name}')


def _tables(text: str) -> list[list[str]]:
    """Markdown tables of ``text``: each a list of its lines (header, rule, rows)."""
    out, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cur.append(line.rstrip())
        elif cur:
            out.append(cur)
            cur = []
    return out


def _check_copied_tables(text: str, name: str) -> None:
    """A table copied from a benchmark's own markdown (``benchmarks/results/*.md``, written by
    ``ctrlalign bench``) must still match it: a table with the header of a results table may only
    hold rows of that results file. Rerunning a benchmark without updating the copy fails the
    build instead of leaving stale numbers on the site."""
    results = {p: p.read_text() for p in sorted((ROOT / "benchmarks" / "results").glob("*.md"))}
    headers = {}
    for p, body in results.items():
        for table in _tables(body):
            headers.setdefault(table[0], []).append((p, set(table[2:])))
    for table in _tables(text):
        sources = headers.get(table[0])
        if not sources:
            continue  # not a copy of a benchmark table
        rows = table[2:]
        if not any(all(r in rows_src for r in rows) for _, rows_src in sources):
            p, rows_src = max(sources, key=lambda s: sum(r in s[1] for r in rows))
            stale = [r for r in rows if r not in rows_src][:2]
            raise PluginError(f"{name}: a table copied from {p.relative_to(ROOT)} no longer matches "
                              f"it (rerun `ctrlalign bench ... --report-only` and copy it again): {stale}")


def on_page_markdown(markdown, page, config, files):
    def include(m):
        text = _section(ROOT / m.group("file"), m.group("heading"))
        _check_copied_tables(text, m.group("file"))
        return text

    def include_file(m):
        path = ROOT / m.group("file")
        if not path.is_file():
            raise PluginError(f"include-file: {path} not found")
        text = path.read_text()
        _check_copied_tables(text, m.group("file"))
        return text

    markdown = WHOLE.sub(include_file, markdown)
    markdown = SECTION.sub(include, markdown)
    if not page.file.src_uri.startswith("source/"):  # test sources are shown as written
        markdown = RUN_VALUE.sub(_run_value, markdown)
    return _docs_relative(markdown, page.file.src_uri)


# --- the command-line reference, generated from the parser ---------------------------------
# `cli.md` is written at build time from `ctrlalign.cli.build_parser()`: every command, sub-command
# and flag, with its default and choices, so the page cannot fall behind the code.

def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return f"`{str(action.default).lower()}`"
    if action.default is None or action.default == argparse.SUPPRESS:
        return "—"
    return f"`{action.default!r}`" if isinstance(action.default, str) else f"`{action.default}`"


def _cli_section(parser: argparse.ArgumentParser, level: int) -> list[str]:
    out = []
    if parser.description and level > 2:
        out += [parser.description, ""]
    out += ["```text", parser.format_usage().strip(), "```", ""]
    rows, subs = [], []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            subs += [(name, p, helps.get(name)) for name, p in action.choices.items()]
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        name = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}` (positional)"
        meta = ""
        if action.choices is not None:
            meta = "one of " + ", ".join(f"`{c}`" for c in action.choices)
        elif action.type is not None:
            meta = getattr(action.type, "__name__", str(action.type))
        if isinstance(action, argparse._AppendAction):
            meta = (meta + ", " if meta else "") + "repeatable"
        helptext = action.help or ""
        if isinstance(action, argparse._VersionAction):
            helptext = helptext or "print the version and exit"
        rows.append(f"| {name} | {_cell(meta)} | {_default(action)} | {_cell(helptext)} |")
    if rows:
        out += ["| argument | type | default | meaning |", "| --- | --- | --- | --- |", *rows, ""]
    for name, sub, helptext in subs:
        out += [f"{'#' * (level + 1)} `{sub.prog}` {{#{sub.prog.replace(' ', '-')}}}", ""]
        if helptext:
            out += [helptext[0].upper() + helptext[1:] + ".", ""]
        out += _cli_section(sub, level + 1)
    return out


def _cli_page() -> str:
    from ctrlalign import cli

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"  # usage lines wrap the same on every machine, inside the page
    try:
        parser = cli.build_parser()
        body = _cli_section(parser, 2)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    doc = (cli.__doc__ or "").split("\n\n", 1)
    out = ["# Command-line reference", "",
           ("Generated at build time from the parser in `ctrlalign/cli.py`: every command and "
            "flag, with its default. `ctrlalign COMMAND --help` prints the same from the installed "
            "version. A default of — means the value comes from the config file or from the "
            "component's own default."), ""]
    if len(doc) > 1:
        out += [doc[1].strip().replace("``", "`"), ""]
    out += ["## `ctrlalign`", "", *body, *_controller_tables()]
    return "\n".join(out)


def _controller_tables() -> list[str]:
    """One table of declared options per registered controller (``ctrlalign.declare.describe``),
    open-loop and closed-loop alike: the fields of a config's ``controller`` section and the
    flags of ``ctrlalign align``."""
    from ctrlalign.controllers import CONTROLLERS
    from ctrlalign.declare import describe

    out = ["## Controllers and their options", "",
           ("Every controller registered in `ctrlalign.controllers.CONTROLLERS`, with the options it declares: "
            "the keys of a config's `controller:` section beside `name` (e.g. `controller: {name: smc, "
            "num_particles: 32, block_size: 8}`) and the flags of `ctrlalign align` (`--num-particles 32`). "
            "Open-loop controllers weigh whole responses and run in the `space:` section's control space; "
            "closed-loop ones (`smc`, `speculative-rejection`, `receding-horizon`) act on partial responses, "
            "need a reward that scores prefixes and sampled decoding, and take no `space:` section, except "
            "`receding-horizon`, whose windows run in it. `receding-horizon`'s `inner` is a nested controller "
            "section, `inner: {name: aisp, num_samples: 8, num_iterations: 2}` (command line: `--inner aisp` and "
            "the inner controller's flags); `speculative-rejection`'s `schedule` is a list of pairs "
            "`[[8, 16], [16, 8]]` (command line: `--schedule 8:16,16:8`)."), ""]
    for name, cls in CONTROLLERS.items():
        kind = "open loop" if cls.anytime else "closed loop"
        first = (cls.__doc__ or "").strip().splitlines()[0]
        out += [f"### `{name}`", "", f"`{cls.__module__}.{cls.__qualname__}` ({kind}): {first}", "",
                describe(cls.spec()), ""]
    return out


# --- numbers about runs come from the files the runs wrote ---------------------------------
# Prose quotes a run's numbers as <<run:NAME#key/key/0|.2f>>: the value at that path of
# docs/snippets/NAME.json (segments: dict keys, list indices, slices `1:`, a key of every
# record of a list, and min/max/mean/sum/len over a list) (written by `python scripts/docs_outputs.py NAME` beside the
# NAME_output.txt the page shows), formatted with the format spec after `|`. NAME may also be a
# results file a benchmark wrote, by its path from the repository root
# (<<run:benchmarks/results/x.json#...>>). A missing file or
# key fails the build, so a page cannot quote a number its run did not produce.

RUN_VALUE = re.compile(r"<<run:(?P<file>[\w./-]+)#(?P<path>[^|>]+)(?:\|(?P<fmt>[^>]*))?>>")


def _run_value(m) -> str:
    name = m.group("file")
    # NAME: docs/snippets/NAME.json; a path with a folder (a benchmark's results JSON): from the root
    path = ROOT / name if "/" in name else ROOT / "docs" / "snippets" / f"{name}.json"
    if not path.is_file():
        raise PluginError(f"{m.group(0)}: {path.relative_to(ROOT)} not found "
                          f"(python scripts/docs_outputs.py {m.group('file')})")
    value = json.loads(path.read_text())
    for key in m.group("path").split("/"):
        try:
            value = _step(value, key)
        except (KeyError, IndexError, ValueError, TypeError):
            raise PluginError(f"{m.group(0)}: no {key!r} in {path.relative_to(ROOT)}") from None
    return format(value, m.group("fmt") or "")


#: reductions a path may end with, over a list of numbers
REDUCE = {"min": min, "max": max, "len": len, "sum": sum,
          "mean": lambda xs: sum(xs) / len(xs)}


def _step(value, key: str):
    """One path segment: a dict key, a list index (``-1``), a slice (``1:``), a reduction, or
    a key of every record of a list."""
    if isinstance(value, list):
        if key in REDUCE:
            return REDUCE[key](value)
        if ":" in key:
            lo, hi = (int(x) if x else None for x in key.split(":", 1))
            return value[lo:hi]
        if key.lstrip("-").isdigit():
            return value[int(key)]
        return [item[key] for item in value]  # a field of every record: trace/ess -> [ess, ...]
    return value[key]
