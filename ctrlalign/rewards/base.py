r"""Rewards: batched scores of outcomes, shape (D, n), of whole responses and of partial ones.

A reward scores finished responses (:meth:`Reward.__call__`) and, for closed-loop controllers
that act on partial responses (SMC, speculative rejection), *prefixes*
(:meth:`Reward.prefix`): outcomes whose texts and tokens are the responses so far,
:math:`r(x, y_{1:t})`. By default a prefix is scored like a finished response — the reward of
the text so far. A reward that cannot score prefixes says so with ``scores_prefixes = False``;
closed-loop controllers then refuse it (:func:`require_prefix_scores`) instead of silently
scoring nonsense.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._checks import ConfigError, RewardError, check_rewards, real_number_type
from ..dynamics.base import Outcomes

__all__ = [
    "CallableReward",
    "Reward",
    "WeightedSum",
    "evaluate_reward",
    "gather_samples",
    "prompt_label",
    "prompt_text",
    "require_prefix_scores",
    "response_texts",
    "safe_call",
    "select_outcomes",
]


class Reward(ABC):
    """Maps (prompts, outcomes) to rewards of shape (D, n); higher is better.

    Subclasses override :meth:`__call__`. Rewards compose: ``2.0 * a + b - 0.5 * c`` is a
    :class:`WeightedSum`. A reward with its own tokenizer must re-tokenise ``outcomes.texts``;
    never assume the policy's vocabulary.
    """

    #: short name used in traces and result files.
    name: str = "reward"
    #: whether :meth:`prefix` scores partial responses (closed-loop controllers need it)
    scores_prefixes: bool = True

    @abstractmethod
    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        """Score D prompts × n outcomes.

        Args:
            prompts: the D prompts.
            outcomes: :class:`~ctrlalign.dynamics.base.Outcomes` with D × n samples.

        Returns:
            (D, n) float tensor of finite rewards.
        """

    def prefix(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        r"""Score D prompts × n *partial* responses :math:`r(x, y_{1:t})` (texts and tokens so far).

        Override when a prefix needs other treatment than a finished response (a process
        reward, a value model); the default is the reward of the text so far,
        ``self(prompts, outcomes)``.

        Returns:
            (D, n) float tensor of finite scores.

        Raises:
            ConfigError: this reward declares ``scores_prefixes = False``.
        """
        require_prefix_scores(self, "Reward.prefix")
        return self(prompts, outcomes)

    def evaluate(self, prompts: Sequence[Any], outcomes: Outcomes, *, prefix: bool = False) -> torch.Tensor:
        """Checked call: :func:`evaluate_reward` (errors name the prompt and sample index)."""
        return evaluate_reward(self, prompts, outcomes, prefix=prefix)

    def __add__(self, other: Reward) -> WeightedSum:
        return WeightedSum([(1.0, self), (1.0, other)])

    def __sub__(self, other: Reward) -> WeightedSum:
        return WeightedSum([(1.0, self), (-1.0, other)])

    def __mul__(self, weight: float) -> WeightedSum:
        return WeightedSum([(float(weight), self)])

    __rmul__ = __mul__

    def __neg__(self) -> WeightedSum:
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
        self.scores_prefixes = all(r.scores_prefixes for _, r in flat)

    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        return self._sum(prompts, outcomes, prefix=False)

    def prefix(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        """Σ_j c_j r_j(prefix): each term scores the prefix its own way."""
        require_prefix_scores(self, "WeightedSum.prefix")
        return self._sum(prompts, outcomes, prefix=True)

    def _sum(self, prompts: Sequence[Any], outcomes: Outcomes, *, prefix: bool) -> torch.Tensor:
        # Each term is checked on its own, so a failure names the term, the prompt and the sample.
        total = None
        for c, r in self.terms:
            v = evaluate_reward(r, prompts, outcomes, prefix=prefix).to(torch.float32)
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

    ``scores_prefixes=False`` declares that ``fn`` cannot score partial responses (closed-loop
    controllers then refuse it); by default a prefix is scored by ``fn`` like a response.
    """

    def __init__(self, fn: Callable[..., Any], *, batched: bool = False, texts: bool | None = None,
                 name: str | None = None, scores_prefixes: bool = True):
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
        if not isinstance(scores_prefixes, bool):
            raise ConfigError(f"scores_prefixes must be True or False, got {scores_prefixes!r}")
        self.scores_prefixes = scores_prefixes

    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        """(D, n) float32 scores; every value ``fn`` returns must be a real number.

        Raises:
            RewardError: ``fn`` raised, or returned something other than a real number (a
                string such as ``"0.5"``, a complex number, ``None``...): the message names the
                reward, the prompt, the sample and the value's type. Nothing is coerced.
        """
        D, n = outcomes.num_prompts, outcomes.num_samples
        source = f"reward {self.name!r}"
        if self.batched:
            return check_rewards(self.fn(prompts, outcomes), D, n, source=source,
                                 where=lambda d: prompt_label(prompts, d))
        out = torch.empty(D, n, dtype=torch.float32)
        for d in range(D):
            for i in range(n):
                if self.texts and outcomes.texts is None:
                    raise ValueError(f"{source} wants texts but the outcomes have none")
                arg = outcomes.texts[d][i] if self.texts else outcomes.sample(d, i)
                try:
                    value = self.fn(prompts[d], arg)
                except Exception as exc:
                    raise RewardError(f"{source} raised {type(exc).__name__}: {exc} at prompt {d}, sample {i}") from exc
                kind = real_number_type(value)
                if kind is not None:
                    raise RewardError(
                        f"{source} returned {kind} ({value!r:.40}) at {prompt_label(prompts, d)}, sample {i}; "
                        "a reward must return a real number (int, float or bool), nothing is coerced"
                    )
                out[d, i] = float(value)
        return out


