"""The decoding contract's sampler: inverse-CDF sampling from pre-drawn uniforms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from ctrlalign._checks import ConfigError
from ctrlalign.dynamics.decoding import SamplingConfig, sample_tokens

logit_rows = st.lists(st.floats(-300, 30, allow_nan=False), min_size=2, max_size=12)


@given(rows=st.lists(logit_rows.filter(lambda r: True), min_size=1, max_size=6),
       u=st.floats(0, 1 - 2**-24), top_k=st.none() | st.integers(1, 12), top_p=st.none() | st.floats(0.01, 1.0))
@settings(max_examples=200, deadline=None)
def test_never_returns_a_token_outside_the_support(rows, u, top_k, top_p):
    """Whatever the uniform (up to torch.rand's largest value, 1 − 2⁻²⁴) the token has
    positive probability after filtering, and lies in the top-k set."""
    V = min(len(r) for r in rows)
    logits = torch.tensor([r[:V] for r in rows], dtype=torch.float32)
    cfg = SamplingConfig(top_k=top_k, top_p=top_p)
    tok = sample_tokens(logits, torch.full((len(rows),), u), cfg)
    assert ((tok >= 0) & (tok < V)).all()
    probs = torch.softmax(logits, -1)
    assert (probs.gather(-1, tok[:, None]) > 0).all()
    if top_k is not None and top_k < V:
        kth = torch.topk(logits, top_k, -1).values[:, -1]
        assert (logits.gather(-1, tok[:, None]).squeeze(-1) >= kth).all()


def test_monotone_in_the_uniform():
    """Inverse-CDF sampling: a larger uniform never gives a smaller token index."""
    logits = torch.randn(1, 20).expand(200, 20)
    u = torch.linspace(0, 1 - 2**-24, 200)
    tok = sample_tokens(logits, u, SamplingConfig())
    assert (tok[1:] >= tok[:-1]).all()


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_frequencies_match_softmax(temperature):
    """Chi-square goodness of fit at a fixed false-alarm rate of 1e-3."""
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5])
    N = 40_000
    tok = sample_tokens(logits.expand(N, -1), torch.rand(N, generator=g), SamplingConfig(temperature=temperature))
    expected = torch.softmax(logits.double() / temperature, -1) * N
    assert chisquare(torch.bincount(tok, minlength=5).numpy(), expected.numpy()).pvalue > 1e-3


def test_greedy_is_argmax():
    logits = torch.randn(50, 30)
    assert torch.equal(sample_tokens(logits, torch.rand(50), SamplingConfig(greedy=True)), logits.argmax(-1))


@pytest.mark.parametrize("kw, name", [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": 0}, "temperature"),
                                      ({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")])
def test_bad_sampling_config(kw, name):
    with pytest.raises(ConfigError, match=name):
        SamplingConfig(**kw)
