"""`direct_init`: a frozen dataclass whose `__init__` writes the instance `__dict__` directly.

The generated initialiser of a `@dataclass(frozen=True)` assigns each field through
`object.__setattr__` (its own `__setattr__` raises), about 870 instructions a field. The
records built once or more per attempt or saga (`JournalEntry`, `SagaRecord`,
`AttemptContext`, `AttemptOutcome`, `StepCall`, `RunResult`, `Record`, `Halt`, `Done`) cannot
afford that, so `direct_init` replaces it with one that stores into `self.__dict__`, which a
frozen dataclass's `__setattr__` does not guard:

    @direct_init
    @dataclass(frozen=True)
    class Halt:
        status: SagaStatus

The new `__init__` is generated from `dataclasses.fields(cls)` the way dataclasses generates
its own (source text, compiled once per class): the same parameters in field order, positional
or keyword, the same defaults and `default_factory` calls, so it reads exactly like the one
that used to be written by hand per class and costs what it did. Everything else (frozenness,
`__eq__`, `__hash__`, `__repr__`, `replace`) is the dataclass's own.

What it refuses, with a TypeError at class creation: a class that is not a frozen dataclass
(a plain one has no reason to avoid its generated `__init__`), a slotted one (no `__dict__`
to write), one with `__post_init__`, `InitVar` fields, `init=False` or keyword-only fields
(the generated `__init__` would have to do more, and no hot record needs it).

Pure: it imports nothing but `dataclasses`, `inspect` (which dataclasses imports anyway)
and `typing`, so the core may use it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, TypeVar

__all__ = ["direct_init"]

T = TypeVar("T")


class _FactorySentinel:
    """The default a `default_factory` parameter shows: "call the factory" (as dataclasses)."""

    def __repr__(self) -> str:
        return "<factory>"


_HAS_FACTORY = _FactorySentinel()
_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD


def direct_init(cls: type[T]) -> type[T]:
    """Give the frozen dataclass `cls` an `__init__` that writes its `__dict__` directly.

    Apply it over `@dataclass(frozen=True)`. Raises TypeError for a class it cannot serve
    (see the module docstring).
    """
    name = getattr(cls, "__qualname__", repr(cls))
    params = getattr(cls, "__dataclass_params__", None)
    if params is None:
        raise TypeError(
            f"direct_init: {name} is not a dataclass; put @direct_init over @dataclass(frozen=True)"
        )
    if not params.frozen:
        raise TypeError(
            f"direct_init: {name} is not frozen; a plain dataclass's own __init__ is as cheap"
        )
    if "__slots__" in cls.__dict__:
        raise TypeError(
            f"direct_init: {name} is slotted and has no __dict__ to write; use the dataclass's "
            "own __init__ (a slotted, non-frozen record is as cheap, like saga.Event)"
        )
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"direct_init: {name} has __post_init__, which it would not call")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]  # checked: a dataclass
    # What the dataclass generated tells InitVar, init=False and keyword-only fields apart
    # without dataclasses' private markers: it must take exactly the fields, by position.
    taken = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if [(p.name, p.kind) for p in taken] != [(f.name, _POSITIONAL) for f in fields]:
        raise TypeError(
            f"direct_init: {name} has InitVar, init=False or keyword-only fields, which it "
            "does not take"
        )
    setattr(cls, "__init__", _build_init(cls, fields))  # noqa: B010  # mypy: a method
    return cls


def _build_init(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> Any:
    """Compile the `__init__` for `fields`, as dataclasses compiles its own."""
    names = {f.name for f in fields}
    # The function's own names must not be a field's (a field called `self` is allowed).
    self_name, dict_name = "self", "d"
    while self_name in names:
        self_name = "_" + self_name
    while dict_name in names or dict_name == self_name:
        dict_name = "_" + dict_name
    # Globals of the generated function: names no field takes (a field `_factory_y` or
    # `_HAS_FACTORY` would shadow a plain one), as dataclasses' own `__dataclass_..__`.
    sentinel = "__direct_init_HAS_FACTORY__"
    namespace: dict[str, Any] = {sentinel: _HAS_FACTORY}
    params, body = [self_name], []
    if len(fields) == 1:
        dict_name = f"{self_name}.__dict__"  # one store: a local would cost a STORE and a LOAD
    else:
        body.append(f"    {dict_name} = {self_name}.__dict__")
    for f in fields:
        if f.default_factory is not dataclasses.MISSING:
            factory = f"__direct_init_factory_{f.name}__"
            namespace[factory] = f.default_factory
            params.append(f"{f.name}={sentinel}")
            value = f"{factory}() if {f.name} is {sentinel} else {f.name}"
        else:
            if f.default is not dataclasses.MISSING:
                default = f"__direct_init_default_{f.name}__"
                namespace[default] = f.default
                params.append(f"{f.name}={default}")
            else:
                params.append(f.name)
            value = f.name
        body.append(f"    {dict_name}[{f.name!r}] = {value}")
    if not fields:
        body.append("    pass")
    source = f"def __init__({', '.join(params)}):\n" + "\n".join(body) + "\n"
    exec(source, namespace)  # our own text, built from field names only
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = {f.name: f.type for f in fields} | {"return": None}
    return init
