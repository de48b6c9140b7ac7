"""Engines by name: what ``CausalLM(engine="eager" | "static" | "llamacpp" | ...)`` builds."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..._checks import ConfigError
from .eager import EagerEngine
from .llamacpp import LlamaCppEngine
from .protocol import Engine
from .static import StaticEngine

__all__ = ["ENGINES", "EngineFactory", "make_engine", "register_engine"]

#: a function or class that builds an :class:`~ctrlalign.dynamics.engines.protocol.Engine`:
#: ``factory(model, **engine_options)``.
EngineFactory = Callable[..., Engine]

#: engine name → factory, called as ``factory(model, **engine_options)``.
ENGINES: dict[str, EngineFactory] = {
    "eager": EagerEngine,
    "static": functools.partial(StaticEngine, grow=True),
    "llamacpp": LlamaCppEngine,  # needs llama-cpp-python (imported when built)
}


def register_engine(name: str, factory: EngineFactory) -> None:
    """Make ``CausalLM(..., engine=name, engine_options=opts)`` use ``factory(model, **opts)``,
    an :class:`Engine` subclass or any callable returning an :class:`Engine`."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"engine name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise ConfigError(f"engine factory must be an Engine class or a callable, got {factory!r}")
    ENGINES[name] = factory


def make_engine(engine: str | Engine, model: Any, options: dict[str, Any]) -> tuple[Engine, str]:
    """The engine object and its name for ``CausalLM(engine=..., engine_options=...)``.

    ``engine`` is a name in :data:`ENGINES` (built by ``ENGINES[name](model, **options)``) or
    an :class:`Engine` instance (then ``options`` must be empty).

    Raises:
        ConfigError: an unknown name, a non-engine, options the factory does not accept, or
            a model the engine cannot run (naming the engine and the reason).
    """
    if isinstance(engine, Engine):
        if options:
            raise ConfigError(
                f"engine_options {sorted(options)} apply only to an engine given by name; "
                f"configure the {type(engine).__name__} instance itself"
            )
        return engine, type(engine).__name__
    if not isinstance(engine, str):
        raise ConfigError(f"engine must be a name in {sorted(ENGINES)} or an Engine instance, got {engine!r}")
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {sorted(ENGINES)} or an Engine instance, got {engine!r}")
    factory = ENGINES[engine]
    try:
        built = factory(model, **options)
    except TypeError as e:  # an option the factory has no parameter for
        raise ConfigError(f"engine={engine!r} does not accept engine_options {sorted(options)}: {e}") from e
    except NotImplementedError as e:  # an architecture the engine does not implement
        raise ConfigError(f"engine={engine!r}: {e}") from e
    if not isinstance(built, Engine):
        raise ConfigError(f"ENGINES[{engine!r}] returned {type(built).__name__}, not an Engine")
    return built, engine
