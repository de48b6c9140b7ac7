r"""How far one model's next-token law is from another's along the same text: the check behind a
lower-precision model (bfloat16 against float32).

Along a continuation y of each prompt x, sampled from model a (``new_tokens`` tokens, plain
sampling), the total-variation distance at every position t = 1..T

.. math:: \mathrm{TV}_t = \tfrac12\,\big\lVert \mathrm{softmax}(\ell^a_t) - \mathrm{softmax}(\ell^b_t)\big\rVert_1,
          \qquad \ell_t = \text{the logits for } y_t \text{ given } x, y_{<t},

and, as a yardstick of a change a user would notice, the same distance between model a at
temperature 1 and at temperature ``yardstick_temperature``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["continuation_tv", "next_token_tv"]


def next_token_tv(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """(positions,) TV distance between softmax(a) and softmax(b), rows of (positions, V), in float32."""
    return 0.5 * (torch.softmax(logits_a.float(), -1) - torch.softmax(logits_b.float(), -1)).abs().sum(-1)


def continuation_tv(model_a: Any, model_b: Any, tokenizer: Any, prompts: Sequence[str], new_tokens: int,
                    yardstick_temperature: float = 1.1) -> tuple[torch.Tensor, torch.Tensor]:
    """TV_t between two causal LMs' next-token laws along model a's sampled continuations.

    Args:
        model_a: a ``transformers`` causal LM; it samples the continuations.
        model_b: a causal LM on the same tokenizer, compared with ``model_a`` along them.
        tokenizer: their tokenizer (with a chat template: each prompt is one user message).
        prompts: the prompts; prompt k's continuation is sampled after ``torch.manual_seed(k)``.
        new_tokens: T, tokens per continuation (EOS not allowed to stop it early).
        yardstick_temperature: the temperature of the yardstick distance.

    Returns:
        ``(tv, yardstick)``, each (len(prompts)·T,) float32: TV_t between a and b, and between a at
        temperature 1 and at ``yardstick_temperature``.
    """
    tv, yard = [], []
    for k, prompt in enumerate(prompts):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        torch.manual_seed(k)
        with torch.inference_mode():
            seq = model_a.generate(ids, do_sample=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                   top_k=0, top_p=1.0, pad_token_id=tokenizer.eos_token_id)
            start = ids.shape[1]
            la = model_a(seq).logits[0, start - 1:-1].float()
            lb = model_b(seq).logits[0, start - 1:-1]
        tv.append(next_token_tv(la, lb))
        yard.append(next_token_tv(la, la / yardstick_temperature))
    return torch.cat(tv), torch.cat(yard)
