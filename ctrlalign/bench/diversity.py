r"""Text diversity of responses.

* :func:`distinct_n`, :func:`diversity`: the distinct-n-gram ratio and a pooled diversity
  :math:`\prod_{n=2}^{4} \text{distinct-}n` (lower-cased words, n-grams pooled over the texts).
* :func:`paper_diversity`: the published protocol's diversity (RE-Control / ARGS evaluation
  script): per response :math:`\prod_{n=2}^{4} u_n/(g_n+1)` over punctuation-split tokens,
  then the mean over responses.

Plain functions of strings, tested against hand-computed values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "distinct_n",
    "diversity",
    "ngrams",
    "paper_diversity",
    "paper_diversity_one",
    "paper_tokens",
    "tokenize_words",
]


def tokenize_words(text: str) -> list[str]:
    """Lower-cased whitespace tokens (the unit of the distinct-n-gram ratios)."""
    return str(text).lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of a token list (empty when it is shorter than n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: str | Iterable[str], n: int) -> float:
    """Distinct-n ratio: unique n-grams / total n-grams, pooled over ``texts``.

    A single string is one text. Tokens are :func:`tokenize_words`. Returns 0.0 when there
    are no n-grams at all (every text shorter than n words).
    """
    if isinstance(texts, str):
        texts = [texts]
    grams: list[tuple[str, ...]] = []
    for t in texts:
        grams.extend(ngrams(tokenize_words(t), n))
    if not grams:
        return 0.0
    return len(set(grams)) / len(grams)


def diversity(texts: str | Iterable[str], orders: Sequence[int] = (2, 3, 4)) -> float:
    r"""RE-Control's diversity :math:`\prod_{n\in\text{orders}} \text{distinct-}n` (default n = 2..4).

    Over one text it measures repetition inside the response (1 = no repeated n-gram); over
    several texts (pooled) it also measures how different they are from each other.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    out = 1.0
    for n in orders:
        out *= distinct_n(texts, n)
    return out


_PAPER_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def paper_tokens(text: str) -> list[str]:
    r"""Tokens of :func:`paper_diversity`: words (with inner apostrophes) and single punctuation marks.

    Case is kept. This stands in for NLTK's ``word_tokenize`` of the published script (which
    needs NLTK's punkt data, not available offline); it agrees on ordinary prose except for
    contractions (``"don't"`` is one token here, ``"do"`` + ``"n't"`` there) and runs of
    punctuation (``"..."`` is three tokens here, one there).
    """
    return _PAPER_TOKEN.findall(str(text))


def paper_diversity_one(text: str, orders: Sequence[int] = (2, 3, 4)) -> float:
    r"""Diversity of one response in the published protocol: :math:`\prod_{n} u_n / (g_n + 1)`.

    :math:`g_n` is the number of n-grams of the response's :func:`paper_tokens` (L tokens give
    :math:`g_n = \max(L-n+1, 0)`) and :math:`u_n` the number of distinct ones. The +1 in the
    denominator is the published script's (RE-Control ``metrics.py``, from ARGS): it makes the
    value defined for empty or short responses (0 then) and slightly below 1 even without any
    repetition, e.g. 3 distinct tokens give :math:`\tfrac{2}{3}\cdot\tfrac{1}{2}\cdot 0 = 0`
    and 5 give :math:`\tfrac45\cdot\tfrac34\cdot\tfrac23 = 0.4`.
    """
    toks = paper_tokens(text)
    out = 1.0
    for n in orders:
        grams = ngrams(toks, n)
        out *= len(set(grams)) / (len(grams) + 1)
    return out


def paper_diversity(texts: str | Iterable[str], orders: Sequence[int] = (2, 3, 4)) -> float:
    r"""The published protocol's diversity of a set of responses: the mean of :func:`paper_diversity_one`.

    .. math:: \mathrm{div}(y_{1..m}) = \frac1m \sum_{i=1}^{m} \prod_{n=2}^{4}
              \frac{|\mathrm{unique}\ n\text{-grams}(y_i)|}{|n\text{-grams}(y_i)| + 1}

    It differs from :func:`diversity` (kept for the earlier tables) in three ways: it is a mean
    of per-response values (so it measures repetition *inside* responses, never how different
    responses are from each other), its denominators carry the +1, and its tokens keep case and
    split off punctuation (:func:`paper_tokens`). On m texts: m values, one mean.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("paper_diversity needs at least one text")
    return float(np.mean([paper_diversity_one(t, orders) for t in texts]))
