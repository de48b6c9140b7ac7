"""A component chosen by name from a registry, with its declared options: a config section.

:class:`ComponentSection` is the generic mechanism behind the ``controller`` and ``space``
sections of a run config (:class:`~ctrlalign.config.ControllerConfig`,
:class:`~ctrlalign.config.SpaceConfig`) and of a bench config: the section names a class in a
:class:`~ctrlalign.declare.Registry`, its other keys are that class's declared options, and
validating the section builds the component once from its declaration (which checks each value
once). A bad key or value is a pydantic ``ValidationError`` naming it, so that the enclosing
config reports it with its path (``controller.sigma: ...``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ._checks import ConfigError
from .declare import HyperparameterError, Registry, plain, spec_of

__all__ = ["ComponentSection"]


def _section_error(loc: tuple[str, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value)  # type: ignore[arg-type]


class ComponentSection(BaseModel):
    """A component chosen by ``name`` from a :class:`~ctrlalign.declare.Registry`, with its
    declared options beside the name.

    The options are resolved when the section is validated (not when this module is imported):
    the class is looked up in the registry then, keys it does not take are refused (a key another
    registered class takes may be left unset, None), old keys get a message saying where they
    went (``moved``), and the
    component is **constructed once**, which checks each value once by its
    :class:`~ctrlalign.declare.Hyperparameter`; :attr:`instance` is that object. A class
    registered at any time before validation is accepted.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    #: where names are looked up
    registry: ClassVar[Registry]
    #: the section's key in a config (for messages)
    section: ClassVar[str]
    #: keys that used to belong here → where they are now (refused with that message)
    moved: ClassVar[dict[str, str]] = {}
    #: options the class takes that this section sets itself → why (refused with that message)
    reserved: ClassVar[dict[str, str]] = {}
    _instance: Any = PrivateAttr(default=None)

    name: str

    @model_validator(mode="after")
    def _declared(self) -> ComponentSection:
        options = dict(self.model_extra or {})
        kind = self.registry.kind
        if self.name not in self.registry:
            raise _invalid(self, [_section_error(("name",), f"unknown {kind} {self.name!r}; choose one of "
                                                 f"{', '.join(self.registry)}", self.name)])
        spec = spec_of(self.registry[self.name])
        elsewhere = {n for s in self.registry.specs() for n in s.names}
        errors = [_section_error((key,), f"not set here: {self.reserved[key]}", options[key])
                  for key in options if key in self.reserved]
        for key in self.registry.inapplicable(self.name, options):
            value = options[key]
            if key in self.moved:
                errors.append(_section_error((key,), f"no longer set here: {self.moved[key]}", value))
            elif key in elsewhere and value is None:  # unset, as "does not apply" asks
                del options[key]
                del self.__pydantic_extra__[key]  # type: ignore[attr-defined]
            elif key in elsewhere:
                errors.append(_section_error((), f"{self.section}.{key} does not apply to {kind} '{self.name}' "
                                             f"(it takes: {', '.join(spec.names) or 'no options'})", value))
            else:
                errors.append(_section_error((key,), f"unknown key ({kind} '{self.name}' takes: "
                                             f"{', '.join(spec.names) or 'no options'})", value))
        takes = {k: v for k, v in options.items() if k in spec.defaults and k not in self.reserved}
        try:  # the values are checked even when keys were refused, so one pass reports both
            self._instance = self.registry.build(self.name, takes)
        except HyperparameterError as exc:
            errors.append(_section_error((exc.name,), str(exc), exc.value))
        except ConfigError as exc:
            errors.append(_section_error((), str(exc), options))
        if errors:
            raise _invalid(self, errors)
        for key, value in options.items():  # the values as the component holds them (1 → 1.0 for a float;
            # a nested component as its section)
            self.__pydantic_extra__[key] = plain(getattr(self._instance, key, value))  # type: ignore[index]
        return self

    def __eq__(self, other: object) -> bool:
        """Sections are equal when they say the same (the built objects are not compared)."""
        return (type(self) is type(other) and self.__dict__ == other.__dict__  # type: ignore[attr-defined]
                and self.__pydantic_extra__ == other.__pydantic_extra__)  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    @property
    def instance(self) -> Any:
        """The component built (once) when the section was validated."""
        return self._instance

    def options(self) -> dict[str, Any]:
        """The options set in the section (checked values; unset ones take the class's defaults)."""
        return dict(self.model_extra or {})

    def build(self, **overrides: Any) -> Any:
        """The component: :attr:`instance`, or with ``overrides`` (e.g. ``num_iterations``) a
        new one built from the section's options and the overrides."""
        if not overrides:
            return self._instance
        return self.registry.build(self.name, {**self.options(), **overrides})


def _invalid(section: ComponentSection, errors: list[InitErrorDetails]) -> ValidationError:
    return ValidationError.from_exception_data(type(section).__name__, errors)
