"""Text rendering and response-preserving tokenisation for rewards with their own tokenizer.

A reward model sees a string built from a prompt and a response (a chat template, a plain
join, a judge question). :func:`render` builds that string and records where the prompt and the
response sit in it; :func:`encode_keep_response` tokenises it with the reward model's tokenizer
and, when it is too long, truncates in this order (the *truncation policy*):

1. tokens of the **prompt** are dropped from its left (its beginning), keeping the template
   text around it (system header, role markers, the judge's instructions);
2. only when the prompt is used up, tokens of the **response** are dropped from its right;
3. only when both are used up, the remaining template tokens are cut from the left.

Special tokens added by the tokenizer itself (BOS, CLS, SEP, EOS) are never dropped in steps
1–2, so a classifier that reads its score at the last token still sees the end-of-turn marker.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

_P = "\u0000\u2063PROMPT\u2063\u0000"
_R = "\u0000\u2063RESPONSE\u2063\u0000"

Span = tuple[int, int]


def render(
    prompt: str,
    response: str,
    build: Callable[[str, str], str],
) -> tuple[str, Span | None, Span | None]:
    """Render ``build(prompt, response)`` and locate both parts in the result.

    ``build`` is called once with sentinel strings in place of the prompt and the response;
    the sentinels are then replaced by the real texts, so the spans are exact even when the
    prompt text also occurs inside the response. If a template drops or alters a sentinel, the
    text is rendered directly and the missing span is None (then truncation falls back to
    cutting from the left).

    Returns:
        (text, prompt_span, response_span) with spans as [start, end) character offsets.
    """
    skeleton = build(_P, _R)
    if skeleton.count(_P) != 1 or skeleton.count(_R) != 1:
        text = build(prompt, response)
        r0 = text.rfind(response) if response else -1
        rspan = (r0, r0 + len(response)) if r0 >= 0 and response else None
        p0 = text.find(prompt) if prompt else -1
        pspan = (p0, p0 + len(prompt)) if p0 >= 0 and prompt and (rspan is None or p0 + len(prompt) <= rspan[0]) else None
        return text, pspan, rspan
    parts: list[str] = []
    spans: dict[str, Span] = {}
    rest = skeleton
    pos = 0
    while rest:
        ip, ir = rest.find(_P), rest.find(_R)
        cands = [(i, s) for i, s in ((ip, _P), (ir, _R)) if i >= 0]
        if not cands:
            parts.append(rest)
            break
        i, s = min(cands)
        parts.append(rest[:i])
        pos += i
        real = prompt if s == _P else response
        spans["p" if s == _P else "r"] = (pos, pos + len(real))
        parts.append(real)
        pos += len(real)
        rest = rest[i + len(s):]
    return "".join(parts), spans.get("p"), spans.get("r")


def _region(start: int, end: int, pspan: Span | None, rspan: Span | None) -> str:
    if end <= start:
        return "special"
    if rspan is not None and rspan[0] <= start < rspan[1]:
        return "response"
    if pspan is not None and pspan[0] <= start < pspan[1]:
        return "prompt"
    return "template"


def encode_keep_response(
    tokenizer: Any,
    text: str,
    pspan: Span | None,
    rspan: Span | None,
    max_length: int | None,
    *,
    add_special_tokens: bool = True,
) -> tuple[list[int], bool]:
    """Token ids of ``text``, at most ``max_length`` of them, truncated by the module's policy.

    Untruncated texts are tokenised exactly as ``tokenizer(text)`` would. With a fast tokenizer
    every token is assigned to the prompt, the response, the template or the tokenizer's
    special tokens through its character offsets. With a slow tokenizer (no offsets) the text is
    tokenised in pieces (template / prompt / template / response / template) when it must be
    truncated, which can change tokens at the piece boundaries.

    Returns:
        (ids, truncated).
    """
    enc = None
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
    else:
        ids = list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        offsets = None
    if max_length is None or len(ids) <= max_length:
        return ids, False

    if offsets is not None:
        regions = [_region(s, e, pspan, rspan) for s, e in offsets]
    else:
        # Slow tokenizer: tokenise piece by piece so each token's region is known.
        bounds = sorted({0, len(text), *(pspan or ()), *(rspan or ())})
        ids, regions = [], []
        for a, b in zip(bounds[:-1], bounds[1:]):
            piece_ids = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
            ids.extend(piece_ids)
            regions.extend([_region(a, b, pspan, rspan)] * len(piece_ids))
        if add_special_tokens and hasattr(tokenizer, "build_inputs_with_special_tokens"):
            full = tokenizer.build_inputs_with_special_tokens(ids)
            # find where ids sit inside full: special tokens are added around them
            for k in range(len(full) - len(ids) + 1):
                if full[k : k + len(ids)] == ids:
                    regions = ["special"] * k + regions + ["special"] * (len(full) - k - len(ids))
                    ids = list(full)
                    break
        if len(ids) <= max_length:
            return ids, True

    excess = len(ids) - max_length
    keep = [True] * len(ids)
    # 1. the prompt, from its left
    for k, reg in enumerate(regions):
        if excess == 0:
            break
        if reg == "prompt":
            keep[k] = False
            excess -= 1
    # 2. the response, from its right
    for k in range(len(ids) - 1, -1, -1):
        if excess == 0:
            break
        if regions[k] == "response":
            keep[k] = False
            excess -= 1
    # 3. whatever is left, from the left (special tokens last)
    for pass_special in (False, True):
        for k, reg in enumerate(regions):
            if excess == 0:
                break
            if keep[k] and (reg == "special") == pass_special:
                keep[k] = False
                excess -= 1
    return [t for t, kk in zip(ids, keep) if kk], True


class WarnOnce:
    """Emit a warning the first time only (per instance)."""

    def __init__(self) -> None:
        self.done = False

    def __call__(self, message: str) -> None:
        if not self.done:
            self.done = True
            warnings.warn(message, stacklevel=3)


def resolve_max_length(tokenizer: Any, config: Any, max_length: int | None, fallback: int = 2048) -> int:
    """``max_length`` if given, else the smaller of the tokenizer's and the model's limits."""
    if max_length is not None:
        return int(max_length)
    limits = []
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 1_000_000:
        limits.append(tml)
    mpe = getattr(config, "max_position_embeddings", None)
    if isinstance(mpe, int) and mpe > 0:
        limits.append(mpe)
    return min(limits) if limits else fallback


def ensure_pad_token(tokenizer: Any, model: Any | None = None) -> int:
    """Give ``tokenizer`` a pad token if it has none (EOS, else UNK, else id 0) and tell the model.

    Returns the pad token id. Padding positions are masked, so which token pads does not
    change any score; sequence classifiers that locate the last token through
    ``config.pad_token_id`` get it set to the same id.
    """
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        for attr in ("eos_token", "unk_token"):
            tok = getattr(tokenizer, attr, None)
            if tok is not None:
                tokenizer.pad_token = tok
                pad_id = tokenizer.pad_token_id
                break
    if pad_id is None:
        pad_id = 0
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_id
    return int(pad_id)
