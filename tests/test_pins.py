"""Bit-for-bit pins: rollouts and ``align`` runs reproduce the results recorded from main.

``tests/pins/record_pins.py`` recorded ``tests/pins/pins_main.json`` on the code before the
stepwise-dynamics redesign (``align/lm_eager_bi`` was added when the batch-invariant eager engine
became the default; the other groups were unchanged by that); every entry is recomputed here and
compared exactly (floats by their hex form, i.e. bitwise).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "pins"))

import record_pins

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pinned_and_now():
    pinned = json.loads(record_pins.PINS.read_text())
    now = json.loads(json.dumps(record_pins.encode(record_pins.compute_pins())))
    return pinned, now


def _diff(a, b, path=""):
    """The first path at which two encoded records differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            d = _diff(a[k], b[k], f"{path}/{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("group", ["rollout/linear", "rollout/softmax_head", "rollout/lm_eager", "rollout/lm_eager_bi",
                                   "rollout/lm_static", "align/linear", "align/softmax_head", "align/lm_eager",
                                   "align/lm_eager_bi"])
def test_results_are_bitwise_those_of_main(pinned_and_now, group):
    pinned, now = pinned_and_now
    assert _diff(pinned[group], now[group], group) is None


def test_the_comparison_sees_one_changed_bit(pinned_and_now):
    """Power: flipping the last bit of one pinned logprob is reported."""
    pinned, now = pinned_and_now
    rec = json.loads(json.dumps(now["rollout/lm_eager"]))
    lp = rec["shared"]["logprobs"]["data"]
    x = float.fromhex(lp[0])
    lp[0] = math.nextafter(x, 0.0).hex()
    assert _diff(pinned["rollout/lm_eager"], rec) is not None
