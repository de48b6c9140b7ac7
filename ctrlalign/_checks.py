"""Validation helpers: every bad value is reported by name, with the value and what is allowed."""

from __future__ import annotations

import math
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


def check_rewards(rewards: Any, num_prompts: int, num_samples: int, *, source: str = "reward") -> torch.Tensor:
    """Check a reward output has shape (D, n) and finite entries; return it as a tensor.

    Raises:
        RewardError: naming the expected and actual shape, or the first (prompt, sample)
            index holding NaN or inf.
    """
    if not isinstance(rewards, torch.Tensor):
        try:
            rewards = torch.as_tensor(rewards)
        except Exception as exc:
            raise RewardError(
                f"{source} returned {type(rewards).__name__}, expected a tensor of shape "
                f"(num_prompts={num_prompts}, num_samples={num_samples})"
            ) from exc
    if tuple(rewards.shape) != (num_prompts, num_samples):
        raise RewardError(
            f"{source} returned shape {tuple(rewards.shape)}, expected "
            f"(num_prompts={num_prompts}, num_samples={num_samples})"
        )
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.float32)
    bad = ~torch.isfinite(rewards)
    if bool(bad.any()):
        d, i = (int(x) for x in torch.nonzero(bad)[0])
        raise RewardError(
            f"{source} returned a non-finite value {rewards[d, i].item()} at prompt {d}, "
            f"sample {i} ({int(bad.sum())} non-finite entries in all); rewards must be finite"
        )
    return rewards


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
