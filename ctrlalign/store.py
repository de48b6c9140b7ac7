"""One store for runs and benchmarks: records appended to a JSON Lines file behind a header.

Both :func:`ctrlalign.runner.run` (one record per prompt) and :func:`ctrlalign.bench.run_bench`
(one record per finished (controller, seed, prompt batch) run) keep their results here, under
the same rules.

**File format** (UTF-8 JSON Lines: one JSON object per line, each ending in a newline)::

    {"ctrlalign_store": 1, "kind": "run", "hash": "3f2a…", "identity": {…}, "config": {…}, "created": "…"}
    {"id": "p0", …}
    {"id": "p1", …}

* Line 1 is the **header**: the store format (``ctrlalign_store``), the ``kind`` of records
  (``"run"``, ``"candidates"``, ``"bench"``), the **identity** (the configuration fields that
  determine the results, as a nested dict), its ``hash`` (:func:`identity_hash`), the whole
  ``config`` for the record, and when the file was started. The header is written when the file
  holds no record yet (so a failed start never blocks a corrected config) and kept as long as it
  holds records.
* Every other line is a **record**: a JSON object with an ``"id"`` (a prompt id for runs, a run
  key for benchmarks). Records are appended and ``fsync``'ed as each unit of work finishes, so a
  kill loses at most the unit in flight.

**Rules** (the same for every kind):

* **One writer per file.** :func:`output_lock` holds an exclusive ``fcntl.flock`` on
  ``<file>.lock`` (holder's PID, host and start time inside); a second writer is refused at
  once with :class:`OutputLockedError` naming the holder. The lock dies with its process.
* **Resume, never mix.** :meth:`Store.check_identity` refuses records of another configuration
  with :class:`ConfigChangedError`, naming the changed fields (:func:`config_diff`) and the
  way out (``--overwrite``, or another output).
* **Corruption is reported, not repaired.** A partial *last* line (a kill mid-write) is dropped
  (and truncated away when writing resumes); any other unreadable line raises
  :class:`CorruptResultsError` naming the file and line number, and nothing is changed.
* **Errors name the file.** An ``OSError`` while writing (disk full, read-only, permission)
  becomes a one-line :class:`OutputError` naming the file and the cause.

Files without a header line (results written before the header existed) are read as records
only; their identity, if any, came from ``<file>.meta.json``, which :meth:`Store.read` still
reads. The first write that resumes such a file rewrites it with the header.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ._checks import ConfigError

__all__ = [
    "FORMAT",
    "HEADER_KEY",
    "ConfigChangedError",
    "CorruptResultsError",
    "OutputError",
    "OutputLockedError",
    "PromptChangedError",
    "RunError",
    "RunInterrupted",
    "Store",
    "StoreContents",
    "check_output_path",
    "config_diff",
    "identity_hash",
    "io_error",
    "is_store",
    "jsonable",
    "output_lock",
    "read_results",
    "remove_files",
    "write_atomic",
]

#: the key that marks a header line; its value is the format version
HEADER_KEY = "ctrlalign_store"
#: the format version this module writes
FORMAT = 1


# --------------------------------------------------------------------------------------------
# errors


class RunError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


class ConfigChangedError(RunError):
    """The output already holds results of a different configuration."""


class OutputLockedError(RunError):
    """Another run holds the output's lock."""


class PromptChangedError(RunError):
    """A prompt already answered in the output has a different text now."""


class CorruptResultsError(RunError):
    """A line of a results file (not a partial last line) cannot be read."""


class OutputError(RunError):
    """The output cannot be written (read-only, disk full, not a directory, ...)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``str()`` says what is saved and how to resume."""


_REASONS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied", errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.EISDIR: "it is a directory"}


def io_error(path: Path, exc: OSError, saved: str = "") -> OutputError:
    """An ``OSError`` on ``path`` as a one-line :class:`OutputError` ("cannot write PATH: REASON"
    followed by ``saved``, e.g. what is kept and how to resume)."""
    reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    return OutputError(f"cannot write {path}: {reason}{saved}")


