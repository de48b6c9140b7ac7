"""Shared fixtures: tiny randomly initialised causal LMs and a tokenizer built offline.

No hub access: ``HF_HUB_OFFLINE`` is set before transformers is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from ctrlalign.dynamics.counting import CountingDynamics

WORDS = ["the", "a", "an", "sea", "sky", "sun", "moon", "star", "tree", "river", "cat", "dog", "bird", "fish", "red", "blue", "green", "happy", "sad", "good", "bad", "big", "small", "run", "jump", "swim", "fly", "is", "are", "was", "and", "or", "but", "not", "to", "of", "in", "on", "at", "with", "what", "who", "how", "why", "when", "where", "write", "tell", "story", "poem", "about", "me", "you", "it", "this", "that", "one", "two", "three", "hello", "hi", "please", "thanks", "answer", "question", "day", "night", "love", "hate", "."]
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
PAD, EOS, BOS = 0, 1, 2
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

#: prompts of different token lengths (so batching needs left padding)
PROMPTS = [
    "hello",
    "write a poem about the sea and the moon",
    "tell me a story about a happy cat",
    "why is the sky blue",
]


def make_tokenizer(chat_template: bool = False):
    """A word-level tokenizer over ``WORDS`` with pad/eos/bos/unk (and chat tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHAT_TOKENS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        additional_special_tokens=CHAT_TOKENS,
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def vocab_size() -> int:
    return len(SPECIALS) + len(CHAT_TOKENS) + len(WORDS)


def make_model(arch: str, seed: int = 0):
    """A tiny random causal LM of the given architecture, float32, eval mode.

    The head is scaled up so the distributions are peaked (no greedy near-ties, and
    Gemma-3's soft-capping at c = 5 is active).
    """
    import transformers as tf

    V = vocab_size()
    torch.manual_seed(seed)
    common = {"vocab_size": V, "pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": BOS}
    if arch == "llama":
        cfg = tf.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
            **common,
        )
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
        model = tf.GPT2LMHeadModel(cfg)
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
            **common,
        )
        model = tf.Qwen2ForCausalLM(cfg)
    elif arch == "gemma3":
        cfg = tf.Gemma3TextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
            sliding_window=4, layer_types=["sliding_attention", "full_attention"],
            final_logit_softcapping=5.0, tie_word_embeddings=False, **common,
        )
        model = tf.Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(arch)
    with torch.no_grad():
        head = model.get_output_embeddings()
        head.weight.mul_(4.0 / head.weight.norm(dim=1).mean())  # row norm 4: logit std ~ 4
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    return model.eval()


ARCHS = ["llama", "gpt2", "qwen2", "gemma3"]


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def chat_tokenizer():
    return make_tokenizer(chat_template=True)


@pytest.fixture(scope="session", params=ARCHS)
def arch_model(request):
    """(arch name, tiny model) for every supported architecture."""
    return request.param, make_model(request.param)


@pytest.fixture(scope="session")
def llama_model():
    return make_model("llama")


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one torch thread: tiny float64 ops are ~1000x slower with two
    OpenMP threads on a loaded 2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class EarlyEnd(CountingDynamics):
    """A tiny LM whose uniforms are shrunk ×0.05, so that the first tokens of the vocabulary,
    the end token among them, are drawn often: rows end early (the law is no longer the model's,
    which budgets do not care about)."""

    def draw_noise(self, generators, num_samples, steps=None):
        return 0.05 * super().draw_noise(generators, num_samples, steps)
