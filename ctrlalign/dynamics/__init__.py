"""Dynamics: the systems under control."""

from .base import Dynamics, Outcomes, Sample

__all__ = ["Dynamics", "Outcomes", "Sample"]
