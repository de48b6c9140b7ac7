"""Rewards: batched scores of outcomes, shape (D, n)."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import torch

from .._checks import RewardError
from ..dynamics.base import Outcomes

__all__ = ["Reward", "CallableReward", "WeightedSum"]


class Reward(ABC):
    """Maps (prompts, outcomes) to rewards of shape (D, n); higher is better.

    Subclasses override :meth:`__call__`. Rewards compose: ``2.0 * a + b - 0.5 * c`` is a
    :class:`WeightedSum`. A reward with its own tokenizer must re-tokenise ``outcomes.texts``;
    never assume the policy's vocabulary.
    """

    #: short name used in traces and result files.
    name: str = "reward"

    @abstractmethod
    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        """Score D prompts × n outcomes.

        Args:
            prompts: the D prompts.
            outcomes: :class:`~ctrlalign.dynamics.base.Outcomes` with D × n samples.

        Returns:
            (D, n) float tensor of finite rewards.
        """

    def __add__(self, other: "Reward") -> "WeightedSum":
        return WeightedSum([(1.0, self), (1.0, other)])

    def __sub__(self, other: "Reward") -> "WeightedSum":
        return WeightedSum([(1.0, self), (-1.0, other)])

    def __mul__(self, weight: float) -> "WeightedSum":
        return WeightedSum([(float(weight), self)])

    __rmul__ = __mul__

    def __neg__(self) -> "WeightedSum":
        return WeightedSum([(-1.0, self)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class WeightedSum(Reward):
    r"""Σ_j c_j r_j: a weighted sum of rewards, e.g. helpfulness traded against a penalty."""

    def __init__(self, terms: Sequence[tuple[float, Reward]]):
        flat: list[tuple[float, Reward]] = []
        for c, r in terms:
            if not isinstance(r, Reward):
                raise TypeError(f"WeightedSum terms must be Reward instances, got {type(r).__name__}")
            if isinstance(r, WeightedSum):
                flat.extend((c * c2, r2) for c2, r2 in r.terms)
            else:
                flat.append((float(c), r))
        if not flat:
            raise ValueError("WeightedSum needs at least one term")
        self.terms = flat
        self.name = " + ".join(f"{c:g}*{r.name}" for c, r in flat)

    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        total = None
        for c, r in self.terms:
            v = torch.as_tensor(r(prompts, outcomes), dtype=torch.float32)
            total = c * v if total is None else total + c * v
        return total


class CallableReward(Reward):
    """Wrap a Python callable as a reward.

    Two forms are accepted:

    * ``batched=False`` (default): ``fn(prompt, sample) -> float`` called once per sample,
      where ``sample`` is a :class:`~ctrlalign.dynamics.base.Sample` (use ``sample.text``
      for language models, ``sample.value`` for toy systems). If ``fn`` takes a ``str``
      annotation or is called ``text_fn=True``, it receives ``(prompt, text)`` instead.
    * ``batched=True``: ``fn(prompts, outcomes) -> (D, n)``.
    """

    def __init__(self, fn: Callable[..., Any], *, batched: bool = False, texts: bool | None = None,
                 name: str | None = None):
        if not callable(fn):
            raise TypeError(f"CallableReward needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.batched = batched
        if texts is None:
            texts = False
            try:
                params = list(inspect.signature(fn).parameters.values())
                if len(params) >= 2 and params[1].annotation in (str, "str"):
                    texts = True
            except (TypeError, ValueError):
                pass
        self.texts = texts
        self.name = name or getattr(fn, "__name__", "callable")

    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        if self.batched:
            return torch.as_tensor(self.fn(prompts, outcomes), dtype=torch.float32)
        D, n = outcomes.num_prompts, outcomes.num_samples
        out = torch.empty(D, n, dtype=torch.float32)
        for d in range(D):
            for i in range(n):
                if self.texts and outcomes.texts is None:
                    raise ValueError(f"reward {self.name!r} wants texts but the outcomes have none")
                arg = outcomes.texts[d][i] if self.texts else outcomes.sample(d, i)
                try:
                    out[d, i] = float(self.fn(prompts[d], arg))
                except Exception as exc:
                    raise RewardError(
                        f"reward {self.name!r} raised {type(exc).__name__}: {exc} "
                        f"at prompt {d}, sample {i}"
                    ) from exc
        return out