# ---------------------------------------------------------------------------------------------
# Helpers shared by the reward plug-ins
# ---------------------------------------------------------------------------------------------


def require_prefix_scores(reward: Any, who: str) -> None:
    """Refuse a reward that declares it cannot score partial responses.

    Raises:
        ConfigError: naming the reward and ``who`` needed prefix scores.
    """
    if not getattr(reward, "scores_prefixes", True):
        name = getattr(reward, "name", type(reward).__name__)
        unable = [r.name for _, r in getattr(reward, "terms", ()) if not r.scores_prefixes]
        which = f" (its terms {unable} cannot)" if unable else ""
        raise ConfigError(f"{who} needs scores of partial responses, but reward {name!r}{which} declares "
                          "scores_prefixes=False; use an open-loop controller, or a reward that scores "
                          "prefixes (override Reward.prefix)")


def prompt_text(prompt: Any) -> str:
    """The text of one prompt.

    A ``str`` is returned as is; a chat (a list of ``{"role", "content"}`` dicts) gives the
    content of its last user message; a dict with ``"prompt"`` or ``"content"`` gives that field.
    """
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        for key in ("prompt", "content", "text", "question"):
            if key in prompt:
                return str(prompt[key])
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        users = [m for m in prompt if m.get("role") == "user"] or list(prompt)
        return str(users[-1].get("content", ""))
    return str(prompt)


def response_texts(outcomes: Outcomes, source: str = "reward") -> list[list[str]]:
    """``outcomes.texts`` checked to be D lists of n strings.

    Raises:
        ValueError: when the outcomes carry no texts or the nesting is not (D, n).
    """
    texts = outcomes.texts
    D, n = outcomes.num_prompts, outcomes.num_samples
    if texts is None:
        raise ValueError(
            f"{source} scores texts, but the outcomes have texts=None; use a dynamics that "
            "decodes its responses (a language model), or a reward on `values`"
        )
    if len(texts) != D or any(len(row) != n for row in texts):
        shape = (len(texts), [len(row) for row in texts])
        raise ValueError(
            f"{source}: outcomes.texts must be {D} lists of {n} strings "
            f"(num_prompts x num_samples), got lengths {shape}"
        )
    return [[str(t) if t is not None else "" for t in row] for row in texts]


