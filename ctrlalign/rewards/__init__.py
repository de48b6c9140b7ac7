"""Rewards: batched scorers of outcomes, shape (D, n)."""

from .base import CallableReward, Reward, WeightedSum

__all__ = ["Reward", "CallableReward", "WeightedSum"]
