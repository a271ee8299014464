"""Records whose `__init__` comes from `records.direct_init` keep their dataclass's contract.

A frozen dataclass's generated initialiser pays an `object.__setattr__` call per field; the
hot-path records (one or more per attempt or saga) get one from `direct_init` instead, which
writes the instance `__dict__`. These tests hold the decorator to a dataclass's behaviour
(defaults, factories, calls by keyword and position, frozenness, equality and hashing, the
TypeError of a wrong call, the classes it refuses) and each decorated record to its fields;
the list of records is checked against the sources, so a newly decorated class is held too.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sagalab.orchestrator.driver import Done
from sagalab.orchestrator.executors import AttemptContext, AttemptOutcome
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.records import direct_init
from sagalab.orchestrator.registry import StepCall
from sagalab.orchestrator.runner import RunResult
from sagalab.orchestrator.saga import Halt, Record
from sagalab.orchestrator.store import SagaRecord

ROOT = Path(__file__).resolve().parents[1]

DECORATED = [
    JournalEntry,
    SagaRecord,
    AttemptContext,
    AttemptOutcome,
    StepCall,
    RunResult,
    Record,
    Halt,
    Done,
]


@pytest.mark.parametrize("cls", DECORATED, ids=lambda c: c.__name__)
def test_the_initialiser_takes_every_field_in_order_with_its_default(cls: type) -> None:
    fields = dataclasses.fields(cls)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # minus self
    assert [p.name for p in params] == [f.name for f in fields]
    for param, field in zip(params, fields, strict=True):
        expected = (
            inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        )
        assert param.default == expected, field.name
        assert param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


@pytest.mark.parametrize("cls", DECORATED, ids=lambda c: c.__name__)
def test_it_sets_every_field_and_stays_frozen(cls: type) -> None:
    fields = dataclasses.fields(cls)
    values: dict[str, Any] = {f.name: object() for f in fields}  # a distinct value each
    by_keyword = cls(**values)
    by_position = cls(*values.values())
    for field in fields:
        assert getattr(by_keyword, field.name) is values[field.name]
        assert getattr(by_position, field.name) is values[field.name]
    assert by_keyword == by_position
    changed = dataclasses.replace(by_keyword, **{fields[0].name: "other"})
    assert getattr(changed, fields[0].name) == "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(by_keyword, fields[0].name, "other")


def test_every_decorated_class_in_the_sources_is_held_here() -> None:
    found = set()
    for path in ROOT.glob("*/**/*.py"):
        if path.parts[len(ROOT.parts)] in ("sagalab", "tests", ".venv"):
            continue  # sagalab/ links to the top-level folders
        source = path.read_text(encoding="utf-8")
        if "direct_init" not in source:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "direct_init" for d in node.decorator_list
            ):
                found.add(node.name)
    assert found == {cls.__name__ for cls in DECORATED}


# --- the decorator itself, against a plain frozen dataclass of the same fields -----------------


def _pair() -> tuple[type, type]:
    """The same record twice: as a plain frozen dataclass, and with `direct_init` over it."""

    def make() -> type:
        @dataclasses.dataclass(frozen=True)
        class Sample:
            a: int
            b: str = "b"
            c: list[int] = dataclasses.field(default_factory=list)
            d: Any = None
            kind: ClassVar[str] = "sample"  # not a field: neither takes it

        return Sample

    return make(), direct_init(make())


def test_it_takes_the_same_parameters_as_the_generated_initialiser() -> None:
    plain, fast = _pair()
    assert str(inspect.signature(fast.__init__)) == str(inspect.signature(plain.__init__))
    assert (
        fast.__init__.__qualname__
        == plain.__init__.__qualname__
        == "_pair.<locals>.make.<locals>.Sample.__init__"
    )


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1,), {}),
        ((1, "x"), {}),
        ((1, "x", [2], 3.0), {}),
        ((), {"a": 1, "d": "z"}),
        ((1,), {"c": [5], "b": "y"}),
    ],
    ids=["defaults", "two-positional", "all-positional", "keywords", "mixed"],
)
def test_calls_build_what_the_dataclass_builds(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    plain, fast = _pair()
    want, got = plain(*args, **kwargs), fast(*args, **kwargs)
    assert dataclasses.asdict(got) == dataclasses.asdict(want)
    assert repr(got).split("Sample", 1)[1] == repr(want).split("Sample", 1)[1]
    assert list(vars(got)) == [f.name for f in dataclasses.fields(fast)]  # every field, in order


def test_a_factory_is_called_per_instance_and_only_when_the_argument_is_missing() -> None:
    _, fast = _pair()
    first, second = fast(1), fast(2)
    assert first.c == [] and first.c is not second.c
    given = [7]
    assert fast(1, c=given).c is given


def test_equality_hash_and_replace_stay_the_dataclass_own() -> None:
    _, fast = _pair()
    one, same, other = fast(1, "x", None), fast(a=1, b="x", c=None), fast(2, "x", None)
    assert one == same and one != other
    assert hash(one) == hash(same)
    assert {one, same, other} == {one, other}
    changed = dataclasses.replace(one, a=5)
    assert (changed.a, changed.b, one.a) == (5, "x", 1)


def test_it_stays_frozen() -> None:
    _, fast = _pair()
    record = fast(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.a = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        del record.b


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1, "x", [], None, "extra"), {}), ((1,), {"a": 2}), ((1,), {"zz": 3})],
    ids=["missing", "too-many", "twice", "unknown-keyword"],
)
def test_a_wrong_call_raises_the_dataclass_type_error(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    plain, fast = _pair()
    with pytest.raises(TypeError) as want:
        plain(*args, **kwargs)
    with pytest.raises(TypeError) as got:
        fast(*args, **kwargs)
    assert str(got.value) == str(want.value)


def test_field_names_that_clash_with_its_own_locals_still_work() -> None:
    @direct_init
    @dataclasses.dataclass(frozen=True)
    class Odd:
        d: int
        _d: int = 2

    assert (Odd(1).d, Odd(1)._d, Odd(d=3, _d=4)._d) == (1, 2, 4)


def test_field_names_that_clash_with_its_globals_still_work() -> None:
    """Its globals were once plain names: a field `_factory_y` shadowed y's factory (`B()`
    called the int 0), a field `_HAS_FACTORY` left the factory's placeholder in `y`."""

    @direct_init
    @dataclasses.dataclass(frozen=True)
    class B:
        _factory_y: int = 0
        y: list[int] = dataclasses.field(default_factory=list)
        _default_z: int = 5
        z: int = 7
        _HAS_FACTORY: int = 1

    first, second = B(), B()
    assert first.y == [] and first.y is not second.y
    assert (first._factory_y, first._default_z, first.z, first._HAS_FACTORY) == (0, 5, 7, 1)
    assert B(3, [1], 4, 8, 9) == B(_factory_y=3, y=[1], _default_z=4, z=8, _HAS_FACTORY=9)


def _refused_classes() -> list[tuple[str, Any]]:
    class NotADataclass:
        a: int

    @dataclasses.dataclass
    class NotFrozen:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        a: int

    @dataclasses.dataclass(frozen=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True)
    class WithInitVar:
        a: int
        b: dataclasses.InitVar[int] = 0

    @dataclasses.dataclass(frozen=True)
    class NoInit:
        a: int
        b: int = dataclasses.field(default=0, init=False)

    @dataclasses.dataclass(frozen=True)
    class KeywordOnly:
        a: int
        b: int = dataclasses.field(default=0, kw_only=True)

    return [
        ("not a dataclass", NotADataclass),
        ("not frozen", NotFrozen),
        ("slotted", Slotted),
        ("__post_init__", PostInit),
        ("InitVar", WithInitVar),
        ("init=False", NoInit),
        ("keyword-only", KeywordOnly),
    ]


@pytest.mark.parametrize(("why", "cls"), [pytest.param(w, c, id=w) for w, c in _refused_classes()])
def test_it_refuses_what_it_cannot_serve(why: str, cls: type) -> None:
    with pytest.raises(TypeError, match=re.escape(why)) as refused:
        direct_init(cls)
    assert cls.__name__ in str(refused.value)
