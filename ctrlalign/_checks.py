"""Validation helpers: every bad value is reported by name, with the value and what is allowed."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch


class ConfigError(ValueError):
    """A configuration value is outside its allowed range. The message names the value."""


class RewardError(RuntimeError):
    """A reward function failed, returned the wrong shape, or returned non-finite values.

    The message names the prompt and sample index of the first offending entry.
    """


def check_positive(name: str, value: Any, *, symbol: str | None = None) -> float:
    """Return ``value`` as a float after checking it is finite and > 0."""
    label = f"{name} ({symbol})" if symbol else name
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{label} must be a real number > 0, got {value!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise ConfigError(f"{label} must be a finite number > 0, got {value!r}")
    return x


def check_nonnegative(name: str, value: Any, *, symbol: str | None = None) -> float:
    label = f"{name} ({symbol})" if symbol else name
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{label} must be a real number >= 0, got {value!r}") from None
    if not math.isfinite(x) or x < 0:
        raise ConfigError(f"{label} must be a finite number >= 0, got {value!r}")
    return x


def check_int(name: str, value: Any, *, minimum: int, symbol: str | None = None) -> int:
    """Return ``value`` as an int after checking it is an integer >= ``minimum``."""
    label = f"{name} ({symbol})" if symbol else name
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ConfigError(f"{label} must be an integer >= {minimum}, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ConfigError(f"{label} must be an integer >= {minimum}, got {value!r}")
    return v


def check_interval(
    name: str, value: Any, low: float, high: float, *, symbol: str | None = None
) -> float:
    """Return ``value`` as a float after checking ``low <= value <= high``."""
    label = f"{name} ({symbol})" if symbol else name
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{label} must be a number in [{low}, {high}], got {value!r}") from None
    if not (low <= x <= high):
        raise ConfigError(f"{label} must be a number in [{low}, {high}], got {value!r}")
    return x


def real_number_type(value: Any) -> str | None:
    """None when ``value`` is one real number; otherwise the name of its type, to report.

    Real numbers are Python and NumPy ``bool``, ``int`` and ``float`` (``True`` scores 1.0) and
    0-dimensional tensors or arrays of those dtypes. Strings (``"0.5"``), complex numbers,
    ``None``, lists and tensors of more than one entry are not: nothing is coerced.
    """
    if isinstance(value, (str, bytes)):
        return type(value).__name__
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and not value.is_complex():
            return None
        return f"tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    if isinstance(value, numbers.Real):  # Python and NumPy bool, int and float scalars
        return None
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    if kind is not None and getattr(value, "ndim", None) == 0 and kind in "biuf":  # a 0-d NumPy array
        return None
    return type(value).__name__


def check_rewards(
    rewards: Any,
    num_prompts: int,
    num_samples: int,
    *,
    source: str = "reward",
    where: Callable[[int], str] | None = None,
) -> torch.Tensor:
    """Check a reward output is a (D, n) grid of finite real numbers; return it as a float tensor.

    Accepted: a real tensor or NumPy array of shape (D, n) (bool and integer dtypes become
    float32), or D sequences of n real numbers (:func:`real_number_type`). Nothing is coerced:
    strings, complex numbers (a complex tensor included) and other objects are refused.

    Args:
        where: labels prompt d in messages (default ``"prompt d"``).

    Raises:
        RewardError: naming the expected and actual shape, or the first (prompt, sample)
            holding a value that is not a real number (with its type) or is NaN or ±inf.
    """
    label = where or (lambda d: f"prompt {d}")
    shape = f"(num_prompts={num_prompts}, num_samples={num_samples})"
    real = "rewards must be real numbers (int, float or bool)"
    if not isinstance(rewards, torch.Tensor):
        kind = getattr(getattr(rewards, "dtype", None), "kind", None)
        if kind is not None and hasattr(rewards, "shape"):  # a NumPy array
            if kind not in "biuf":
                raise RewardError(f"{source} returned an array of dtype {rewards.dtype}, expected a {shape} "
                                  f"grid of real numbers; {real}")
            rewards = torch.as_tensor(rewards)
        elif isinstance(rewards, Sequence) and not isinstance(rewards, (str, bytes)):
            rewards = _grid_of_reals(rewards, num_prompts, num_samples, source=source, label=label)
        else:
            raise RewardError(f"{source} returned {type(rewards).__name__}, expected a tensor of shape {shape}")
    if tuple(rewards.shape) != (num_prompts, num_samples):
        raise RewardError(f"{source} returned shape {tuple(rewards.shape)}, expected {shape}")
    if rewards.is_complex():
        imag = torch.nonzero(rewards.imag != 0)
        d, i = (int(x) for x in imag[0]) if len(imag) else (0, 0)
        raise RewardError(
            f"{source} returned a tensor of dtype {rewards.dtype} (at {label(d)}, sample {i}: "
            f"{rewards[d, i].item()}); {real}, not complex"
        )
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.float32)
    bad = ~torch.isfinite(rewards)
    if bool(bad.any()):
        d, i = (int(x) for x in torch.nonzero(bad)[0])
        raise RewardError(
            f"{source} returned a non-finite value {rewards[d, i].item()} at {label(d)}, "
            f"sample {i} ({int(bad.sum())} non-finite entries in all); rewards must be finite"
        )
    return rewards


def _grid_of_reals(
    rows: Sequence[Any], num_prompts: int, num_samples: int, *, source: str, label: Callable[[int], str]
) -> torch.Tensor:
    """D sequences of n real numbers as a (D, n) float32 tensor; refuses anything else by place."""
    lengths = [len(r) if isinstance(r, Sequence) and not isinstance(r, (str, bytes)) else None for r in rows]
    if len(rows) != num_prompts or any(length != num_samples for length in lengths):
        raise RewardError(f"{source} returned {len(rows)} rows of lengths {lengths}, expected "
                          f"(num_prompts={num_prompts}, num_samples={num_samples})")
    for d, row in enumerate(rows):
        for i, value in enumerate(row):
            kind = real_number_type(value)
            if kind is not None:
                raise RewardError(f"{source} returned {kind} ({_clip(value)}) at {label(d)}, sample {i}; "
                                  "rewards must be real numbers (int, float or bool)")
    return torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float32)


def _clip(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's type and whole message on one line (library messages often put the
    detail on a second line), cut to ``limit`` characters."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
