"""Declarations: one list of options per component class, read by everything that builds one.

A configurable component (a :class:`~ctrlalign.controllers.base.Controller`, a
:class:`~ctrlalign.spaces.ControlSpace`) lists its options as :class:`Hyperparameter` s (name,
symbol, type, range, help) in its class attribute ``hyperparameters``; the defaults are the
defaults of its ``__init__`` signature. From that one declaration come

* the constructor's validation (:meth:`Hyperparameter.check`, the only place a value is checked),
* the config sections (``controller:``, ``space:``, a bench entry), resolved when a config is
  validated through a :class:`Registry` (:mod:`ctrlalign.config`), so a class registered at any
  time before that is accepted,
* the command line's flags (:func:`add_arguments`, :func:`arguments_to_kwargs`),
* the documentation's table of options (:func:`describe`).

Nothing else writes a component's options down. :class:`Declared` is the base that holds such
options on an object (validated once, immutable, :meth:`~Declared.replace`,
:meth:`~Declared.config`): both kinds of controller — the open-loop
:class:`~ctrlalign.controllers.base.Controller` and the closed-loop
:class:`~ctrlalign.closedloop.base.ClosedLoopController` — derive from it.

Besides the scalar kinds (``int``, ``float``, ``bool``, ``str``, which get command-line flags), a
hyperparameter may be a ``list`` (e.g. a schedule of checkpoints, set in configs and from
Python; the class checks its items) or a nested component (``kind=dict`` with a
``registry``: a section ``{name: ..., options}`` built through that registry, or an instance of
``objects`` from Python), e.g. the open-loop controller a receding-horizon controller runs.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import numbers
from abc import ABC, ABCMeta
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._checks import ConfigError

__all__ = [
    "SCALAR_KINDS",
    "Declared",
    "Hyperparameter",
    "HyperparameterError",
    "Registry",
    "Spec",
    "add_arguments",
    "arguments_to_kwargs",
    "declaration",
    "describe",
    "override",
    "plain",
    "spec_of",
]

_MISSING = inspect.Parameter.empty

#: the kinds of hyperparameter that command-line flags set (the others are set in configs and Python)
SCALAR_KINDS = (int, float, bool, str)


class HyperparameterError(ConfigError):
    """A value refused by its :class:`Hyperparameter`; ``name`` and ``value`` say which."""

    def __init__(self, message: str, name: str, value: Any):
        super().__init__(message)
        self.name = name
        self.value = value


@dataclass(frozen=True)
class Hyperparameter:
    """One option of a component class.

    Attributes:
        name: the keyword argument, config field and (with dashes) command-line flag.
        kind: ``int``, ``float``, ``bool`` or ``str``.
        help: one line for ``--help``, configs and docs.
        symbol: the mathematical symbol (σ, λ, α, ...), or None.
        low, high: the allowed range (None: unbounded on that side).
        low_open, high_open: whether that end is excluded.
        choices: the allowed values of a ``str`` hyperparameter.
        nullable: whether None is allowed (it then means "unset", as documented in ``help``).
        objects: types whose instances are accepted as they are, from Python only (configs and
            flags give ``kind``); the class checks them itself (e.g. a tensor of directions).
        excludes: the hyperparameters this one is an alternative to (λ fixed by
            ``temperature`` or adapted by ``target_ess``): setting it over a preset
            (:func:`override`) unsets them.
        registry: for ``kind=dict``, the :class:`Registry` a nested component's section
            ``{name: ..., options}`` is built through; the component built must be an instance
            of ``objects``.
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
    objects: tuple[type, ...] = ()
    excludes: tuple[str, ...] = ()
    registry: Any = None

    @property
    def label(self) -> str:
        """``name (symbol)`` for messages."""
        return f"{self.name} ({self.symbol})" if self.symbol else self.name

    def allowed(self) -> str:
        """What is allowed, in words (for messages and help)."""
        if self.kind is bool:
            text = "true or false"
        elif self.kind is list:
            text = "a list"
        elif self.kind is dict:
            kinds = " or ".join(t.__name__ for t in self.objects) or "component"
            text = f"a {kinds} section {{name: ..., options}}"
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
        """``value`` converted to ``kind`` after checking its type and range.

        Types are strict, as in the config files: a bool is neither an integer nor a number, a
        float (even 2.0) is not an integer, an integer is a number (NumPy scalars count as the
        Python ones), a string is never converted.

        Raises:
            HyperparameterError: (a :class:`~ctrlalign.ConfigError`) naming the hyperparameter,
                the value and what is allowed.
        """
        if value is None:
            if self.nullable:
                return None
            raise HyperparameterError(f"{self.label} must be {self.allowed()}, got None", self.name, value)
        if self.objects and isinstance(value, self.objects):
            return value
        bad = HyperparameterError(f"{self.label} must be {self.allowed()}, got {value!r}", self.name, value)
        if self.kind is list:
            if not isinstance(value, (list, tuple)):
                raise bad
            return value
        if self.kind is dict:
            return self.build_component(value, bad)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind is str:
            if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
                raise bad
            return value
        # strict, as the config files are: a bool is not a number, a float (even 2.0) is not an
        # integer; an integer is a float. NumPy integers and floats count as ints and floats.
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise bad
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
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

    def build_component(self, value: Any, bad: HyperparameterError) -> Any:
        """A nested component (``kind=dict``) from its section ``{name: ..., options}``, built
        through ``registry`` (which checks each option); it must be an instance of ``objects``.

        Raises:
            HyperparameterError: not a section, an unknown name, a bad option (the nested
                message, prefixed by this hyperparameter's name), or a component of another kind.
        """
        if not isinstance(value, Mapping) or not isinstance(value.get("name"), str) or self.registry is None:
            raise bad
        options = {k: v for k, v in value.items() if k != "name"}
        try:
            built = self.registry.build(value["name"], options)
        except ConfigError as exc:
            raise HyperparameterError(f"{self.label}: {exc}", self.name, value) from None
        if self.objects and not isinstance(built, self.objects):
            allowed = [k for k, c in self.registry.items() if issubclass(c, self.objects)]
            raise HyperparameterError(f"{self.label} must be one of {', '.join(allowed)}, got {value['name']!r}",
                                      self.name, value)
        return built


