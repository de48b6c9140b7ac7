"""The README's main job keeps a response that reads like text (slow: the real default model).

``ctrlalign align PROMPT`` with no other flag, on the README's prompt and eight others: the kept
response's distinct-2 ratio (unique word bigrams / bigrams) is at least the plain model's minus
0.1, prompt by prompt. Degenerate repetition ("a day of great adventure, a day of great love, and
a day of great food, ...": distinct-2 ≈ 0.5 against the plain answer's ≈ 1.0) fails it. Only a
drop counts: a kept response more varied than the plain one is fine.
"""

from __future__ import annotations

import pytest

from ctrlalign.bench.diversity import distinct_n
from ctrlalign.cli import align_config, build_parser
from ctrlalign.runner import run
from ctrlalign.store import read_results

README_PROMPT = "Write one sentence about your weekend."
OTHERS = [
    "Describe a city at night.",
    "Give me a tip for learning to cook.",
    "What makes a good friend?",
    "Write a short note to a neighbour about a lost cat.",
    "Explain why the sky is blue in two sentences.",
    "Suggest a name for a coffee shop and say why.",
    "Tell me about your favourite season.",
    "Write one sentence about a rainy morning.",
]
#: how far below the plain model's distinct-2 ratio the kept response may fall
TOLERANCE = 0.1


def degenerate(kept: str, plain: str) -> bool:
    """Whether the kept response repeats word bigrams markedly more than the plain one."""
    return distinct_n(kept, 2) < distinct_n(plain, 2) - TOLERANCE


def test_degenerate_flags_the_repetition_the_readme_showed():
    """Power: the check fails the response the learning preset kept on the README prompt."""
    looped = ("A day of great adventure, a day of great love, and a day of great food, a day of great "
              "freedom, and a day of great love,")
    plain = "I spent my weekend hiking with friends and cooking a big dinner on Sunday evening."
    assert degenerate(looped, plain)
    assert not degenerate(plain, plain)


@pytest.mark.slow
def test_default_align_keeps_text_as_varied_as_the_plain_model(tmp_path):
    args = build_parser().parse_args(["align", README_PROMPT, "--output", str(tmp_path / "out.jsonl")])
    cfg = align_config(args)
    cfg = cfg.model_copy(update={"prompts": [README_PROMPT, *OTHERS]})
    records = read_results(run(cfg, progress=False))
    assert len(records) == 1 + len(OTHERS)
    bad = [(r["prompt"], r["response"], r["base_response"]) for r in records
           if degenerate(r["response"], r["base_response"])]
    assert not bad, f"kept responses more repetitive than the plain model's (distinct-2 − {TOLERANCE}): {bad}"
