"""mkdocs hook: publish the test files as documentation pages.

Every ``tests/test_*.py`` becomes a page ``source/tests/<name>.md`` with one section per top-level
function or class (anchor = the exact name, e.g. ``#TestContract``) holding its source.
The Concepts page links each theorem to its test through these anchors, and
``mkdocs build --strict`` (with ``validation.anchors: warn``) fails when a linked test is
renamed or removed. The pages are generated at build time, so they never go stale.
"""

from __future__ import annotations

import ast
from pathlib import Path

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
    out += [f"Source of `{rel}` in the repository, one section per test or helper. Run a test with "
            f"`python -m pytest {rel}::NAME`.", ""]
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue  # every top-level test, helper and class gets a section
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        body = "\n".join(lines[start - 1:node.end_lineno])
        out += [f"## `{node.name}` {{#{node.name}}}", "",
                f"`{rel}`, line {start}", "",
                f'```python linenums="{start}"', body, "```", ""]
    return "\n".join(out)


def on_files(files, config):
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        files.append(File.generated(config, f"source/tests/{path.stem}.md", content=_page(path),
                                    inclusion=InclusionLevel.NOT_IN_NAV))
    return files