@dataclass(frozen=True)
class Spec:
    """A component class's declaration: its name, class, hyperparameters and their defaults."""

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


def declaration(cls: type, name: str) -> Hyperparameter:
    """The :class:`Hyperparameter` ``name`` declared by ``cls`` or a base (the nearest wins).

    Raises:
        TypeError: no class in ``cls``'s MRO declares ``name``.
    """
    for klass in cls.__mro__:
        for h in klass.__dict__.get("hyperparameters", ()):
            if h.name == name:
                return h
    raise TypeError(f"{cls.__name__} declares no hyperparameter {name!r}")


@functools.cache
def spec_of(cls: type) -> Spec:
    """The declaration of a component class: the ``hyperparameters`` of the class and its bases
    (a subclass's entry replaces its base's entry of the same name) that its ``__init__`` takes,
    in ``__init__``'s order, with ``__init__``'s defaults. ``__init__`` parameters named in the
    class's ``bound_arguments`` (filled when a component is bound to a run, e.g. a space's
    hidden size d) are not options and need no declaration.

    Raises:
        TypeError: an ``__init__`` parameter without a declaration.
    """
    merged: dict[str, Hyperparameter] = {}
    for klass in reversed(cls.__mro__):
        for h in klass.__dict__.get("hyperparameters", ()):
            merged[h.name] = h
    skip = set(getattr(cls, "bound_arguments", ()))
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
              if k != "self" and k not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    undeclared = set(params) - set(merged)
    if undeclared:
        raise TypeError(f"{cls.__name__}: __init__ parameters {sorted(undeclared)} have no Hyperparameter "
                        "(declare them in the class's `hyperparameters`)")
    hypers = tuple(merged[k] for k in params)
    defaults = {k: (None if p.default is _MISSING else p.default) for k, p in params.items()}
    return Spec(name=cls.name, cls=cls, hyperparameters=hypers, defaults=defaults)


