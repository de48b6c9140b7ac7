"""Extending: your own rollout Engine — the eager engine, counting what it decodes.

An engine is the part of :class:`ctrlalign.CausalLM` that runs the model: ``prefill`` the D
prompts once, ``start`` B = D·n rows, ``advance`` them b tokens at a time under controls (D, n, b, d)
and ``select`` rows (resampling, forking). ``CountingEngine`` delegates all four to an
:class:`~ctrlalign.dynamics.engines.eager.EagerEngine` and counts the decode steps (b per
``advance``) and the row-tokens decoded (b·B per ``advance``). One registration,
``register_engine("counting", CountingEngine)``, makes it available as
``CausalLM(..., engine="counting")``.

``tests/test_examples.py`` runs the engine checks of ``tests/test_stepwise.py`` on it (blocks
equal the one-shot rollout bit for bit, ``select``, forks, finished rows, log q = log p without
control) on a tiny random model, and checks that ``align`` decodes exactly k·T tokens per row.

Run: ``python examples/custom_engine.py`` (the packaged SmolLM2; ``--quick`` for a short run)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

import ctrlalign as ca
from ctrlalign.dynamics.base import Step
from ctrlalign.dynamics.decoding import SamplingConfig
from ctrlalign.dynamics.engines import EagerEngine, Engine, EngineState, register_engine
from ctrlalign.models import load_model


# --8<-- [start:CountingEngine]
class CountingEngine(Engine):
    """The eager engine, counting what it decodes.

    Args:
        model: a ``transformers`` causal LM.
        **options: the eager engine's options (``batch_invariant``).

    Attributes:
        decode_steps: Σ b over ``advance`` calls (one decode step advances every row one token).
        row_tokens: Σ b·B, tokens decoded over all rows.
    """

    def __init__(self, model: Any, **options: Any) -> None:
        self.inner = EagerEngine(model, **options)
        self.hidden_size = self.inner.hidden_size  # d
        self.head = self.inner.head  # CausalLM uses the engine's output head, not a second one
        self.decode_steps = 0
        self.row_tokens = 0

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """(D, L) left-padded ids and mask → the eager engine's prefix."""
        return self.inner.prefill(input_ids, attention_mask)

    def start(self, prefix: Any, num_samples: int, config: SamplingConfig, **kw: Any) -> EngineState:
        """B = D·n rows at t = 0."""
        return self.inner.start(prefix, num_samples, config, **kw)

    def advance(self, state: EngineState, controls: torch.Tensor | None,
                uniforms: torch.Tensor) -> tuple[EngineState, Step]:
        """b = uniforms.shape[2] more tokens for every row, counted."""
        D, n, b = uniforms.shape
        self.decode_steps += b
        self.row_tokens += b * D * n
        return self.inner.advance(state, controls, uniforms)

    def select(self, state: EngineState, rows: torch.Tensor) -> EngineState:
        """Rows (D, n') continuing the named rows."""
        return self.inner.select(state, rows)


register_engine("counting", CountingEngine)  # CausalLM(..., engine="counting") builds CountingEngine(model)
# --8<-- [end:CountingEngine]


def main(out: Path | None = None, quick: bool = False, model: Any = None, tokenizer: Any = None,
         num_samples: int = 8, num_iterations: int = 4, max_new_tokens: int = 24) -> dict:
    """Best-of-N and AISP through the counting engine; returns the counts and the rewards.

    ``model``/``tokenizer``: a model to use instead of the packaged default (the tests pass a
    tiny random one)."""
    if quick:
        num_samples, num_iterations, max_new_tokens = 4, 2, 8
    if model is None:
        model, tokenizer = load_model("default")
    # --8<-- [start:use]
    lm = ca.CausalLM(model, tokenizer, sampling=ca.SamplingConfig(max_new_tokens=max_new_tokens), engine="counting")
    # --8<-- [end:use]
    reward = ca.LexiconSentiment()
    prompts = ["Describe the sea.", "Write about a river."]
    rows = {}
    for ctrl in (ca.BestOfN(num_samples=num_samples, num_iterations=num_iterations, sigma=0.0),
                 ca.AISP(num_samples=num_samples, num_iterations=num_iterations, sigma=0.5, target_ess=0.5)):
        before = lm.engine.decode_steps, lm.engine.row_tokens
        res = ca.align(lm, reward, ctrl, prompts, space=ca.Shared(), seed=0)
        steps, tokens = lm.engine.decode_steps - before[0], lm.engine.row_tokens - before[1]
        rows[ctrl.name] = {"decode_steps": steps, "row_tokens": tokens, "rewards": res.rewards.tolist(),
                           "texts": res.texts}
        print(f"{ctrl.name:<5} {steps} decode steps, {tokens} row-tokens "
              f"(k·T = {num_iterations}·{max_new_tokens}; ×D·n = {len(prompts)}·{num_samples})")
    return {"T": max_new_tokens, "k": num_iterations, "n": num_samples, "D": len(prompts), "runs": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="unused (no plot); accepted for uniformity")
    ap.add_argument("--quick", action="store_true", help="n = 4, k = 2, T = 8")
    args = ap.parse_args()
    main(args.out, args.quick)
