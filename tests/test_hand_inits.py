"""Records whose `__init__` is written by hand for speed keep their dataclass's contract.

A frozen dataclass's generated initialiser pays an `object.__setattr__` call per field; the
hot-path records (one or more per attempt or saga) write theirs by hand instead. These tests
hold each one to its fields, so that a field added to the class but not to its `__init__`
(or given another default) fails here rather than in a store.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from sagalab.orchestrator.driver import Done
from sagalab.orchestrator.executors import AttemptContext, AttemptOutcome
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.registry import StepCall
from sagalab.orchestrator.runner import RunResult
from sagalab.orchestrator.saga import Halt, Record
from sagalab.orchestrator.store import SagaRecord

HAND_WRITTEN = [
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


@pytest.mark.parametrize("cls", HAND_WRITTEN, ids=lambda c: c.__name__)
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


@pytest.mark.parametrize("cls", HAND_WRITTEN, ids=lambda c: c.__name__)
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
