"""TakeTurns: D forward passes interleaved module by module, each unchanged.

The batch-invariant eager engine decodes prompt by prompt; on the CPU it runs the prompts'
forward passes taking turns at every weight-holding module, so that each weight matrix is
read from memory once per token for all prompts. Each pass must still make the very calls it
makes alone (tests/test_batch_invariance.py checks the engine's results bit for bit).
"""

from __future__ import annotations

import threading

import pytest
import torch

from ctrlalign.dynamics.engines.turns import TakeTurns, weight_modules


class Logged(torch.nn.Linear):
    """A linear layer that logs (pass, layer) on each call."""

    def __init__(self, index: int, log: list, who: threading.local) -> None:
        super().__init__(4, 4)
        self.index, self.log, self.who = index, log, who

    def forward(self, x):
        self.log.append((getattr(self.who, "j", None), self.index))
        return torch.tanh(super().forward(x))


def stack(num_layers: int = 3):
    log, who = [], threading.local()
    torch.manual_seed(0)
    layers = torch.nn.Sequential(*[Logged(i, log, who) for i in range(num_layers)])
    return layers, log, who


def calls(layers, who, xs, depth=None):
    def make(j, x):
        def call():
            who.j = j
            return layers[: depth[j] if depth else len(layers)](x)
        return call
    return [make(j, x) for j, x in enumerate(xs)]


def test_passes_take_turns_module_by_module_and_match_their_lone_results():
    layers, log, who = stack()
    xs = [torch.randn(2, 4, generator=torch.Generator().manual_seed(j)) for j in range(3)]
    alone = [layers(x) for x in xs]
    log.clear()
    out = TakeTurns(weight_modules(layers)).run(calls(layers, who, xs))
    assert log == [(j, i) for i in range(3) for j in range(3)]  # layer 0 of every pass, then layer 1, ...
    assert all(torch.equal(a, b) for a, b in zip(alone, out))
    assert all(not m._forward_pre_hooks for m in layers)  # the hooks are removed


def test_passes_of_different_lengths_and_a_single_pass():
    layers, log, who = stack()
    xs = [torch.randn(2, 4) for _ in range(3)]
    out = TakeTurns(weight_modules(layers)).run(calls(layers, who, xs, depth=[3, 1, 2]))
    assert log == [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2)]
    assert torch.equal(out[1], layers[:1](xs[1]))
    expected = layers(xs[0])
    log.clear()
    assert torch.equal(TakeTurns(weight_modules(layers)).run(calls(layers, who, xs[:1]))[0], expected)
    assert log == [(0, 0), (0, 1), (0, 2)]  # one pass runs directly


def test_an_error_in_one_pass_is_raised_after_the_others_end():
    layers, log, who = stack()
    ok = calls(layers, who, [torch.randn(2, 4), torch.randn(2, 4)])

    def bad():
        who.j = 9
        layers[0](torch.randn(2, 4))
        raise ValueError("pass 1 failed")

    with pytest.raises(ValueError, match="pass 1 failed"):
        TakeTurns(weight_modules(layers)).run([ok[0], bad, ok[1]])
    assert [j for j, _ in log].count(0) == 3 and [j for j, _ in log].count(1) == 3
    assert all(not m._forward_pre_hooks for m in layers)


def test_passes_run_in_the_callers_mode_and_thread_count():
    layers, _, who = stack()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def probe():
            who.j = 0
            layers(torch.randn(1, 4))
            return torch.is_inference_mode_enabled(), torch.is_grad_enabled(), torch.get_num_threads()

        with torch.inference_mode():
            seen = TakeTurns(weight_modules(layers)).run([probe, probe])
        assert seen == [(True, False, 2)] * 2
        with torch.no_grad():
            assert TakeTurns(weight_modules(layers)).run([probe, probe]) == [(False, False, 2)] * 2
    finally:
        torch.set_num_threads(before)


def test_weight_modules_are_those_holding_a_matrix():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 4))
    assert weight_modules(model) == [model[0], model[2]]
