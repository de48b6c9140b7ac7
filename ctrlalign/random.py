"""Per-prompt random generators, so that a prompt's results never depend on its batch.

Each prompt owns three ``torch.Generator`` streams seeded from (seed, the prompt's content):
the controller's Gaussian noise, the dynamics' sampling, and the controller's selection. A prompt solved
alone, or inside any batch, at any position, sees the same random numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["PromptGenerators", "make_generators", "prompt_key", "prompt_seed"]


class PromptGenerators(NamedTuple):
    """The three random streams owned by one prompt.

    Attributes:
        control: the controller's Gaussian noise ε (identical across controllers).
        rollout: the dynamics' own sampling (token uniforms).
        select: the controller's other randomness (softmax sampling's resampling), kept
            apart so that it never shifts the noise stream.
    """

    control: torch.Generator
    rollout: torch.Generator
    select: torch.Generator


def prompt_key(prompt: Any) -> bytes:
    """Canonical bytes identifying a prompt: UTF-8 for text, raw float64 bytes for arrays."""
    if isinstance(prompt, str):
        return b"s:" + prompt.encode("utf-8")
    if isinstance(prompt, torch.Tensor):
        arr = prompt.detach().to("cpu", torch.float64).contiguous().numpy()
        return b"t:" + repr(arr.shape).encode() + arr.tobytes()
    if isinstance(prompt, np.ndarray):
        arr = np.ascontiguousarray(prompt, dtype=np.float64)
        return b"t:" + repr(arr.shape).encode() + arr.tobytes()
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
        return b"c:" + repr([sorted(m.items()) for m in prompt]).encode("utf-8")
    return b"r:" + repr(prompt).encode("utf-8")


def prompt_seed(seed: int, prompt: Any, stream: int = 0) -> int:
    """A 63-bit seed derived from (seed, prompt content, stream index) with SHA-256."""
    h = hashlib.sha256()
    h.update(int(seed).to_bytes(16, "little", signed=True))
    h.update(int(stream).to_bytes(4, "little"))
    h.update(prompt_key(prompt))
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


def make_generators(
    seed: int, prompts: Sequence[Any], device: torch.device | str = "cpu"
) -> list[PromptGenerators]:
    """One :class:`PromptGenerators` per prompt, on ``device``."""
    out = []
    for p in prompts:
        gens = []
        for stream in (0, 1, 2):
            g = torch.Generator(device=device)
            g.manual_seed(prompt_seed(seed, p, stream))
            gens.append(g)
        out.append(PromptGenerators(*gens))
    return out