class Registry(dict):
    """Configuration name → component class, for one kind of component (``"controller"``,
    ``"space"``). Configs and the command line look names up here when they are validated and
    parsed, so a class registered at any time before that is accepted.
    """

    def __init__(self, kind: str, classes: Iterable[type] = ()):
        super().__init__((c.name, c) for c in classes)
        self.kind = kind

    def register(self, cls: type) -> type:
        """Add ``cls`` under ``cls.name`` (usable as a class decorator); its declaration is
        checked at once (:func:`spec_of`)."""
        spec_of(cls)
        self[cls.name] = cls
        return cls

    def resolve(self, name: str) -> type:
        """The class registered as ``name``.

        Raises:
            ConfigError: naming the unknown name and the registered ones.
        """
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self)}")
        return self[name]

    def inapplicable(self, name: str, options: Iterable[str]) -> list[str]:
        """The keys of ``options`` that the class ``name`` does not take."""
        takes = spec_of(self.resolve(name)).defaults
        return [k for k in options if k not in takes]

    def build(self, name: str, options: dict[str, Any]) -> Any:
        """The class ``name`` constructed with ``options`` (each value checked once, there).

        Raises:
            ConfigError: an unknown name, an option the class does not take, or a value its
                declaration refuses (a :class:`HyperparameterError` naming it).
        """
        bad = self.inapplicable(name, options)
        if bad:
            takes = ", ".join(spec_of(self[name]).names) or "no options"
            raise ConfigError(f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply to {self.kind} "
                              f"{name!r} (it takes: {takes})")
        return self[name](**options)

    def specs(self) -> list[Spec]:
        """The declarations of every registered class."""
        return [spec_of(c) for c in self.values()]


def _union(specs: Iterable[Spec]) -> dict[str, tuple[Hyperparameter, list[str]]]:
    """Every hyperparameter name → (its declaration, the classes that take it)."""
    out: dict[str, tuple[Hyperparameter, list[str]]] = {}
    for s in specs:
        for h in s.hyperparameters:
            if h.name in out:
                out[h.name][1].append(s.name)
            else:
                out[h.name] = (h, [s.name])
    return out


def plain(value: Any) -> Any:
    """A hyperparameter's value as plain data: a nested :class:`Declared` component as its
    section (:meth:`Declared.section`), lists and tuples item by item, anything else as is."""
    if isinstance(value, Declared):
        return value.section()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class _Constructed(ABCMeta):
    """Marks an instance as constructed once its outermost ``__init__`` has returned, so that
    :meth:`Declared.set_hyperparameter` works in constructors only."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__call__(*args, **kwargs)
        object.__setattr__(obj, "_constructed", True)
        return obj


class Declared(ABC, metaclass=_Constructed):
    """An object whose options are declared :class:`Hyperparameter` s: each is validated once,
    in the constructor (:meth:`set_hyperparameter`), and immutable afterwards; :meth:`replace`
    builds a validated copy with some changed; :meth:`config` and :meth:`section` give them as
    plain data.

    Subclasses set ``name`` (the name configs and the command line use), ``hyperparameters``
    (the declarations of their ``__init__`` arguments the bases do not declare) and, for
    ``__init__`` arguments that are no options but filled when the object is bound to a run,
    ``bound_arguments`` (kept by :meth:`replace`).
    """

    name: ClassVar[str] = "declared"
    hyperparameters: ClassVar[tuple[Hyperparameter, ...]] = ()
    bound_arguments: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def spec(cls) -> Spec:
        """This class's declaration (hyperparameters, defaults, ranges)."""
        return spec_of(cls)

    def set_hyperparameter(self, name: str, value: Any) -> None:
        """Validate ``value`` against the hyperparameter ``name`` declared by this class or a
        base (the nearest declaration wins) and store it.

        For constructors: a subclass's ``__init__`` stores each hyperparameter it declares this
        way. Once the object is constructed, hyperparameters are immutable and this raises
        ``AttributeError`` (use :meth:`replace` for a validated copy).

        Raises:
            HyperparameterError: (a ``ConfigError``) ``value`` is outside the declaration.
            AttributeError: called after construction.
        """
        if self.__dict__.get("_constructed", False):
            raise AttributeError(
                f"{type(self).__name__}.{name} is a hyperparameter and cannot be set after construction; "
                f"use .replace({name}=...) for a validated copy")
        object.__setattr__(self, name, declaration(type(self), name).check(value))

    def __setattr__(self, name: str, value: Any) -> None:
        """Refuse to reassign a declared hyperparameter: it would bypass validation and change
        an object other code already holds. Use :meth:`replace` for a changed copy."""
        if name in self.spec().names:
            raise AttributeError(
                f"{type(self).__name__}.{name} is a hyperparameter and cannot be reassigned after "
                f"construction; use .replace({name}=...) for a validated copy")
        object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> Any:
        """A new object of the same class with ``changes`` applied to its hyperparameters (and
        bound arguments), validated by the constructor like any other."""
        names = [*self.spec().names, *self.bound_arguments]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no hyperparameters {unknown}; "
                              f"it declares {list(self.spec().names)}")
        current = {k: getattr(self, k) for k in names if hasattr(self, k)}
        return type(self)(**{**current, **changes})

    def config(self) -> dict[str, Any]:
        """The hyperparameters as plain values (a nested component as its section)."""
        return {k: plain(getattr(self, k, None)) for k in self.spec().names}

    def section(self) -> dict[str, Any]:
        """``{"name": name, **config()}``: the config section that builds an equal object."""
        return {"name": self.name, **self.config()}

    def __repr__(self) -> str:
        cfg = {k: getattr(self, k, None) for k in self.spec().names}
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in cfg.items() if v is not None) + ")"


