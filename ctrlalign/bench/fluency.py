r"""Held-out fluency: the mean per-token log-likelihood of a response under a *different* causal LM.

Nothing optimises this score: the policy is one model, the rewards are others, and the fluency
LM is a third (with the policy SmolLM2-135M-Instruct the packaged Gemma-3-270M, and vice versa;
see :func:`ctrlalign.models.fluency_model_for`). For a prompt x and a response
:math:`y = (y_1..y_L)` in the fluency LM's own tokens,

.. math:: \mathrm{fluency}(x, y) = \frac1L \sum_{t=1}^{L} \log q(y_t \mid c(x), y_{<t}),

with c(x) the prompt's context: the fluency LM's chat template around one user turn (and the
generation prompt) when its tokenizer has one, else the raw prompt text with the tokenizer's
special tokens (BOS). Higher (closer to 0) is more fluent; it is in nats per token of the
fluency LM, so compare values only under one fluency LM.

Batched: m (prompt, response) pairs are length-sorted into chunks of ``batch_size`` rows,
left-padded, and the LM's head is applied only to the last :math:`R+1` positions of a chunk
(R its longest response) when the model takes ``logits_to_keep``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from ..rewards._pairs import padded_batches

__all__ = ["FluencyScorer", "FluencyScores"]


class FluencyScores(NamedTuple):
    """Per-response fluency of m responses (all float64 / long, on CPU).

    Attributes:
        mean_logprob: (m,) :math:`\\frac1L\\sum_t \\log q(y_t|\\cdot)`; NaN where L = 0.
        sum_logprob: (m,) :math:`\\sum_t \\log q(y_t|\\cdot)` (0 where L = 0).
        num_tokens: (m,) L, the number of scored response tokens.
    """

    mean_logprob: torch.Tensor
    sum_logprob: torch.Tensor
    num_tokens: torch.Tensor

    def to_lists(self) -> dict[str, list]:
        return {k: getattr(self, k).tolist() for k in self._fields}


class FluencyScorer:
    r"""Mean per-token log-likelihood of responses given prompts under a held-out causal LM.

    Args:
        model: a ``transformers`` causal LM (any architecture; eval mode is set).
        tokenizer: its tokenizer.
        chat_template: wrap a string prompt as one user turn in the tokenizer's chat template
            (True), use the raw prompt text (False), or decide by whether the tokenizer has a
            template (None). A prompt given as chat messages always needs a template.
        system_prompt: a system turn put before a string prompt when the template is used.
        batch_size: rows per forward pass. The head's output is batch_size × (R+1) × V floats
            (V the vocabulary: 49,152 for SmolLM2, 262,144 for Gemma 3), so keep it modest.
        max_length: longest input in tokens (default: the model's / tokenizer's limit, ≤ 4096);
            longer inputs lose context tokens from the left first, then response tokens from
            the right (those are then not scored).

    The response is tokenised on its own (no special tokens) and appended to the context's
    tokens, so the scored tokens are exactly the response's tokens under this tokenizer. A
    context that tokenises to nothing (raw empty prompt, no BOS) is given the BOS (else EOS)
    token so that the first response token is scored too.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        chat_template: bool | None = None,
        system_prompt: str | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        has = bool(getattr(tokenizer, "chat_template", None))
        if chat_template and not has:
            raise ValueError("chat_template=True but the fluency tokenizer has no chat template")
        self.chat_template = has if chat_template is None else bool(chat_template)
        self.system_prompt = system_prompt
        self.batch_size = int(batch_size)
        if max_length is None:
            limits = [4096]
            for v in (getattr(tokenizer, "model_max_length", None),
                      getattr(model.config, "max_position_embeddings", None)):
                if isinstance(v, int) and 0 < v < 1_000_000:
                    limits.append(v)
            max_length = min(limits)
        if int(max_length) < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.max_length = int(max_length)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            params = {}
        self._takes_positions = "position_ids" in params
        self._keep = "logits_to_keep" in params

    @classmethod
    def packaged(cls, name: str, *, device: str | torch.device = "cpu", **kw: Any) -> FluencyScorer:
        """A scorer on a packaged model (:func:`ctrlalign.models.load_packaged`), e.g. ``"gemma3-270m"``."""
        from ..models import load_packaged

        model, tok = load_packaged(name, device=device)
        return cls(model, tok, **kw)

    # ---------------------------------------------------------------- tokens
    def context_ids(self, prompt: Any) -> list[int]:
        """Token ids of c(x): the chat-templated user turn + generation prompt, or the raw text."""
        tok = self.tokenizer
        is_chat = isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt)
        if isinstance(prompt, dict):
            from ..rewards.base import prompt_text

            prompt = prompt_text(prompt)
        if is_chat and not self.chat_template:
            raise ValueError("a prompt given as chat messages needs the fluency LM's chat template")
        if self.chat_template:
            if is_chat:
                messages = list(prompt)
            else:
                messages = [{"role": "user", "content": str(prompt)}]
                if self.system_prompt is not None:
                    messages.insert(0, {"role": "system", "content": self.system_prompt})
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = list(tok(text, add_special_tokens=False)["input_ids"])  # the template has its specials
        else:
            ids = list(tok(str(prompt), add_special_tokens=True)["input_ids"])
        if not ids:
            start = getattr(tok, "bos_token_id", None)
            if start is None:
                start = getattr(tok, "eos_token_id", None)
            if start is not None:
                ids = [int(start)]
        return ids

    def response_ids(self, response: str) -> list[int]:
        """Token ids of y under the fluency tokenizer (no special tokens)."""
        return list(self.tokenizer(str(response), add_special_tokens=False)["input_ids"])

    def encode(self, prompt: Any, response: str) -> tuple[list[int], int]:
        """``(ids, L)``: context + response ids (cut to ``max_length``) and the number L of
        response tokens at their end that are scored (each has at least one token before it)."""
        ctx, resp = self.context_ids(prompt), self.response_ids(response)
        room = self.max_length - len(resp)
        if room < 1:  # the response alone is too long: keep one context token, cut the response
            ctx = ctx[-1:]
            resp = resp[: self.max_length - len(ctx)]
        elif len(ctx) > room:
            ctx = ctx[-room:]
        L = len(resp) if ctx else max(len(resp) - 1, 0)
        return ctx + resp, L

    # ---------------------------------------------------------------- scores
    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> FluencyScores:
        r"""Fluency of m (prompt, response) pairs: ``prompts[i]`` is the prompt of ``responses[i]``.

        A single prompt (a string) is used for every response. Returns :class:`FluencyScores`
        of shape (m,).
        """
        responses = [str(r) for r in responses]
        m = len(responses)
        if isinstance(prompts, (str, dict)):
            prompts = [prompts] * m
        prompts = list(prompts)
        if len(prompts) != m:
            raise ValueError(f"{len(prompts)} prompts for {m} responses")
        seqs, lens = [], []
        for p, r in zip(prompts, responses):
            ids, L = self.encode(p, r)
            seqs.append(ids)
            lens.append(L)
        sums = torch.zeros(m, dtype=torch.float64)
        counts = torch.tensor(lens, dtype=torch.long)
        dev = next(self.model.parameters()).device
        todo = [k for k in range(m) if lens[k] > 0]
        for chunk_local, ids, mask in padded_batches([seqs[k] for k in todo], self.batch_size,
                                                     self.pad_id, left=True):
            chunk = [todo[j] for j in chunk_local]
            r = torch.tensor([lens[k] for k in chunk])  # (c,) response lengths
            R = int(r.max())
            kwargs: dict[str, Any] = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev)}
            if self._takes_positions:
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0).to(dev)
            if self._keep:
                kwargs["logits_to_keep"] = R + 1
            logits = self.model(**kwargs).logits[:, -(R + 1) : -1].float()  # (c, R, V)
            target = ids[:, -R:].to(dev)  # (c, R): the tokens those positions predict
            lp = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
            keep = torch.arange(R).unsqueeze(0) >= (R - r).unsqueeze(1)  # (c, R) response positions
            sums[torch.tensor(chunk)] = torch.where(keep, lp.double().cpu(), 0.0).sum(-1)  # pads may be NaN
        mean = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
        return FluencyScores(mean, sums, counts)

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> torch.Tensor:
        """The mean log-probabilities (m,) of :meth:`score`."""
        return self.score(prompts, responses).mean_logprob
