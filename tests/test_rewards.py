"""Reward plug-ins on real parts: VADER, profanity-check, MiniLM, tiny random transformers."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrlalign import ConfigError, Outcomes, RewardError
from ctrlalign.rewards import (
    CallableReward,
    EmbeddingSimilarity,
    LexiconSentiment,
    LMJudge,
    Reward,
    SequenceClassifierReward,
    Toxicity,
    WeightedSum,
    embed,
    evaluate_reward,
    get_reward,
    safe_call,
    select_outcomes,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def outcomes_of(texts: list[list[str]], **kw) -> Outcomes:
    return Outcomes(num_prompts=len(texts), num_samples=len(texts[0]), texts=texts, **kw)


# ---------------------------------------------------------------------------------------------
# Tiny offline tokenizers and models
# ---------------------------------------------------------------------------------------------


def word_tokenizer(corpus: list[str], *, bos_eos: bool = True, extra: tuple[str, ...] = ()):
    """A word-level fast tokenizer over the words of ``corpus`` (built offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words: dict[str, None] = {}
    for text in corpus:
        for w, _ in pre.pre_tokenize_str(text):
            words.setdefault(w, None)
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", *extra]
    vocab = {t: i for i, t in enumerate(specials + [w for w in words if w not in specials])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre
    if bos_eos:
        tk.post_processor = processors.TemplateProcessing(
            single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
        model_max_length=512,
    )


def tiny_llama_config(vocab_size: int, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **kw,
    )


PROMPTS = ["What is the capital of France ?", "How do I boil an egg ?"]
RESPONSES = [
    ["Paris is the capital .", "I do not know .", "The capital of France is Paris and it is big ."],
    ["Boil it in water for ten minutes .", "Eggs are nice .", "banana purple sky"],
]
LONG_PROMPT = " ".join(f"w{k}" for k in range(60))


@pytest.fixture(scope="module")
def classifier_parts():
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    corpus = PROMPTS + [r for row in RESPONSES for r in row] + [LONG_PROMPT, "< user > < assistant >"]
    tok = word_tokenizer(corpus)
    cfg = tiny_llama_config(len(tok), num_labels=1, pad_token_id=tok.pad_token_id)
    model = LlamaForSequenceClassification(cfg).eval()
    return model, tok


# ---------------------------------------------------------------------------------------------
# Lexicon sentiment, toxicity, embedding similarity
# ---------------------------------------------------------------------------------------------


def test_sentiment_orders_positive_above_negative():
    o = outcomes_of([["I love this, it is wonderful and great!", "This is terrible, I hate it."]])
    r = LexiconSentiment()(["q"], o)
    assert r.shape == (1, 2) and r[0, 0] > 0.5 and r[0, 1] < -0.5
    neg = LexiconSentiment(target="negative")(["q"], o)
    assert torch.allclose(neg, -r)
    assert torch.all(r.abs() <= 1)
    with pytest.raises(ConfigError, match="positive"):
        LexiconSentiment(target="happy")


def test_toxicity_penalises_toxic_text():
    o = outcomes_of([["Thank you, have a lovely day.", "You are a fucking idiot, shut up."],
                     ["The weather is mild today.", "Go to hell, you stupid bitch."]])
    r = Toxicity()(["a", "b"], o)
    assert r.shape == (2, 2)
    assert torch.all(r <= 0) and torch.all(r >= -1)
    assert torch.all(r[:, 1] < r[:, 0] - 0.5)
    assert torch.allclose(Toxicity(weight=2.0)(["a", "b"], o), 2 * r)
    with pytest.raises(ConfigError, match="weight"):
        Toxicity(weight=-1)


def test_embed_shape_norm_and_batch_invariance():
    texts = ["a cat sat on the mat", "stock markets fell", "", "x " * 400]
    e = embed(texts)
    assert e.shape == (4, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-5)
    one = torch.cat([embed([t]) for t in texts])
    assert torch.allclose(e, one, atol=1e-4)
    assert embed([]).shape == (0, 384)


def test_embedding_similarity_paraphrase_above_unrelated():
    paraphrase = "Paris is the capital city of France."
    unrelated = "My favourite pizza topping is pineapple."
    ref = "The capital of France is Paris."
    o = outcomes_of([[paraphrase, unrelated], [unrelated, paraphrase]])
    prompts = ["What is the capital of France?", "Name France's capital."]
    by_list = EmbeddingSimilarity(references=[ref, ref])(prompts, o)
    assert by_list.shape == (2, 2)
    assert by_list[0, 0] > by_list[0, 1] + 0.3 and by_list[1, 1] > by_list[1, 0] + 0.3
    by_dict = EmbeddingSimilarity(references={p: ref for p in prompts})(prompts, o)
    assert torch.allclose(by_list, by_dict, atol=1e-5)
    by_target = EmbeddingSimilarity(target=ref)(prompts, o)
    assert torch.allclose(by_list, by_target, atol=1e-5)
    # the reference is per prompt: a different reference for prompt 1 flips its order
    flipped = EmbeddingSimilarity(references=[ref, "I love pineapple on pizza."])(prompts, o)
    assert flipped[1, 0] > flipped[1, 1]


def test_embedding_similarity_errors_name_the_problem():
    with pytest.raises(ConfigError, match="exactly one"):
        EmbeddingSimilarity()
    with pytest.raises(ConfigError, match="exactly one"):
        EmbeddingSimilarity(references=["a"], target="b")
    o = outcomes_of([["x"], ["y"]])
    with pytest.raises(RewardError, match="num_prompts=2"):
        evaluate_reward(EmbeddingSimilarity(references=["only one"]), ["p", "q"], o)
    with pytest.raises(RewardError, match="prompt 1"):
        EmbeddingSimilarity(references={"p": "r"})(["p", "q"], o)


# ---------------------------------------------------------------------------------------------
# Sequence-classifier reward models with their own tokenizer
# ---------------------------------------------------------------------------------------------


def test_classifier_batched_equals_one_at_a_time(classifier_parts):
    model, tok = classifier_parts
    # the policy's tokens come from a different vocabulary; the reward must ignore them
    policy_tok = word_tokenizer(["completely different words"], bos_eos=False)
    tokens = torch.randint(0, len(policy_tok), (2, 3, 5))
    o = outcomes_of(RESPONSES, tokens=tokens, lengths=torch.full((2, 3), 5))
    reward = SequenceClassifierReward(model, tok, batch_size=4)
    r = reward(PROMPTS, o)
    assert r.shape == (2, 3) and torch.isfinite(r).all()
    assert r.std() > 0
    for d in range(2):
        for i in range(3):
            single = reward([PROMPTS[d]], outcomes_of([[RESPONSES[d][i]]]))
            assert torch.allclose(r[d, i], single[0, 0], atol=1e-5), (d, i)
            ids = tok(PROMPTS[d] + "\n\n" + RESPONSES[d][i], return_tensors="pt")
            with torch.no_grad():
                direct = model(**ids).logits[0, 0]
            assert torch.allclose(r[d, i], direct, atol=1e-5)
    r1 = SequenceClassifierReward(model, tok, batch_size=1)(PROMPTS, o)
    assert torch.allclose(r, r1, atol=1e-5)


def test_classifier_truncation_keeps_the_response(classifier_parts):
    model, tok = classifier_parts
    reward = SequenceClassifierReward(model, tok, max_length=16)
    response = "Paris is the capital ."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = reward.encode(LONG_PROMPT, response)
        reward.encode(LONG_PROMPT + " w1", response)
    assert len(ids) == 16
    resp_ids = tok(response, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert ids[-1 - len(resp_ids):-1] == resp_ids  # the whole response survives
    # what is left of the prompt is its end (cut from the left)
    kept_prompt = tok.convert_ids_to_tokens(ids[1:-1 - len(resp_ids)])
    assert kept_prompt == LONG_PROMPT.split()[-len(kept_prompt):]
    assert sum("max_length" in str(w.message) for w in caught) == 1  # warned once
    # only when nothing of the prompt is left is the response cut, from its right
    with pytest.warns(UserWarning, match="truncated"):
        ids_short = SequenceClassifierReward(model, tok, max_length=4).encode(LONG_PROMPT, response)
    assert tok.convert_ids_to_tokens(ids_short) == ["[BOS]", "Paris", "is", "[EOS]"]
    # scores of truncated pairs are finite and batched == single
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o = outcomes_of([[response, "I do not know ."]])
        r = reward([LONG_PROMPT], o)
        single = reward([LONG_PROMPT], outcomes_of([["I do not know ."]]))
    assert torch.allclose(r[0, 1], single[0, 0], atol=1e-5)


def test_classifier_chat_template_and_truncation(classifier_parts):
    model, tok = classifier_parts
    template = "{% for m in messages %}< {{ m['role'] }} > {{ m['content'] }} [EOS] {% endfor %}"
    response = "Paris is the capital ."
    # 3 template + 60 prompt + 1 + 3 template + 5 response + 1 = 73 tokens
    with pytest.warns(UserWarning, match="max_length=15"):
        ids = SequenceClassifierReward(model, tok, chat_template=template, max_length=15).encode(
            LONG_PROMPT, response)
    assert tok.convert_ids_to_tokens(ids) == [
        "<", "user", ">", "w58", "w59", "[EOS]", "<", "assistant", ">",
        "Paris", "is", "the", "capital", ".", "[EOS]"]
    # with the prompt used up, the response loses its end; the template (and [EOS]) stays
    with pytest.warns(UserWarning, match="max_length=12"):
        ids = SequenceClassifierReward(model, tok, chat_template=template, max_length=12).encode(
            LONG_PROMPT, response)
    assert tok.convert_ids_to_tokens(ids) == [
        "<", "user", ">", "[EOS]", "<", "assistant", ">", "Paris", "is", "the", "capital", "[EOS]"]
    full = SequenceClassifierReward(model, tok, chat_template=template)
    ids_full = full.encode("What is the capital of France ?", "Paris is the capital .")
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France ?"},
         {"role": "assistant", "content": "Paris is the capital ."}],
        chat_template=template, tokenize=False,
    )
    assert ids_full == tok(text, add_special_tokens=False)["input_ids"]
    # a plain join is used when the tokenizer has no template and none is given
    plain = SequenceClassifierReward(model, tok)
    assert plain.encode("a", "b") == tok("a\n\nb")["input_ids"]


def test_classifier_bert_head_with_cls_sep(classifier_parts):
    """An encoder reward model (BERT, absolute positions, right padding) works the same way."""
    from transformers import BertConfig, BertForSequenceClassification

    _, tok = classifier_parts
    torch.manual_seed(5)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=1,
                     pad_token_id=tok.pad_token_id)
    model = BertForSequenceClassification(cfg).eval()
    reward = SequenceClassifierReward(model, tok)
    assert reward.encode("a", "b") and reward.max_length == 64
    o = outcomes_of([[RESPONSES[0][0], RESPONSES[0][2]]])
    with pytest.warns(UserWarning, match="truncated"):
        r = reward([LONG_PROMPT + " " + LONG_PROMPT], o)
    for i in range(2):
        ids = reward.encode(LONG_PROMPT + " " + LONG_PROMPT, o.texts[0][i])
        assert len(ids) == 64 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        with torch.no_grad():
            direct = model(input_ids=torch.tensor([ids])).logits[0, 0]
        assert torch.allclose(r[0, i], direct, atol=1e-5)