def add_arguments(parser: argparse.ArgumentParser | Any, specs: Iterable[Spec], exclude: Iterable[str] = (),
                  aliases: dict[str, list[str]] | None = None) -> None:
    """Add one ``--flag`` per hyperparameter of the union of ``specs`` (default None: the
    chosen class's own default); help names the classes that take it and their defaults.
    Flags are parsed by type only: the value is checked once, by the component's constructor.
    ``aliases`` adds short flags, e.g. ``{"num_samples": ["-n"]}``."""
    specs = list(specs)
    skip = set(exclude)
    for name, (h, owners) in _union(specs).items():
        if name in skip or h.kind not in SCALAR_KINDS:
            continue
        defaults = {s.name: s.defaults[name] for s in specs if name in s.defaults}
        shown = sorted({repr(v) for v in defaults.values()})
        default_text = shown[0] if len(shown) == 1 else ", ".join(f"{k} {v!r}" for k, v in defaults.items())
        help_text = f"{h.label}: {h.help}; {h.allowed()} (default {default_text}; {', '.join(owners)})"
        flags = [*(aliases or {}).get(name, []), "--" + name.replace("_", "-")]
        if h.kind is bool:
            parser.add_argument(*flags, dest=name, default=None, action=argparse.BooleanOptionalAction,
                                help=help_text.replace("%", "%%"))
        else:
            parser.add_argument(*flags, dest=name, default=None, type=h.kind,
                                metavar=(h.symbol or name.upper()) if not h.choices else "{" + ",".join(h.choices) + "}",
                                help=help_text.replace("%", "%%"))


def arguments_to_kwargs(args: argparse.Namespace, specs: Iterable[Spec], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The hyperparameter flags the user set (not None) of the union of ``specs`` except
    ``exclude``, as a dict for a config section."""
    skip = set(exclude)
    return {k: getattr(args, k) for k, (h, _) in _union(list(specs)).items()
            if k not in skip and h.kind in SCALAR_KINDS and getattr(args, k, None) is not None}


def override(values: dict[str, Any], changes: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """``values`` (e.g. a preset's section) with ``changes`` (e.g. the flags the user set) applied;
    a value that a changed hyperparameter ``excludes`` is dropped unless it is changed too (so
    ``--temperature`` over a preset with ``target_ess`` gives a fixed λ). Nothing is checked here."""
    out = dict(values)
    for name in changes:
        if name in spec.defaults:
            for other in spec[name].excludes:
                if other not in changes:
                    out.pop(other, None)
    out.update(changes)
    return out


def describe(spec: Spec) -> str:
    """A markdown table of the class's hyperparameters (name, symbol, default, allowed, meaning)."""
    rows = ["| name | symbol | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for h in spec.hyperparameters:
        default = plain(spec.defaults[h.name])
        rows.append(f"| `{h.name}` | {h.symbol or ''} | `{default!r}` | {h.allowed()} | {h.help} |")
    return "\n".join(rows)
