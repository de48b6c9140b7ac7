"""One declaration per controller: its name, hyperparameters, defaults and ranges.

Every controller class lists its hyperparameters as :class:`Hyperparameter` s (name, symbol,
type, range, help) in ``hyperparameters``; the defaults are the defaults of its
``__init__`` signature. From that one declaration come

* the constructor's validation (:meth:`Hyperparameter.check`, through ``Controller._set``),
* the run config's ``controller`` section and the bench config's controller entries
  (:func:`config_fields`, used by :mod:`ctrlalign.config` and :mod:`ctrlalign.bench.config`),
* the command line's controller flags (:func:`add_arguments`, :func:`arguments_to_kwargs`),
* the documentation's table of hyperparameters (:func:`describe`).

Nothing else writes a controller's hyperparameters down.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from .._checks import ConfigError

if TYPE_CHECKING:
    from .base import Controller

__all__ = [
    "ControllerSpec",
    "Hyperparameter",
    "add_arguments",
    "arguments_to_kwargs",
    "check_applicable",
    "config_fields",
    "describe",
    "spec_of",
]

_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter of a controller.

    Attributes:
        name: the keyword argument, config field and (with dashes) command-line flag.
        kind: ``int``, ``float``, ``bool`` or ``str``.
        help: one line for ``--help``, configs and docs.
        symbol: the mathematical symbol (σ, λ, α, ...), or None.
        low, high: the allowed range (None: unbounded on that side).
        low_open, high_open: whether that end is excluded.
        choices: the allowed values of a ``str`` hyperparameter.
        nullable: whether None is allowed (it then means "unset", as documented in ``help``).
    """

    name: str
    kind: type
    help: str
    symbol: str | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    nullable: bool = False

    @property
    def label(self) -> str:
        """``name (symbol)`` for messages."""
        return f"{self.name} ({self.symbol})" if self.symbol else self.name

    def allowed(self) -> str:
        """What is allowed, in words (for messages and help)."""
        if self.kind is bool:
            text = "true or false"
        elif self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            noun = "an integer" if self.kind is int else "a number"
            if self.low is not None and self.high is not None:
                text = f"{noun} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
            elif self.low is not None:
                text = f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
            elif self.high is not None:
                text = f"{noun} {'<' if self.high_open else '<='} {self.high:g}"
            else:
                text = noun
        return text + (" (or unset)" if self.nullable else "")

    def check(self, value: Any) -> Any:
        """``value`` converted to ``kind`` after checking its range.

        Raises:
            ConfigError: naming the hyperparameter, the value and what is allowed.
        """
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{self.label} must be {self.allowed()}, got None")
        bad = ConfigError(f"{self.label} must be {self.allowed()}, got {value!r}")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind is str:
            if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
                raise bad
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise bad
            x: float = int(value)
        else:
            x = float(value)
            if not math.isfinite(x):
                raise bad
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            raise bad
        if self.high is not None and (x > self.high or (self.high_open and x == self.high)):
            raise bad
        return x


@dataclass(frozen=True)
class ControllerSpec:
    """A controller's declaration: its name, class, hyperparameters and their defaults."""

    name: str
    cls: type
    hyperparameters: tuple[Hyperparameter, ...]
    defaults: dict[str, Any]

    def __getitem__(self, name: str) -> Hyperparameter:
        for h in self.hyperparameters:
            if h.name == name:
                return h
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        """The hyperparameter names, in declaration order."""
        return [h.name for h in self.hyperparameters]


@functools.cache
def spec_of(cls: type[Controller]) -> ControllerSpec:
    """The declaration of a controller class: the ``hyperparameters`` of the class and its bases
    (a subclass's entry replaces its base's entry of the same name) that its ``__init__`` takes,
    in ``__init__``'s order, with ``__init__``'s defaults.

    Raises:
        TypeError: an ``__init__`` parameter without a declaration.
    """
    merged: dict[str, Hyperparameter] = {}
    for klass in reversed(cls.__mro__):
        for h in klass.__dict__.get("hyperparameters", ()):
            merged[h.name] = h
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    undeclared = set(params) - set(merged)
    if undeclared:
        raise TypeError(f"{cls.__name__}: __init__ parameters {sorted(undeclared)} have no Hyperparameter "
                        "(declare them in the class's `hyperparameters`)")
    hypers = tuple(merged[k] for k in params)
    defaults = {k: (None if p.default is _MISSING else p.default) for k, p in params.items()}
    return ControllerSpec(name=cls.name, cls=cls, hyperparameters=hypers, defaults=defaults)


