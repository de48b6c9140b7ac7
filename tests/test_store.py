"""The one store of runs and benchmarks (``ctrlalign.store``): header, append, resume checks,
corruption reported by file and line, files without a header; and ``CountingReward``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctrlalign._checks import RewardError
from ctrlalign.dynamics.base import Outcomes
from ctrlalign.rewards import CountingReward
from ctrlalign.store import (
    HEADER_KEY,
    ConfigChangedError,
    CorruptResultsError,
    OutputError,
    OutputLockedError,
    Store,
    config_diff,
    identity_hash,
    output_lock,
    read_results,
)

IDENTITY = {"model": {"name": "m", "max_new_tokens": 8}, "controller": {"name": "aisp", "sigma": 0.5}}


def _started(tmp_path: Path, records=()) -> Store:
    store = Store(tmp_path / "out.jsonl", "run")
    store.start(store.read(), store.header(IDENTITY, {"whole": "config"}))
    store.append(list(records))
    return store


def test_header_then_appended_records(tmp_path):
    store = _started(tmp_path, [{"id": "p0", "x": 1}])
    before = store.path.read_bytes()
    store.append([{"id": "p1", "x": 2}])
    assert store.path.read_bytes().startswith(before)  # appended, never rewritten
    lines = [json.loads(s) for s in store.path.read_text().splitlines()]
    assert lines[0][HEADER_KEY] == 1 and lines[0]["kind"] == "run" and lines[0]["identity"] == IDENTITY
    assert lines[0]["hash"] == identity_hash(IDENTITY) == identity_hash(json.loads(json.dumps(IDENTITY)))
    assert [r["id"] for r in read_results(store.path)] == ["p0", "p1"]
    contents = store.read()
    assert contents.header["config"] == {"whole": "config"} and len(contents.records) == 2


def test_changed_identity_is_refused_naming_the_fields(tmp_path):
    store = _started(tmp_path, [{"id": "p0"}])
    other = json.loads(json.dumps(IDENTITY))
    other["controller"]["sigma"] = 0.7
    other["model"]["max_new_tokens"] = 9
    with pytest.raises(ConfigChangedError) as exc:
        store.check_identity(store.read(), other)
    msg = str(exc.value)
    assert str(store.path) in msg and "controller.sigma, model.max_new_tokens" in msg
    assert "--overwrite" in msg and "--output" in msg
    store.check_identity(store.read(), json.loads(json.dumps(IDENTITY)))  # the same: accepted


def test_header_without_records_never_blocks_another_config(tmp_path):
    store = _started(tmp_path)
    store.check_identity(store.read(), {"something": "else"})
    store.start(store.read(), store.header({"something": "else"}, {}))
    assert store.read().header["identity"] == {"something": "else"}


def test_config_diff_names_dotted_paths():
    assert config_diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ["a.c", "d"]
    assert config_diff({"a": [1]}, {"a": [1]}) == []


def test_corrupt_middle_line_is_named_by_file_and_line(tmp_path):
    store = _started(tmp_path, [{"id": "p0"}, {"id": "p1"}])
    lines = store.path.read_text().splitlines(keepends=True)
    store.path.write_text(lines[0] + lines[1] + "{oops\n" + lines[2])
    with pytest.raises(CorruptResultsError, match=rf"{store.path}:3: corrupt line"):
        store.read()
    store.path.write_text(lines[0] + '["no id"]\n')
    with pytest.raises(CorruptResultsError, match=rf"{store.path}:2: not a result record"):
        read_results(store.path)


def test_partial_last_line_is_dropped_then_truncated_on_start(tmp_path):
    store = _started(tmp_path, [{"id": "p0"}])
    whole = store.path.read_text()
    store.path.write_text(whole + '{"id": "p1", "hal')
    contents = store.read()
    assert [r["id"] for r in contents.records] == ["p0"]
    assert store.path.read_text().endswith('"hal')  # reading changes nothing
    store.start(contents, store.header(IDENTITY, {}))
    assert store.path.read_text() == whole


def test_another_kind_is_refused(tmp_path):
    store = _started(tmp_path, [{"id": "p0"}])
    with pytest.raises(CorruptResultsError, match="holds run records, not bench records"):
        Store(store.path, "bench").read()


def test_file_without_header_is_read_and_rewritten_once_with_one(tmp_path):
    """Results written before the header existed: records only, identity in ``.meta.json``."""
    out = tmp_path / "old.jsonl"
    out.write_text('{"id": "a"}\n{"id": "b"}\n')
    meta = tmp_path / "old.jsonl.meta.json"
    meta.write_text(json.dumps({"hash": "x", "identity": IDENTITY, "config": {}}))
    store = Store(out, "run")
    contents = store.read()
    assert contents.header["identity"] == IDENTITY and [r["id"] for r in contents.records] == ["a", "b"]
    with pytest.raises(ConfigChangedError, match="changed: model.name"):
        store.check_identity(contents, {**IDENTITY, "model": {"name": "other", "max_new_tokens": 8}})
    store.start(contents, store.header(IDENTITY, {}))
    assert json.loads(out.read_text().splitlines()[0])[HEADER_KEY] == 1 and not meta.exists()
    assert [r["id"] for r in read_results(out)] == ["a", "b"]
    meta.unlink(missing_ok=True)
    out.write_text('{"id": "a"}\n')
    with pytest.raises(ConfigChangedError, match="without a recorded configuration"):
        store.check_identity(store.read(), IDENTITY)


def test_write_errors_name_the_file_and_what_is_kept(tmp_path, monkeypatch):
    import errno
    import os

    from ctrlalign import store as store_module

    store = _started(tmp_path, [{"id": "p0"}])

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module.os, "fsync", full)
    with pytest.raises(OutputError, match=rf"cannot write {store.path}: the disk is full; 1 kept"):
        store.append([{"id": "p1"}], saved=lambda: "; 1 kept")


def test_lock_refuses_a_second_writer(tmp_path):
    out = tmp_path / "x.jsonl"
    with output_lock(out), pytest.raises(OutputLockedError, match=r"in use by another run \(pid "), output_lock(out):
        pass
    with output_lock(out):  # released
        pass


# --------------------------------------------------------------------------------------------
# CountingReward


class Lengths:
    name = "lengths"

    def __call__(self, prompts, outcomes):
        return torch.ones(outcomes.num_prompts, outcomes.num_samples)


def test_counting_reward_counts_full_and_prefix_calls_apart():
    counting = CountingReward(Lengths())
    assert counting.name == "lengths"
    out = Outcomes(num_prompts=2, num_samples=3, texts=[["a"] * 3, ["b"] * 3])
    assert counting(["x", "y"], out).shape == (2, 3)
    counting(["x"], Outcomes(num_prompts=1, num_samples=2, texts=[["c", "d"]]))
    counting.count(["y"], 5, prefix=True)
    assert counting.calls == {CountingReward.key("x"): 5, CountingReward.key("y"): 3}
    assert counting.prefix_calls == {CountingReward.key("y"): 5}
    counting.reset()
    assert counting.calls == {} and counting.prefix_calls == {}


def test_counting_reward_does_not_count_a_failed_call():
    class Bad:
        name = "bad"

        def __call__(self, prompts, outcomes):
            return torch.full((outcomes.num_prompts, outcomes.num_samples), float("nan"))

    counting = CountingReward(Bad())
    with pytest.raises(RewardError, match="reward 'bad' returned a non-finite value"):
        counting(["x"], Outcomes(num_prompts=1, num_samples=2, texts=[["a", "b"]]))
    assert counting.calls == {}