# --------------------------------------------------------------------------------------------
# identity


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted paths at which two nested dicts differ (``[]``: equal), e.g. ``["model.name"]``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def identity_hash(identity: dict[str, Any]) -> str:
    """A short SHA-256 (16 hex digits) of an identity dict, independent of key order."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def jsonable(x: Any) -> Any:
    """``json.dumps``'s ``default`` for records: tensors and arrays become lists, anything else
    its ``str``."""
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _line(rec: dict[str, Any]) -> str:
    return json.dumps(rec, ensure_ascii=False, default=jsonable) + "\n"


# --------------------------------------------------------------------------------------------
# paths and files


def check_output_path(out: Path, option: str = "run.output") -> None:
    """Refuse an output that is a directory or lies under a regular file.

    Raises:
        ConfigError: naming ``option``, the output and the offending path.
    """
    if out.is_dir():
        raise ConfigError(f"{option} {str(out)!r} is a directory; name a file, e.g. {str(out / 'results.jsonl')!r}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {str(out)!r}: {str(parent)!r} is a file, not a folder")
            break


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` through a temporary file (readers see the old or the new
    file, never a part); an ``OSError`` becomes an :class:`OutputError`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise io_error(path, exc) from None


def remove_files(paths: Iterable[Path]) -> None:
    """Delete these files (missing ones are fine); an ``OSError`` becomes an :class:`OutputError`."""
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            raise io_error(p, exc) from None


@contextmanager
def output_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking ``flock`` on ``<target>.lock`` (holder info inside).

    Raises:
        OutputLockedError: another process holds it (named by the info it wrote).
        OutputError: the lock file cannot be created (read-only, permission, ...).
    """
    lock = target.with_name(target.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fh: IO[str] = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    except OSError as exc:
        raise io_error(lock, exc) from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise OutputLockedError(f"{target} is in use by another run ({holder}); wait for it to finish, or "
                                    "choose another output") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the flock


# --------------------------------------------------------------------------------------------
# reading


def _is_header(obj: Any) -> bool:
    return isinstance(obj, dict) and HEADER_KEY in obj


@dataclass(frozen=True)
class StoreContents:
    """What a store file holds.

    Attributes:
        header: the header line (None: a file without one, or no file).
        records: every complete record line, in file order.
        good_bytes: length of the complete lines (a partial last line starts there).
        size: the file's size in bytes (0: no file).
        headed: whether the file's first line is a header (False: no file, or one written
            before headers existed, whose ``header`` came from its ``.meta.json``).
    """

    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    good_bytes: int = 0
    size: int = 0
    headed: bool = False


def _parse(path: Path, raw: bytes) -> StoreContents:
    """Header and records of a store file's bytes (module docstring)."""
    header = None
    records: list[dict[str, Any]] = []
    good = 0
    advice = "nothing was changed. Fix or delete that line (its work is then done again), or start over with --overwrite"
    for no, line in enumerate(raw.splitlines(keepends=True), 1):
        if not line.endswith(b"\n"):
            break  # partial last line
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptResultsError(f"{path}:{no}: corrupt line ({getattr(exc, 'msg', exc)}); {advice}") from None
        if no == 1 and _is_header(obj):
            if obj[HEADER_KEY] != FORMAT:
                raise CorruptResultsError(f"{path}:1: store format {obj[HEADER_KEY]!r}; this version of ctrlalign "
                                          f"reads format {FORMAT}")
            header = obj
        elif not isinstance(obj, dict) or "id" not in obj:
            raise CorruptResultsError(f"{path}:{no}: not a result record (a JSON object with an 'id'); {advice}")
        else:
            records.append(obj)
        good += len(line)
    return StoreContents(header, records, good, len(raw), header is not None)


def read_results(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a store file (header left out); ``[]`` when there is no file.

    A partial last line (no final newline: a kill mid-write) is dropped, and truncated away if
    ``repair``.

    Raises:
        CorruptResultsError: a line other than the last is not a JSON object with an ``id``;
            the message names the file and line number, and the file is left as it was.
    """
    p = Path(path)
    if not p.exists():
        return []
    contents = _parse(p, p.read_bytes())
    if repair:
        Store(p, kind="").repair(contents)
    return contents.records


# --------------------------------------------------------------------------------------------
# the store


class Store:
    """One results file of one ``kind`` (module docstring): read, check, start, append, rewrite.

    Args:
        path: the file.
        kind: what its records are (``"run"``, ``"candidates"``, ``"bench"``); a file whose
            header names another kind is refused.
        option: how the user names this file, for advice in errors (``"run.output"``, ``"--output"``).
    """

    def __init__(self, path: str | Path, kind: str, option: str = "--output"):
        self.path = Path(path)
        self.kind = kind
        self.option = option

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, kind={self.kind!r})"

    # reading --------------------------------------------------------------------------------

    def read(self) -> StoreContents:
        """The header and records (a header from ``<file>.meta.json`` for a file without one).

        Raises:
            CorruptResultsError: a corrupt line (named by file and number), or a header of
                another kind.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return StoreContents()
        except OSError as exc:
            raise CorruptResultsError(f"{self.path} cannot be read ({exc.strerror or exc})") from None
        contents = _parse(self.path, raw)
        header = contents.header
        if header is None:
            header = self._legacy_header()
            contents = StoreContents(header, contents.records, contents.good_bytes, contents.size, False)
        if header is not None and self.kind and header.get("kind", self.kind) != self.kind:
            raise CorruptResultsError(f"{self.path} holds {header.get('kind')} records, not {self.kind} records; "
                                      f"choose another {self.option}")
        return contents

    def _legacy_path(self) -> Path:
        return self.path.with_name(self.path.name + ".meta.json")

    def _legacy_header(self) -> dict[str, Any] | None:
        """The identity recorded beside a file written before headers existed."""
        meta = self._legacy_path()
        if not meta.exists():
            return None
        try:
            old = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CorruptResultsError(f"{meta} cannot be read ({exc}); it records the configuration of the results "
                                      f"in {self.path}. Restore it, or start over with --overwrite") from None
        return {HEADER_KEY: FORMAT, "kind": self.kind, "hash": old.get("hash"), "identity": old.get("identity", {}),
                "config": old.get("config", {})}

    def check_identity(self, contents: StoreContents, identity: dict[str, Any]) -> None:
        """Refuse to add records of ``identity`` to records of another configuration.

        Args:
            contents: what :meth:`read` returned.
            identity: the identity of the run that would add records.

        Raises:
            ConfigChangedError: the file holds records and :func:`config_diff` of the header's
                identity and ``identity`` is not empty (or no identity was recorded); the message
                names the changed fields and says to use ``--overwrite`` or another output.
        """
        if not contents.records:
            return
        old = (contents.header or {}).get("identity")
        if old is None:
            raise ConfigChangedError(f"{self.path} holds results without a recorded configuration; use "
                                     f"--overwrite to discard them, or choose another {self.option}")
        changed = config_diff(old, identity)
        if changed:
            raise ConfigChangedError(self.refusal(changed))

    def refusal(self, changed: list[str]) -> str:
        """The message refusing a changed configuration (fields named, way out given)."""
        return (f"{self.path} holds results of a different configuration (changed: {', '.join(changed)}); "
                f"use --overwrite to discard them, or choose another {self.option}")

    # writing --------------------------------------------------------------------------------

    def header(self, identity: dict[str, Any], config: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """A header line for this store (``extra``: more fields, e.g. run metadata)."""
        return {HEADER_KEY: FORMAT, "kind": self.kind, "hash": identity_hash(identity), "identity": identity,
                "config": config, "created": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}

    def repair(self, contents: StoreContents) -> None:
        """Truncate a partial last line away (nothing else is ever changed)."""
        if contents.good_bytes < contents.size:
            try:
                with open(self.path, "r+b") as fh:
                    fh.truncate(contents.good_bytes)
            except OSError as exc:
                raise io_error(self.path, exc) from None

    def start(self, contents: StoreContents, header: dict[str, Any]) -> None:
        """Make the file ready for appending: with no records, it becomes just ``header``; with
        records, a partial last line is truncated, and a file without a header line is
        rewritten once with ``header`` in front (its ``.meta.json`` removed)."""
        if not contents.records:
            write_atomic(self.path, _line(header))
        elif not contents.headed:
            self.rewrite(header, contents.records)
            remove_files([self._legacy_path()])
        else:
            self.repair(contents)

    def append(self, records: Iterable[dict[str, Any]], saved: Callable[[], str] = lambda: "") -> None:
        """Append records and ``fsync``.

        Raises:
            OutputError: naming the file, the cause and ``saved()`` (what is kept, how to resume).
        """
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.writelines(_line(rec) for rec in records)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise io_error(self.path, exc, saved()) from None

    def rewrite(self, header: dict[str, Any] | None, records: Iterable[dict[str, Any]]) -> None:
        """Replace the file atomically with ``header`` (None: none) and ``records``."""
        lines = [] if header is None else [_line(header)]
        write_atomic(self.path, "".join([*lines, *(_line(r) for r in records)]))


def is_store(path: str | Path) -> bool:
    """Whether the file ``path`` begins with a store header line."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except OSError:
        return False
    try:
        return _is_header(json.loads(first))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
