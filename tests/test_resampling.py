"""Resampling schemes: unbiased offspring counts, each scheme's own guarantee, per-prompt streams."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrlalign._checks import ConfigError
from ctrlalign.resampling import RESAMPLERS, inverse_cdf, offspring_counts, resample

SCHEMES = sorted(RESAMPLERS)

weights_st = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=7).filter(lambda w: sum(w) > 1e-3)


def _replicates(w: list[float], scheme, m: int, reps: int, seed: int) -> torch.Tensor:
    """Offspring counts (reps, n) of ``reps`` independent resamplings of the same weights."""
    ell = torch.log(torch.tensor(w, dtype=torch.float64)).expand(reps, len(w))
    gens = [torch.Generator().manual_seed(seed * 100_003 + r) for r in range(reps)]
    if callable(scheme):  # a deliberately wrong variant, same signature as RESAMPLERS' entries
        anc = scheme(torch.softmax(ell, -1), m, gens)
    else:
        anc = resample(ell, gens, scheme, num=m)
    return offspring_counts(anc, len(w))


def _unbiased(w: list[float], scheme, m: int, reps: int = 3000, seed: int = 0) -> bool:
    """Mean offspring within 5 standard errors of m·w (variance bounded by the multinomial's)."""
    counts = _replicates(w, scheme, m, reps, seed).double()
    p = torch.tensor(w, dtype=torch.float64) / sum(w)
    se = torch.sqrt(m * p * (1 - p) / reps) + 1e-12
    return bool(((counts.mean(0) - m * p).abs() <= 5 * se + 1e-9).all())


@pytest.mark.parametrize("scheme", SCHEMES)
@given(w=weights_st, m=st.integers(1, 9), seed=st.integers(0, 10_000))
@settings(max_examples=12, deadline=None)
def test_every_scheme_is_unbiased(scheme, w, m, seed):
    assert _unbiased(w, scheme, m, seed=seed)


def test_unbiasedness_check_has_power():
    """Deterministic points (i + ½)/m — systematic without its random offset — are biased, and
    the check sees it; so does a resampler that always keeps the heaviest particle."""

    def midpoints(weights, num, generators):
        i = torch.arange(num, dtype=torch.float64)
        return inverse_cdf(weights, ((i + 0.5) / num).expand(weights.shape[0], num))

    def argmax(weights, num, generators):
        return weights.argmax(-1, keepdim=True).expand(weights.shape[0], num)

    assert not _unbiased([0.3, 0.7], midpoints, 2)
    assert not _unbiased([0.2, 0.3, 0.5], argmax, 3)


@given(w=weights_st, m=st.integers(1, 12), seed=st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_each_scheme_keeps_its_own_guarantee(w, m, seed):
    """Systematic: ⌊m w_j⌋ or ⌈m w_j⌉ offspring; residual: at least ⌊m w_j⌋; stratified: within
    2 of m w_j; all: m ancestors, none of weight 0."""
    p = torch.tensor(w, dtype=torch.float64) / sum(w)
    mw = m * p
    for scheme in SCHEMES:
        counts = _replicates(w, scheme, m, 20, seed)
        assert (counts.sum(-1) == m).all()
        assert (counts[:, p == 0] == 0).all(), scheme
    sysc = _replicates(w, "systematic", m, 20, seed).double()
    assert ((sysc >= mw.floor() - 1e-9) & (sysc <= mw.ceil() + 1e-9)).all()
    res = _replicates(w, "residual", m, 20, seed).double()
    assert (res >= (mw * (1 - 1e-12)).floor()).all()
    strat = _replicates(w, "stratified", m, 20, seed).double()
    assert ((strat - mw).abs() < 2 + 1e-9).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_prompts_ancestors_do_not_depend_on_its_batch(scheme):
    g = torch.Generator().manual_seed(1)
    ell = torch.randn(3, 6, generator=g, dtype=torch.float64)
    both = resample(ell, [torch.Generator().manual_seed(s) for s in (5, 6, 7)], scheme)
    alone = resample(ell[1:2], [torch.Generator().manual_seed(6)], scheme)
    assert torch.equal(both[1:2], alone)


def test_bad_input_is_refused_naming_it():
    gens = [torch.Generator().manual_seed(0)]
    with pytest.raises(ConfigError, match="unknown resampling scheme 'bogus'"):
        resample(torch.zeros(1, 3), gens, "bogus")
    with pytest.raises(ConfigError, match="prompts \\[0\\]"):
        resample(torch.full((1, 3), -math.inf), gens)
    with pytest.raises(ConfigError, match="one generator per prompt \\(2\\), got 1"):
        resample(torch.zeros(2, 3), gens)
    with pytest.raises(ConfigError, match="num"):
        resample(torch.zeros(1, 3), gens, num=0)
