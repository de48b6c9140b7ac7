"""The decoding contract's sampler: blocked inverse-CDF sampling from pre-drawn uniforms."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from ctrlalign._checks import ConfigError
from ctrlalign.dynamics.decoding import (
    SamplingConfig,
    _block_size,
    _inverse_cdf,
    _scale_and_filter,
    sample_tokens,
    sample_with_logprobs,
)

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
    # float64: a float32 softmax flushes e^-103 (a float32 denormal, which the sampler may
    # rightly pick at u = 0) to 0 in its vectorised exp
    probs = torch.softmax(logits.double(), -1)
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


# --------------------------------------------------------------------------------------------
# the blocked two-level inverse CDF

U_MAX = 1 - 2**-24  # torch.rand's largest value
# vocabulary sizes: tiny, a prime with itself as its block (1031), primes with no divisor in
# [64, 2048] (padded to a multiple of 1024), several blocks, and Llama-3's 128,256 (bs = 1002)
VOCABS = [1, 2, 3, 7, 63, 64, 1031, 2053, 4099, 3 * 1002, 128_256]


@pytest.mark.parametrize("V, bs", [(1, 1), (2, 2), (63, 63), (64, 64), (1031, 1031), (2048, 1024),
                                   (4099, 1024), (50_257, 1733), (128_256, 1002), (151_936, 1187),
                                   (32_000, 1000), (256_000, 1024), (131_000, 1048)])
def test_block_size_examples(V, bs):
    assert _block_size(V) == bs


@given(V=st.integers(1, 20_000))
@settings(max_examples=300, deadline=None)
def test_block_size_rule(V):
    """bs = V below 64; else the divisor of V in [64, 2048] nearest 1024, or 1024 (padded)."""
    bs = _block_size(V)
    divisors = [d for d in range(64, 2049) if V % d == 0]
    if V < 64:
        assert bs == V
    elif divisors:
        assert V % bs == 0 and 64 <= bs <= 2048
        assert all(abs(bs - 1024) <= abs(d - 1024) for d in divisors)
        assert bs == max(d for d in divisors if abs(d - 1024) == abs(bs - 1024))  # ties: larger
    else:
        assert bs == 1024 and V % bs != 0


def random_logits(V, rows, seed, kind, neg_inf):
    """(rows, V) float32 logits of several shapes; a fraction neg_inf of entries at -inf, but
    every row keeps at least one finite entry."""
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        x = torch.randn(rows, V, generator=g)
    elif kind == "wide":  # the range -300..30 of the property tests above
        x = torch.rand(rows, V, generator=g) * 330 - 300
    elif kind == "peaked":  # one dominant token per row, the rest far below
        x = torch.randn(rows, V, generator=g) * 3
        x[torch.arange(rows), torch.randint(V, (rows,), generator=g)] += 40
    else:  # "flat": many equal logits (ties in the CDF)
        x = torch.randint(-2, 1, (rows, V), generator=g).float()
    if neg_inf > 0:
        mask = torch.rand(rows, V, generator=g) < neg_inf
        mask[torch.arange(rows), torch.randint(V, (rows,), generator=g)] = False
        x = x.masked_fill(mask, float("-inf"))
    return x


def check_inverse_cdf(x, u, tok, eps=1e-5):
    """tok is the float64 inverse-CDF answer for softmax(x) and u, up to eps of a CDF boundary:
    cdf[tok-1] <= u + eps and cdf[tok] >= u - eps; and the token has positive probability."""
    B, V = x.shape
    assert tok.dtype == torch.long and tok.shape == (B,)
    assert ((tok >= 0) & (tok < V)).all(), "padded or out-of-range token"
    cdf = torch.softmax(x.double(), -1).cumsum(-1)
    cdf = torch.cat([torch.zeros(B, 1, dtype=torch.float64), cdf], -1)  # cdf[:, k] = P(token < k)
    lo = cdf.gather(-1, tok[:, None]).squeeze(-1)
    hi = cdf.gather(-1, tok[:, None] + 1).squeeze(-1)
    u = u.double()
    assert (lo <= u + eps).all(), (lo, u)
    assert (hi >= u - eps).all(), (hi, u)
    m = x.amax(-1, keepdim=True)
    assert (torch.exp(x.gather(-1, tok[:, None]) - m) > 0).all(), "zero-probability token"


uniform_values = st.floats(0, U_MAX) | st.sampled_from([0.0, U_MAX, 0.5, 1e-7])
logit_kinds = st.sampled_from(["normal", "wide", "peaked", "flat"])


@given(V=st.sampled_from(VOCABS), seed=st.integers(0, 2**31 - 1), kind=logit_kinds,
       neg_inf=st.sampled_from([0.0, 0.3, 0.99]), u=st.lists(uniform_values, min_size=1, max_size=4))
@settings(max_examples=150, deadline=None)
def test_token_is_the_float64_inverse_cdf(V, seed, kind, neg_inf, u):
    rows = len(u) if V > 10_000 else 4 * len(u)
    x = random_logits(V, rows, seed, kind, neg_inf)
    uu = torch.tensor(u, dtype=torch.float32).repeat_interleave(rows // len(u))
    tok, _, _ = sample_with_logprobs(x, uu, SamplingConfig())
    check_inverse_cdf(x, uu, tok)


@given(rows=st.lists(st.lists(st.floats(-300, 30) | st.just(float("-inf")), min_size=1, max_size=40),
                     min_size=1, max_size=4),
       block=st.integers(1, 9), u=uniform_values)
@settings(max_examples=300, deadline=None)
def test_small_blocks_with_padding(rows, block, u):
    """The two levels with many blocks, and a padded last block, on explicit logits."""
    V = min(len(r) for r in rows)
    x = torch.tensor([r[:V] for r in rows], dtype=torch.float32)
    x[:, 0] = torch.where(torch.isinf(x).all(-1), 0.0, x[:, 0])  # at least one finite entry
    uu = torch.full((len(rows),), u)
    tok, lp = _inverse_cdf(x, uu, block=block)
    check_inverse_cdf(x, uu, tok)
    torch.testing.assert_close(lp, torch.log_softmax(x, -1).gather(-1, tok[:, None]).squeeze(-1),
                               atol=1e-5, rtol=2e-6)


@pytest.mark.parametrize("V", [5, 4099, 2053])
@pytest.mark.parametrize("u", [0.0, U_MAX])
def test_never_a_padded_or_zero_probability_token_at_the_extremes(V, u):
    """Mass piled on the last tokens and -inf tokens around: u = 0 gives the first finite
    token, u = 1 − 2⁻²⁴ the last finite one — never a -inf or padded position."""
    x = torch.full((3, V), float("-inf"))
    x[0, 1:-1] = torch.linspace(-50, 20, V - 2)  # last token -inf, largest logit just before it
    x[1, -1] = 0.0  # a single finite token, the last real one (padding follows when V is prime)
    x[2, ::2] = 0.0
    uu = torch.full((3,), u)
    for block in (None, 2, 3):
        tok, _ = _inverse_cdf(x, uu, block=block)
        finite = torch.isfinite(x)
        first = finite.float().argmax(-1)
        last = V - 1 - finite.flip(-1).float().argmax(-1)
        assert torch.equal(tok, first if u == 0.0 else last)


@pytest.mark.parametrize("block", [None, 2, 3])
def test_uniform_that_rounds_to_one_in_float32(block):
    """A float64 uniform in [0, 1) within 2⁻²⁵ of 1 becomes 1.0 in float32; the target is still
    kept below the total mass, so the token is the last finite one, never one from an all -inf
    last block or the padding."""
    V = 7
    x = torch.full((2, V), float("-inf"))
    x[0, :3] = torch.tensor([0.3, -1.0, 2.0])  # blocks of 2 or 3: the last block(s) all -inf
    x[1, 1] = 0.0
    u = torch.tensor([1 - 1e-12, 1 - 2**-30], dtype=torch.float64)
    assert (u < 1).all() and (u.float() == 1.0).all()
    tok, _ = _inverse_cdf(x, u, block=block)
    assert tok.tolist() == [2, 1]
    assert sample_tokens(x, u, SamplingConfig()).tolist() == [2, 1]


TOP_K = st.none() | st.integers(1, 20)
TOP_P = st.none() | st.floats(0.01, 1.0)
TEMPERATURE = st.sampled_from([1.0, 0.5, 2.0, 0.05])


def configs():
    return st.builds(SamplingConfig, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P,
                     greedy=st.sampled_from([False, False, False, True]))


def assert_logprob_at(lp, logits, tok):
    """lp equals float32 log_softmax(logits) at the token, to 1e-5 plus float32 rounding.

    Both sides compute x − m − log Σ exp(x − m) in float32, in different orders; each
    subtraction rounds at float32's spacing of the row's largest |logit|, so two correct
    implementations may differ by a few ε·max|x| (ε = 2⁻²³): 3e-5 for logits of ±270.
    """
    ref = torch.log_softmax(logits.float(), -1).gather(-1, tok[:, None]).squeeze(-1)
    assert lp.dtype == torch.float32
    x = logits.float()
    scale = torch.where(torch.isfinite(x), x.abs(), torch.zeros_like(x)).amax(-1)  # masked (−inf) logits excluded
    tol = 1e-5 + 8 * torch.finfo(torch.float32).eps * scale + 2e-6 * ref.abs()
    bad = (lp - ref).abs() > tol
    assert not bad.any(), f"log-probabilities differ beyond float32 rounding: {lp[bad]} vs {ref[bad]} (tol {tol[bad]})"


@given(V=st.sampled_from([1, 3, 64, 1031, 4099]), seed=st.integers(0, 2**31 - 1), kind=logit_kinds,
       neg_inf=st.sampled_from([0.0, 0.5]), config=configs(), u=uniform_values, base=st.booleans())
@settings(max_examples=200, deadline=None)
def test_logprobs_are_temperature_one_log_softmax(V, seed, kind, neg_inf, config, u, base):
    logits = random_logits(V, 6, seed, kind, neg_inf)
    base_logits = random_logits(V, 6, seed + 1, "normal", 0.0) if base else None
    uu = torch.linspace(0, 1, 6).mul(u).clamp(max=U_MAX)
    tok, lp, blp = sample_with_logprobs(logits, uu, config, base_logits=base_logits)
    assert_logprob_at(lp, logits, tok)
    if base:
        assert_logprob_at(blp, base_logits, tok)
    else:
        assert blp is None
    # the token itself is the inverse-CDF draw from the filtered, tempered distribution
    if config.greedy:
        assert torch.equal(tok, logits.argmax(-1))
    else:
        check_inverse_cdf(_scale_and_filter(logits, config), uu, tok)


def test_base_logits_is_logits_reuses_logprobs():
    logits = torch.randn(5, 300)
    tok, lp, blp = sample_with_logprobs(logits, torch.rand(5), SamplingConfig(), base_logits=logits)
    assert blp is lp
    assert_logprob_at(lp, logits, tok)


@given(V=st.sampled_from([2, 64, 1031, 4099]), seed=st.integers(0, 2**31 - 1), kind=logit_kinds,
       config=configs())
@settings(max_examples=100, deadline=None)
def test_sample_tokens_equals_sample_with_logprobs(V, seed, kind, config):
    logits = random_logits(V, 8, seed, kind, 0.2)
    u = torch.rand(8, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(sample_tokens(logits, u, config), sample_with_logprobs(logits, u, config)[0])


@pytest.mark.parametrize("config", [SamplingConfig(), SamplingConfig(temperature=0.7, top_k=50, top_p=0.9),
                                    SamplingConfig(greedy=True)])
def test_bf16_logits(config):
    """bf16 logits (the GPU's dtype): the same tokens as their float32 copy, float32 log-probs."""
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(16, 4099, generator=g) * 4).bfloat16()
    base = torch.randn(16, 4099, generator=g).bfloat16()
    u = torch.rand(16, generator=g)
    tok, lp, blp = sample_with_logprobs(logits, u, config, base_logits=base)
    tok32, lp32, blp32 = sample_with_logprobs(logits.float(), u, config, base_logits=base.float())
    assert torch.equal(tok, tok32) and torch.equal(lp, lp32) and torch.equal(blp, blp32)
    assert lp.dtype == blp.dtype == torch.float32
    assert_logprob_at(lp, logits, tok)
    assert_logprob_at(blp, base, tok)
    if not config.greedy:
        check_inverse_cdf(_scale_and_filter(logits.float(), config), u, tok)