def test_classifier_multiclass_label_index(classifier_parts):
    from transformers import LlamaForSequenceClassification

    _, tok = classifier_parts
    torch.manual_seed(1)
    cfg = tiny_llama_config(len(tok), num_labels=3, pad_token_id=tok.pad_token_id,
                            id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})
    model = LlamaForSequenceClassification(cfg).eval()
    o = outcomes_of(RESPONSES)
    with pytest.raises(ConfigError, match="num_labels=3"):
        SequenceClassifierReward(model, tok)(PROMPTS, o)
    by_name = SequenceClassifierReward(model, tok, label_index="pos")(PROMPTS, o)
    by_int = SequenceClassifierReward(model, tok, label_index=2)(PROMPTS, o)
    assert torch.allclose(by_name, by_int)
    ids = tok(PROMPTS[0] + "\n\n" + RESPONSES[0][0], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(by_int[0, 0], model(**ids).logits[0, 2], atol=1e-5)
    with pytest.raises(ConfigError, match="label"):
        SequenceClassifierReward(model, tok, label_index="happy")(PROMPTS, o)


def test_classifier_pad_token_fallback(classifier_parts):
    """A tokenizer without a pad token gets EOS as pad; the model's config is told."""
    from transformers import LlamaForSequenceClassification

    _, tok0 = classifier_parts
    tok = word_tokenizer([*PROMPTS, *[r for row in RESPONSES for r in row]])
    tok.pad_token = None
    torch.manual_seed(2)
    model = LlamaForSequenceClassification(tiny_llama_config(len(tok), num_labels=1)).eval()
    assert tok.pad_token_id is None and model.config.pad_token_id is None
    r = SequenceClassifierReward(model, tok)(PROMPTS, outcomes_of(RESPONSES))
    assert tok.pad_token == "[EOS]" and model.config.pad_token_id == tok.eos_token_id
    single = SequenceClassifierReward(model, tok)([PROMPTS[1]], outcomes_of([[RESPONSES[1][2]]]))
    assert torch.allclose(r[1, 2], single[0, 0], atol=1e-5)


def test_classifier_from_pretrained_is_lazy(tmp_path, classifier_parts):
    model, tok = classifier_parts
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    reward = get_reward("classifier", model=str(tmp_path), batch_size=2)
    assert isinstance(reward, SequenceClassifierReward) and reward.model is None
    r = reward(PROMPTS, outcomes_of(RESPONSES))
    expect = SequenceClassifierReward(model, tok)(PROMPTS, outcomes_of(RESPONSES))
    assert torch.allclose(r, expect, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# LM judge
# ---------------------------------------------------------------------------------------------


def test_judge_log_odds_equal_hand_computed_log_softmax():
    from transformers import LlamaForCausalLM

    template = "Question : {prompt} Response : {response} Is it good ? Answer Yes or No :"
    corpus = PROMPTS + [r for row in RESPONSES for r in row] + [template.format(prompt="", response="")]
    tok = word_tokenizer(corpus, bos_eos=False)
    torch.manual_seed(3)
    model = LlamaForCausalLM(tiny_llama_config(len(tok))).eval()
    judge = LMJudge(model, tok, question_template=template, batch_size=4)
    o = outcomes_of(RESPONSES)
    r = judge(PROMPTS, o)
    assert r.shape == (2, 3)
    yes, no = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")
    for d in range(2):
        for i in range(3):
            text = template.format(prompt=PROMPTS[d], response=RESPONSES[d][i])
            ids = tok(text, return_tensors="pt")
            with torch.no_grad():
                logp = model(**ids).logits[0, -1].log_softmax(-1)
            assert math.isclose(float(r[d, i]), float(logp[yes] - logp[no]), abs_tol=1e-4), (d, i)
    # left padding with correct positions: batch size does not change a score
    assert torch.allclose(r, LMJudge(model, tok, question_template=template, batch_size=1)(PROMPTS, o), atol=1e-4)


def test_judge_chat_template_strips_answer_space_and_keeps_response():
    from transformers import LlamaForCausalLM

    template = "Question : {prompt} Response : {response} Good ?"
    corpus = PROMPTS + [r for row in RESPONSES for r in row] + [LONG_PROMPT, template, "< user > < assistant > Yes No"]
    tok = word_tokenizer(corpus, bos_eos=False)
    tok.chat_template = ("{% for m in messages %}< {{ m['role'] }} > {{ m['content'] }} [EOS] {% endfor %}"
                         "{% if add_generation_prompt %}< assistant >{% endif %}")
    torch.manual_seed(4)
    model = LlamaForCausalLM(tiny_llama_config(len(tok))).eval()
    judge = LMJudge(model, tok, question_template=template)  # yes=" Yes" -> "Yes" after the template
    r = judge(PROMPTS[:1], outcomes_of([RESPONSES[0][:1]]))
    text = tok.apply_chat_template(
        [{"role": "user", "content": template.format(prompt=PROMPTS[0], response=RESPONSES[0][0])}],
        tokenize=False, add_generation_prompt=True)
    with torch.no_grad():
        logp = model(**tok(text, return_tensors="pt")).logits[0, -1].log_softmax(-1)
    yes, no = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")
    assert math.isclose(float(r[0, 0]), float(logp[yes] - logp[no]), abs_tol=1e-4)
    short = LMJudge(model, tok, question_template=template, max_length=20)
    with pytest.warns(UserWarning, match="truncated"):
        ids = short.encode(LONG_PROMPT, "Paris is the capital .")
    assert tok.convert_ids_to_tokens(ids) == [
        "<", "user", ">", "Question", ":", "w58", "w59", "Response", ":",
        "Paris", "is", "the", "capital", ".", "Good", "?", "[EOS]", "<", "assistant", ">"]


def test_judge_config_errors():
    with pytest.raises(ConfigError, match="response"):
        LMJudge(question_template="Is {prompt} good?")
    with pytest.raises(ConfigError, match="neither"):
        LMJudge(model=object())


@pytest.mark.slow
def test_judge_smollm2_prefers_relevant_answers():
    """SmolLM2-135M is a weak judge: its log-odds are all negative and close together.

    It orders a correct, relevant answer above gibberish reliably on these three questions
    (margins 0.3-0.7 nats measured); it does not reliably tell "Paris" from "Berlin".
    """
    judge = LMJudge()
    prompts = ["What is the capital of France?", "How do I boil an egg?", "What is 2 + 2?"]
    o = outcomes_of([
        ["The capital of France is Paris.", "asdf qwer zxcv blorp"],
        ["Place the egg in boiling water for about 8 to 10 minutes, then cool it in cold water.",
         "flarg blim snoo twex"],
        ["2 + 2 = 4.", "banana purple sky"],
    ])
    r = judge(prompts, o)
    assert r.shape == (3, 2) and torch.isfinite(r).all()
    assert torch.all(r[:, 0] > r[:, 1] + 0.1), r


# ---------------------------------------------------------------------------------------------
# Composition, callables, failures, registry
# ---------------------------------------------------------------------------------------------


def value_outcomes(values: torch.Tensor) -> Outcomes:
    return Outcomes(num_prompts=values.shape[0], num_samples=values.shape[1], values=values)


@settings(max_examples=40, deadline=None)
@given(
    a=st.floats(-5, 5), b=st.floats(-5, 5),
    D=st.integers(1, 3), n=st.integers(1, 4), seed=st.integers(0, 1000),
)
def test_weighted_sum_is_linear(a, b, D, n, seed):
    g = torch.Generator().manual_seed(seed)
    o = value_outcomes(torch.randn(D, n, 2, generator=g))
    r1 = CallableReward(lambda p, o: o.values[..., 0], batched=True, name="first")
    r2 = CallableReward(lambda p, s: float(s.value[1] ** 2), name="second")
    prompts = list(range(D))
    combined = a * r1 + b * r2
    assert isinstance(combined, WeightedSum)
    expect = a * r1(prompts, o) + b * r2(prompts, o)
    assert torch.allclose(combined(prompts, o), expect, atol=1e-5)
    assert torch.allclose((r1 - r2)(prompts, o), r1(prompts, o) - r2(prompts, o), atol=1e-5)
    assert torch.allclose((-r1)(prompts, o), -r1(prompts, o))


def test_callable_reward_both_forms():
    o = outcomes_of([["ab", "abcd"], ["", "xyz"]])
    per_text = CallableReward(lambda prompt, text: len(text) + len(prompt), texts=True)
    batched = CallableReward(lambda ps, oc: torch.tensor([[len(t) for t in row] for row in oc.texts]), batched=True)

    def annotated(prompt, text: str) -> float:
        return float(len(text))

    assert torch.equal(per_text(["p", "qq"], o), torch.tensor([[3.0, 5.0], [2.0, 5.0]]))
    assert torch.equal(batched(["p", "qq"], o), torch.tensor([[2.0, 4.0], [0.0, 3.0]]))
    assert torch.equal(CallableReward(annotated)(["p", "qq"], o), torch.tensor([[2.0, 4.0], [0.0, 3.0]]))
    assert torch.equal(evaluate_reward(batched, ["p", "qq"], o), batched(["p", "qq"], o))


def test_failures_name_prompt_and_sample():
    o = outcomes_of([["ok", "ok", "ok"], ["ok", "ok", "BAD"]])
    prompts = ["first prompt", "second prompt"]

    def fragile(ps, oc):
        for row in oc.texts:
            if "BAD" in row:
                raise ValueError("cannot score BAD")
        return torch.zeros(oc.num_prompts, oc.num_samples)

    with pytest.raises(RewardError, match=r"prompt 1 \('second prompt'\), sample 2") as info:
        evaluate_reward(CallableReward(fragile, batched=True, name="fragile"), prompts, o)
    assert "ValueError: cannot score BAD" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)

    def per_sample(prompt, text: str) -> float:
        if text == "BAD":
            raise KeyError(text)
        return 1.0

    with pytest.raises(RewardError, match="prompt 1, sample 2"):
        safe_call(CallableReward(per_sample), prompts, o)

    def needs_company(ps, oc):
        if oc.num_prompts * oc.num_samples == 6:
            raise RuntimeError("whole-batch failure")
        return torch.zeros(oc.num_prompts, oc.num_samples)

    with pytest.raises(RewardError, match="no single prompt/sample reproduces it"):
        evaluate_reward(CallableReward(needs_company, batched=True), prompts, o)

    wrong = CallableReward(lambda ps, oc: torch.zeros(3, 2), batched=True, name="wrong")
    with pytest.raises(RewardError, match=r"shape \(3, 2\).*num_prompts=2, num_samples=3"):
        evaluate_reward(wrong, prompts, o)

    def nan_at(ps, oc):
        r = torch.zeros(oc.num_prompts, oc.num_samples)
        r[1, 0] = float("nan")
        return r

    with pytest.raises(RewardError, match=r"nan at prompt 1 \('second prompt'\), sample 0"):
        evaluate_reward(CallableReward(nan_at, batched=True), prompts, o)
    inf = CallableReward(lambda p, t: float("inf") if t == "BAD" else 0.0, texts=True)
    with pytest.raises(RewardError, match="prompt 1.*sample 2"):
        inf.evaluate(prompts, o)
    # a failing term of a sum is named
    total = LexiconSentiment() + 0.5 * CallableReward(nan_at, batched=True, name="broken")
    with pytest.raises(RewardError, match="'broken'.*prompt 1"):
        total(prompts, o)


def test_select_outcomes_subgrid():
    vals = torch.arange(12.0).reshape(2, 3, 2)
    o = Outcomes(num_prompts=2, num_samples=3, values=vals, texts=[["a", "b", "c"], ["d", "e", "f"]],
                 lengths=torch.ones(2, 3, dtype=torch.long))
    sub = select_outcomes(o, [1], [0, 2])
    assert (sub.num_prompts, sub.num_samples) == (1, 2)
    assert sub.texts == [["d", "f"]]
    assert torch.equal(sub.values, vals[1:, [0, 2]])


def test_registry():
    assert isinstance(get_reward("sentiment", target="negative"), LexiconSentiment)
    assert isinstance(get_reward("toxicity", weight=2), Toxicity)
    assert isinstance(get_reward("embedding", target="a kind answer"), EmbeddingSimilarity)
    assert isinstance(get_reward("judge"), LMJudge)  # nothing is loaded yet
    with pytest.raises(ConfigError, match=r"unknown reward 'vibes'.*'classifier'.*'sentiment'"):
        get_reward("vibes")
    with pytest.raises(ConfigError, match="sentiment"):
        get_reward("sentiment", colour="red")


def test_texts_required():
    with pytest.raises(RewardError, match="texts=None"):
        evaluate_reward(LexiconSentiment(), [0], value_outcomes(torch.zeros(1, 2, 1)))


def test_import_is_light():
    code = (
        "import sys, time; t = time.time(); import ctrlalign; dt = time.time() - t; "
        "heavy = [m for m in ('transformers', 'vaderSentiment', 'profanity_check', 'sklearn', "
        "'sentence_transformers') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "[]"


def test_reward_is_abstract():
    with pytest.raises(TypeError):
        Reward()  # type: ignore[abstract]


# ---------------------------------------------------------------------------------------------
# prefix scores (partial responses, for closed-loop controllers)


class _PrefixAware(Reward):
    """A reward whose prefix score differs from its full score: length of the text so far."""

    name = "prefix-aware"

    def __call__(self, prompts, outcomes):
        return torch.tensor([[float(len(t)) for t in row] for row in outcomes.texts])

    def prefix(self, prompts, outcomes):
        return -self(prompts, outcomes)


def test_prefix_defaults_to_the_reward_of_the_text_so_far():
    r = CallableReward(lambda p, t: float(len(t)), texts=True, name="len")
    o = outcomes_of([["ab", "abcd"]])
    assert torch.equal(r.evaluate(["x"], o, prefix=True), r.evaluate(["x"], o))


def test_a_weighted_sum_scores_prefixes_term_by_term():
    """Each term's own prefix score enters the sum, not its full score."""
    s = 2.0 * _PrefixAware() + CallableReward(lambda p, t: 1.0, texts=True, name="one")
    o = outcomes_of([["ab", "abcd"]])
    assert s.evaluate(["x"], o).tolist() == [[5.0, 9.0]]
    assert s.evaluate(["x"], o, prefix=True).tolist() == [[-3.0, -7.0]]


def test_a_reward_without_prefix_scores_is_refused_by_name():
    no = CallableReward(lambda p, t: 1.0, texts=True, name="final-only", scores_prefixes=False)
    o = outcomes_of([["ab"]])
    assert no.evaluate(["x"], o).tolist() == [[1.0]]  # full scores still work
    for reward in (no, no + CallableReward(lambda p, t: 0.0, texts=True, name="zero")):
        assert reward.scores_prefixes is False
        with pytest.raises(ConfigError, match="'final-only'.*scores_prefixes=False"):
            reward.evaluate(["x"], o, prefix=True)
    with pytest.raises(ConfigError, match="scores_prefixes must be True or False"):
        CallableReward(lambda p, t: 1.0, scores_prefixes="no")


def test_a_failing_prefix_score_names_the_prompt_and_sample():
    class Picky(_PrefixAware):
        def prefix(self, prompts, outcomes):
            if any("!" in t for row in outcomes.texts for t in row):
                raise ValueError("no shouting")
            return super().prefix(prompts, outcomes)

    with pytest.raises(RewardError, match="on prefixes raised ValueError: no shouting at prompt 1 .*sample 0"):
        Picky().evaluate(["a", "b"], outcomes_of([["ok", "fine"], ["hey!", "ok"]]), prefix=True)