def _union(specs: Iterable[ControllerSpec]) -> dict[str, tuple[Hyperparameter, list[str]]]:
    """Every hyperparameter name → (its declaration, the controllers that take it)."""
    out: dict[str, tuple[Hyperparameter, list[str]]] = {}
    for s in specs:
        for h in s.hyperparameters:
            if h.name in out:
                out[h.name][1].append(s.name)
            else:
                out[h.name] = (h, [s.name])
    return out


def _described(specs: Iterable[ControllerSpec], exclude: Iterable[str]) -> list[tuple[Hyperparameter, list[str], str]]:
    """(declaration, controllers that take it, their defaults in words) for every hyperparameter
    of the union of ``specs`` not in ``exclude``."""
    specs = list(specs)
    skip = set(exclude)
    out = []
    for name, (h, owners) in _union(specs).items():
        if name in skip:
            continue
        defaults = {s.name: s.defaults[name] for s in specs if name in s.defaults}
        shown = sorted({repr(v) for v in defaults.values()})
        text = shown[0] if len(shown) == 1 else ", ".join(f"{k} {v!r}" for k, v in defaults.items())
        out.append((h, owners, text))
    return out


def _python_type(h: Hyperparameter) -> Any:
    return h.kind if h.kind is not float else float


def config_fields(specs: Iterable[ControllerSpec], exclude: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Pydantic field definitions ``{name: (type | None, Field(None, description=...))}`` for the
    union of the specs' hyperparameters; each field's description names the controllers that
    take it and their defaults. Range checks are done by :func:`check_applicable`.
    """
    fields: dict[str, tuple[Any, Any]] = {}
    for h, owners, default_text in _described(specs, exclude):
        desc = f"{h.label}: {h.help}. Allowed: {h.allowed()}. Default: {default_text}. Applies to: {', '.join(owners)}"
        fields[h.name] = (_python_type(h) | None, Field(None, description=desc))
    return fields


def check_applicable(spec: ControllerSpec, values: dict[str, Any], section: str = "controller") -> dict[str, Any]:
    """The set (non-None) values, checked against ``spec``: each must be one of its
    hyperparameters and in range. Returns them as keyword arguments for ``spec.cls``.

    Raises:
        ConfigError: ``controller.alpha does not apply to controller 'bon' (it takes: ...)`` or
            ``controller.sigma: sigma (σ) must be a number > 0, got -1``.
    """
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name not in spec.defaults:
            takes = ", ".join(n for n in spec.names) or "no hyperparameters"
            raise ConfigError(f"{section}.{name} does not apply to controller '{spec.name}' (it takes: {takes})")
        try:
            kwargs[name] = spec[name].check(value)
        except ConfigError as exc:
            raise ConfigError(f"{section}.{name}: {exc}") from None
    return kwargs


def add_arguments(parser: argparse.ArgumentParser | Any, specs: Iterable[ControllerSpec],
                  exclude: Iterable[str] = (), aliases: dict[str, list[str]] | None = None) -> None:
    """Add one ``--flag`` per hyperparameter of the union of ``specs`` (default None: the
    chosen controller's own default); help names the controllers that take it and the defaults.
    ``aliases`` adds short flags, e.g. ``{"num_samples": ["-n"]}``."""
    for h, owners, default_text in _described(specs, exclude):
        name = h.name
        help_text = f"{h.label}: {h.help}; {h.allowed()} (default {default_text}; {', '.join(owners)})"
        flags = [*(aliases or {}).get(name, []), "--" + name.replace("_", "-")]
        if h.kind is bool:
            parser.add_argument(*flags, dest=name, default=None, action=argparse.BooleanOptionalAction,
                                help=help_text.replace("%", "%%"))
        else:
            parser.add_argument(*flags, dest=name, default=None, type=h.kind,
                                choices=list(h.choices) if h.choices else None,
                                metavar=(h.symbol or name.upper()) if not h.choices else None,
                                help=help_text.replace("%", "%%"))


def arguments_to_kwargs(args: argparse.Namespace, specs: Iterable[ControllerSpec]) -> dict[str, Any]:
    """The hyperparameter flags the user set (not None), as a dict for the config."""
    names = _union(list(specs))
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def describe(spec: ControllerSpec) -> str:
    """A markdown table of the controller's hyperparameters (name, symbol, default, allowed, meaning)."""
    rows = ["| name | symbol | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for h in spec.hyperparameters:
        rows.append(f"| `{h.name}` | {h.symbol or ''} | `{spec.defaults[h.name]!r}` | {h.allowed()} | {h.help} |")
    return "\n".join(rows)
