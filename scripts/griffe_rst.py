"""Griffe extension: render the reStructuredText bits of ctrlalign's docstrings as Markdown.

The docstrings are Google style with a few reST constructs; before mkdocstrings renders them,

* ``.. math::`` blocks become ``$$ ... $$`` (MathJax through pymdownx.arithmatex),
* ``:math:`x``` becomes ``$x$``,
* ``.. code-block:: python`` blocks become fenced code blocks,
* ``:class:`~a.b.C``` (also ``:func:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``,
  ``:exc:``) becomes ```C``` (or ```a.b.C``` without the ``~``).

Only the rendered text changes; the source docstrings stay as they are.
"""

from __future__ import annotations

import re
import textwrap

from griffe import Extension, Object

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
MATH = re.compile(r":math:`([^`]+)`")
DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. (?P<kind>math|code-block)::[ \t]*(?P<arg>.*)$")


def _role(m: re.Match) -> str:
    tilde, target = m.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = DIRECTIVE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, kind, arg = m.group("indent"), m.group("kind"), m.group("arg").strip()
        body: list[str] = [arg] if kind == "math" and arg else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        content = textwrap.dedent("\n".join(b for b in body)).strip("\n")
        if kind == "math":
            content = "\n".join(line.strip() for line in content.split("\n"))
            out += [f"{indent}$$", *[indent + line for line in content.split("\n")], f"{indent}$$", ""]
        else:
            out += [f"{indent}```{arg}", *[indent + line for line in content.split("\n")], f"{indent}```", ""]
    return "\n".join(out)


def convert(text: str) -> str:
    """The Markdown form of a docstring with reST math, code blocks and roles."""
    text = _blocks(text)
    text = MATH.sub(lambda m: f"${m.group(1).strip()}$", text)
    return ROLE.sub(_role, text)


class RstToMarkdown(Extension):
    """Convert each docstring once, when griffe creates the object."""

    def on_instance(self, *, obj: Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
