"""Sequence-classifier reward models (UltraRM, Skywork-Reward, the ARGS reward model, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import ConfigError, check_int
from ._pairs import PairScorer, padded_batches
from ._text import WarnOnce, ensure_pad_token, resolve_max_length

__all__ = ["SequenceClassifierReward"]


class SequenceClassifierReward(PairScorer):
    r"""r(x, y) = s_θ(x, y): the score of a ``AutoModelForSequenceClassification`` reward model.

    For each of the D × n (prompt, response) pairs the decoded texts are re-tokenised with the
    reward model's **own** tokenizer (the policy's vocabulary is never assumed):

    * with a chat template (the tokenizer's, or ``chat_template=`` given here), the pair is
      rendered as the conversation ``[user: prompt, assistant: response]``;
    * otherwise as the plain join ``prompt + "\n\n" + response`` with the tokenizer's special
      tokens.

    Sequences are scored in chunks of ``batch_size`` (sorted by length, right-padded) and the
    result is the (D, n) tensor of scores.

    Score: reward models in the literature have a single-logit regression head
    (``num_labels == 1``) and the reward is that logit. For a multi-class head pass
    ``label_index``: an int, or a label name from ``config.label2id`` (e.g. ``"POSITIVE"``);
    the reward is that label's logit (for a 2-class head, ``logit[pos] - logit[neg]`` is the
    log-odds; build it as a :class:`WeightedSum` of two such rewards or a
    :class:`CallableReward`).

    Truncation (``max_length`` tokens, default: the smaller of the tokenizer's and the model's
    limit): the **prompt is cut from its left first**, the response is cut (from its right) only
    when nothing of the prompt is left, and the template / special tokens are kept; see
    :mod:`ctrlalign.rewards._text`. A warning is emitted the first time a pair is truncated.

    Args:
        model: a sequence-classification model, or a name/path loaded lazily on first call.
        tokenizer: its tokenizer (None with a name/path: loaded from the same place).
        label_index: which logit is the reward when ``num_labels > 1``.
        chat_template: None = the tokenizer's template if it has one; False = never (plain
            join); a string = this Jinja template.
        max_length: most tokens per pair.
        batch_size: pairs per forward pass.
        device: where the model runs (default: where it already is; "cpu" when loading).
        dtype: parameter dtype (default: unchanged; float32 when loading).
        name: name in traces (default "classifier").
    """

    name = "classifier"
    _truncation_message = "a (prompt, response) pair"

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        label_index: int | str | None = None,
        chat_template: str | bool | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        name: str | None = None,
        **from_pretrained_kwargs: Any,
    ):
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        if max_length is not None:
            check_int("max_length", max_length, minimum=2)
        if chat_template is not None and not isinstance(chat_template, (str, bool)) or chat_template is True:
            raise ConfigError(
                f"chat_template must be None (use the tokenizer's), False (plain join) or a "
                f"Jinja template string, got {chat_template!r}"
            )
        self._source = model if isinstance(model, (str,)) or hasattr(model, "__fspath__") else None
        self.model = None if self._source is not None else model
        self.tokenizer = tokenizer
        self.label_index = label_index
        self.chat_template = chat_template
        self._max_length_arg = max_length
        self.device = None if device is None else torch.device(device)
        self.dtype = dtype
        self._load_kwargs = from_pretrained_kwargs
        self._warn_truncate = WarnOnce()
        self._ready = False
        if name is not None:
            self.name = name
        if self._source is None and tokenizer is None:
            raise ConfigError("SequenceClassifierReward needs the reward model's tokenizer "
                              "when given a model object (tokenizer=None)")

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> SequenceClassifierReward:
        """A reward from a Hugging Face id or local folder; the model loads on first call.

        Keyword arguments are those of the constructor; any others go to
        ``AutoModelForSequenceClassification.from_pretrained`` (e.g. ``trust_remote_code``).
        """
        return cls(str(name_or_path), None, **kwargs)

    # -- lazy set-up ---------------------------------------------------------------------------

    def _setup(self) -> None:
        if self._ready:
            return
        if self.model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self.model = AutoModelForSequenceClassification.from_pretrained(
                self._source, dtype=self.dtype or torch.float32, **self._load_kwargs
            )
            if self.tokenizer is None:
                self.tokenizer = AutoTokenizer.from_pretrained(self._source)
            self.model.to(self.device or torch.device("cpu"))
        else:
            if self.device is not None or self.dtype is not None:
                self.model.to(device=self.device, dtype=self.dtype)
        self.model.eval()
        self.pad_id = ensure_pad_token(self.tokenizer, self.model)
        self.max_length = resolve_max_length(self.tokenizer, self.model.config, self._max_length_arg)
        num_labels = int(getattr(self.model.config, "num_labels", 1))
        idx = self.label_index
        if idx is None:
            if num_labels != 1:
                labels = list(getattr(self.model.config, "label2id", {}) or {})
                raise ConfigError(
                    f"the reward model has num_labels={num_labels}; pass label_index= an int in "
                    f"[0, {num_labels - 1}] or a label name from {labels}"
                )
            idx = 0
        elif isinstance(idx, str):
            label2id = dict(getattr(self.model.config, "label2id", {}) or {})
            if idx not in label2id:
                raise ConfigError(f"label_index {idx!r} is not a label of this model; allowed: {sorted(label2id)}")
            idx = int(label2id[idx])
        elif not (isinstance(idx, int) and 0 <= idx < num_labels):
            raise ConfigError(f"label_index must be an int in [0, {num_labels - 1}] or a label name, got {idx!r}")
        self._index = idx
        template = self.chat_template
        if template is None:
            template = getattr(self.tokenizer, "chat_template", None) or False
        self._template = template
        self._ready = True

    # -- text → ids ----------------------------------------------------------------------------

    def _build(self, prompt: str, response: str) -> str:
        if self._template:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            kw = {} if self.chat_template in (None, False) else {"chat_template": self._template}
            return self.tokenizer.apply_chat_template(messages, tokenize=False, **kw)
        return prompt + "\n\n" + response


    @torch.no_grad()
    def score_ids(self, sequences: Sequence[list[int]]) -> torch.Tensor:
        """Scores (N,) of N token-id sequences: length-sorted chunks, right padding."""
        self._setup()
        out = torch.empty(len(sequences), dtype=torch.float32)
        dev = next(self.model.parameters()).device
        for chunk, ids, mask in padded_batches(sequences, self.batch_size, self.pad_id, left=False):
            logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
            out[torch.tensor(chunk)] = logits[:, self._index].float().cpu()
        return out