def select_outcomes(outcomes: Outcomes, prompt_idx: Sequence[int], sample_idx: Sequence[int]) -> Outcomes:
    """The sub-grid ``outcomes[prompt_idx][:, sample_idx]`` as a new :class:`Outcomes`.

    Every (D, n, ...) field is indexed; ``extras`` is passed through unchanged. Used to
    re-run a failing reward on smaller grids to find the offending (prompt, sample).
    """
    pi = list(prompt_idx)
    si = list(sample_idx)

    def take(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return t[pi][:, si]

    texts = None if outcomes.texts is None else [[outcomes.texts[d][i] for i in si] for d in pi]
    return Outcomes(
        num_prompts=len(pi),
        num_samples=len(si),
        values=take(outcomes.values),
        tokens=take(outcomes.tokens),
        lengths=take(outcomes.lengths),
        texts=texts,
        logprobs=take(outcomes.logprobs),
        base_logprobs=take(outcomes.base_logprobs),
        extras=outcomes.extras,
    )


def gather_samples(outcomes: Outcomes, prompt_idx: Sequence[int], sample_idx: Sequence[int]) -> Outcomes:
    """The K samples ``(prompt_idx[k], sample_idx[k])`` of ``outcomes`` as K prompts × 1 sample.

    Unlike :func:`select_outcomes` (a sub-grid), the pairs may pick a different number of
    samples from each prompt: score them with the prompts ``[prompts[d] for d in prompt_idx]``
    (a closed-loop controller scores some rows by their prefix and others, finished, by the
    full reward). Every (D, n, ...) field is indexed; ``extras`` is passed through unchanged.
    """
    pi, si = list(prompt_idx), list(sample_idx)
    if len(pi) != len(si):
        raise ValueError(f"gather_samples needs as many prompt as sample indices, got {len(pi)} and {len(si)}")
    rows = torch.tensor(pi, dtype=torch.long), torch.tensor(si, dtype=torch.long)

    def take(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[rows[0].to(t.device), rows[1].to(t.device)].unsqueeze(1)

    return Outcomes(
        num_prompts=len(pi),
        num_samples=1,
        values=take(outcomes.values),
        tokens=take(outcomes.tokens),
        lengths=take(outcomes.lengths),
        texts=None if outcomes.texts is None else [[outcomes.texts[d][i]] for d, i in zip(pi, si)],
        logprobs=take(outcomes.logprobs),
        base_logprobs=take(outcomes.base_logprobs),
        extras=outcomes.extras,
    )


def _short(x: Any, limit: int = 60) -> str:
    s = prompt_text(x) if not isinstance(x, str) else x
    s = s.replace("\n", " ")
    return repr(s if len(s) <= limit else s[: limit - 3] + "...")


def prompt_label(prompts: Sequence[Any], d: int) -> str:
    """``"prompt d ('its text')"``: how reward errors name prompt d (the text cut to 60 characters)."""
    return f"prompt {d} ({_short(prompts[d])})" if 0 <= d < len(prompts) else f"prompt {d}"


def _fails(reward: Callable[..., Any], prompts: Sequence[Any], outcomes: Outcomes, pi: list[int], si: list[int]) -> bool:
    try:
        reward([prompts[d] for d in pi], select_outcomes(outcomes, pi, si))
    except Exception:  # noqa: BLE001 - any failure counts while bisecting
        return True
    return False


def _locate_failure(reward: Callable[..., Any], prompts: Sequence[Any], outcomes: Outcomes) -> tuple[int, int] | None:
    """Bisect over prompts, then over samples, for the first (d, i) on which ``reward`` raises.

    Costs O(log D + log n) reward calls on shrinking grids. Returns None if no single
    sub-grid reproduces the failure (a failure that needs the whole batch).
    """
    pi = list(range(outcomes.num_prompts))
    si = list(range(outcomes.num_samples))
    for axis in (0, 1):
        cur = pi if axis == 0 else si
        while len(cur) > 1:
            half = len(cur) // 2
            left, right = cur[:half], cur[half:]
            lp, ls = (left, si) if axis == 0 else (pi, left)
            rp, rs = (right, si) if axis == 0 else (pi, right)
            if _fails(reward, prompts, outcomes, lp, ls):
                cur = left
            elif _fails(reward, prompts, outcomes, rp, rs):
                cur = right
            else:
                return None
            if axis == 0:
                pi = cur
            else:
                si = cur
    if not _fails(reward, prompts, outcomes, pi, si):
        return None
    return pi[0], si[0]


def evaluate_reward(
    reward: Reward | Callable[..., Any],
    prompts: Sequence[Any],
    outcomes: Outcomes,
    *,
    locate: bool = True,
    prefix: bool = False,
) -> torch.Tensor:
    """Call ``reward(prompts, outcomes)`` (``reward.prefix(...)`` with ``prefix=True``: partial
    responses) and check the result: the one safe way to score.

    Returns the (D, n) float tensor of finite rewards. Every failure is a
    :class:`~ctrlalign.RewardError` whose message names the reward and, where it can be known,
    the prompt index, the prompt's text and the sample index:

    * the reward raised: the batch is bisected (prompts first, then samples; O(log D + log n)
      extra calls on sub-grids) to find the first (prompt, sample) that reproduces the
      exception; ``locate=False`` skips this;
    * it returned the wrong shape: expected (D, n) and actual shapes are named;
    * it returned NaN or ±inf: the first offending (prompt, sample) is named;
    * it returned something other than real numbers (strings such as ``"0.5"``, complex
      numbers, a complex tensor): the first offending (prompt, sample) and the value's type are
      named (:func:`~ctrlalign._checks.check_rewards`); nothing is coerced.
    """
    D, n = outcomes.num_prompts, outcomes.num_samples
    name = getattr(reward, "name", None) or getattr(reward, "__name__", type(reward).__name__)
    source = f"reward {name!r}" + (" on prefixes" if prefix else "")
    if len(prompts) != D:
        raise RewardError(f"{source} got {len(prompts)} prompts but outcomes for num_prompts={D}")
    if prefix:
        require_prefix_scores(reward, "evaluate_reward(prefix=True)")
    score = getattr(reward, "prefix", reward) if prefix else reward
    try:
        out = score(prompts, outcomes)
    except (RewardError, ConfigError):
        raise
    except Exception as exc:
        where = None
        if locate and isinstance(reward, Reward) and D * n > 1:
            where = _locate_failure(score, prompts, outcomes)
        elif D * n == 1:
            where = (0, 0)
        if where is not None:
            d, i = where
            loc = f"at prompt {d} ({_short(prompts[d])}), sample {i}"
        else:
            loc = f"on the batch of {D} prompts x {n} samples (no single prompt/sample reproduces it)"
        raise RewardError(f"{source} raised {type(exc).__name__}: {exc} {loc}") from exc
    return check_rewards(out, D, n, source=source, where=lambda d: prompt_label(prompts, d))


#: alias of :func:`evaluate_reward`.
safe_call = evaluate_reward
