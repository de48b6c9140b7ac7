"""mkdocs hook: publish the test files as documentation pages.

Every ``tests/test_*.py`` becomes a page ``source/tests/<name>.md`` with one section per top-level
function or class (anchor = the exact name, e.g. ``#TestContract``) holding its source.
The Concepts page links each theorem to its test through these anchors, and
``mkdocs build --strict`` (with ``validation.anchors: warn``) fails when a linked test is
renamed or removed. The pages are generated at build time, so they never go stale.
"""

from __future__ import annotations

import ast
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


def on_page_markdown(markdown, page, config, files):
    def include(m):
        return _section(ROOT / m.group("file"), m.group("heading"))

    def include_file(m):
        path = ROOT / m.group("file")
        if not path.is_file():
            raise PluginError(f"include-file: {path} not found")
        return path.read_text()

    markdown = WHOLE.sub(include_file, markdown)
    markdown = SECTION.sub(include, markdown)
    return _docs_relative(markdown, page.file.src_uri)