@functools.cache
def _compile_works() -> str | None:
    """None if torch.compile (inductor, C++ codegen) runs on this CPU, else why not."""
    try:
        f = torch.compile(lambda a: torch.exp(a).cumsum(-1), fullgraph=True, dynamic=False)
        torch.testing.assert_close(f(torch.zeros(2, 3)), torch.ones(2, 3).cumsum(-1))
    except Exception as e:
        return f"torch.compile does not work on this CPU: {type(e).__name__}: {str(e)[:200]}"
    return None


@pytest.mark.parametrize("config, base", [(SamplingConfig(), "distinct"), (SamplingConfig(), "same"),
                                          (SamplingConfig(temperature=0.7, top_k=40, top_p=0.9), None),
                                          (SamplingConfig(greedy=True), "distinct")])
def test_torch_compile_fullgraph_matches_eager(config, base):
    reason = _compile_works()
    if reason is not None:
        pytest.skip(reason)
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(8, 4099, generator=g) * 3
    base_logits = {"distinct": torch.randn(8, 4099, generator=g), "same": logits, None: None}[base]
    u = torch.rand(8, generator=g)
    u[0], u[1] = 0.0, U_MAX
    f = torch.compile(sample_with_logprobs, fullgraph=True, dynamic=False)
    tok, lp, blp = f(logits, u, config, base_logits=base_logits)
    etok, elp, eblp = sample_with_logprobs(logits, u, config, base_logits=base_logits)
    assert torch.equal(tok, etok)
    torch.testing.assert_close(lp, elp, atol=1e-5, rtol=1e-6)
    if base is None:
        assert blp is None
    else:
        torch.testing.assert_close(blp, eblp, atol=1e-5, rtol=1e-6)
