"""A shared base for rewards that score (prompt, response) text pairs with their own tokenizer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..dynamics.base import Outcomes
from ._text import encode_keep_response, render
from .base import Reward, prompt_text, response_texts

__all__ = ["PairScorer", "padded_batches"]


def padded_batches(
    sequences: Sequence[list[int]], batch_size: int, pad_id: int, *, left: bool
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Length-sorted chunks of token-id sequences, padded to the chunk's longest.

    Yields:
        (indices into ``sequences``, ids (c, T) long, attention mask (c, T) long); padding on
        the left (``left=True``, for a causal LM read at its last position) or the right.
    """
    order = sorted(range(len(sequences)), key=lambda k: -len(sequences[k]))
    for a in range(0, len(order), batch_size):
        chunk = order[a : a + batch_size]
        T = max(len(sequences[k]) for k in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for row, k in enumerate(chunk):
            seq = torch.tensor(sequences[k], dtype=torch.long)
            span = slice(T - len(seq), T) if left else slice(0, len(seq))
            ids[row, span] = seq
            mask[row, span] = 1
        yield chunk, ids, mask


class PairScorer(Reward):
    """Scores (prompt, response) pairs: render → tokenise (keeping the response) → score.

    Subclasses provide ``_setup()`` (lazy loading; sets ``tokenizer``, ``max_length``,
    ``_template``), ``_build(prompt, response) -> str``, ``score_ids(sequences) -> (N,)``,
    ``_warn_truncate(message)`` and the text ``_truncation_message``.
    """

    _truncation_message = "an input"

    def encode(self, prompt: Any, response: str) -> list[int]:
        """Token ids (the scorer's own vocabulary) of one (prompt, response) pair, truncated:
        the prompt is cut from its left first, the response (from its right) only when no
        prompt is left."""
        self._setup()
        text, pspan, rspan = render(prompt_text(prompt), response, self._build)
        # A rendered chat template already holds its special tokens (BOS, role markers).
        ids, truncated = encode_keep_response(
            self.tokenizer, text, pspan, rspan, self.max_length,
            add_special_tokens=not bool(self._template),
        )
        if truncated:
            self._warn_truncate(
                f"reward {self.name!r}: {self._truncation_message} exceeded max_length="
                f"{self.max_length} tokens and was truncated: the prompt is cut from its left "
                "first, the response (from its right) only when no prompt is left. "
                "This warning is shown once."
            )
        return ids

    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        """(D, n) scores of every (prompt, response) pair."""
        texts = response_texts(outcomes, f"reward {self.name!r}")
        self._setup()
        D, n = outcomes.num_prompts, outcomes.num_samples
        seqs = [self.encode(prompts[d], texts[d][i]) for d in range(D) for i in range(n)]
        return self.score_ids(seqs).reshape(D, n)
