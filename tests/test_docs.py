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
    "ctrlalign.dynamics.static_engine",
    "ctrlalign.rewards",
    "ctrlalign.rewards.toy",
    "ctrlalign.cost",
    "ctrlalign.align",
    "ctrlalign.config",
    "ctrlalign.runner",
    "ctrlalign.cli",
    "ctrlalign.data",
    "ctrlalign.models",
    "ctrlalign.random",
    "ctrlalign.bench",
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
