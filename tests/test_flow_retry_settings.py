"""Retry settings in a flow file are checked when it loads: bad input, exit 2, never a saga.

A non-number, NaN, infinity or an absurd bound would otherwise reach the retry policy at run
time (a comparison with a string raises; a NaN delay or a year-long wait stalls the saga).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.orchestrator.errors import FlowValidationError
from sagalab.orchestrator.flow import flow_from_dict
from sagalab.orchestrator.policies.retry import RetryPolicy

runner = CliRunner()

BAD = {
    "max_attempts-text": ({"max_attempts": "3"}, "max_attempts"),
    "max_attempts-bool": ({"max_attempts": True}, "max_attempts"),
    "max_attempts-fraction": ({"max_attempts": 2.5}, "max_attempts"),
    "max_attempts-zero": ({"max_attempts": 0}, "max_attempts"),
    "max_attempts-absurd": ({"max_attempts": 10**12}, "max_attempts"),
    "initial_delay-nan": ({"initial_delay": math.nan}, "initial_delay"),
    "initial_delay-text": ({"initial_delay": "1s"}, "initial_delay"),
    "initial_delay-negative": ({"initial_delay": -1}, "initial_delay"),
    "max_delay-inf": ({"max_delay": math.inf}, "max_delay"),
    "max_delay-absurd": ({"max_delay": 1e12}, "max_delay"),
    "multiplier-nan": ({"multiplier": math.nan}, "multiplier"),
    "multiplier-below-one": ({"multiplier": 0.5}, "multiplier"),
    "multiplier-absurd": ({"multiplier": 1e6}, "multiplier"),
    "deadline-zero": ({"deadline": 0}, "deadline"),
    "deadline-nan": ({"deadline": math.nan}, "deadline"),
    "deadline-text": ({"deadline": "soon"}, "deadline"),
    "jitter-text": ({"jitter": "yes"}, "jitter"),
    "jitter-number": ({"jitter": 1}, "jitter"),
    # Decorrelated grows from the last wait, which a saga's journal does not keep.
    "jitter-decorrelated": ({"jitter": "decorrelated"}, "jitter decorrelated"),
}


def _flow(retry: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "f",
        "version": 1,
        "steps": [
            {
                "name": "reserve",
                "service": "inventory",
                "action": {"method": "POST", "path": "/reserve"},
                "compensation": {"method": "POST", "path": "/release"},
                "retry": retry,
            }
        ],
    }


@pytest.mark.parametrize("case", list(BAD))
def test_bad_retry_setting_is_a_validation_issue_naming_it(case: str) -> None:
    retry, field = BAD[case]
    with pytest.raises(FlowValidationError) as info:
        flow_from_dict(_flow(retry), source="flows/f.yaml")
    [issue] = info.value.issues
    assert issue.where == "step 'reserve'.retry", issue
    assert field in issue.message


@pytest.mark.parametrize("case", ["max_attempts-text", "initial_delay-nan", "max_delay-absurd"])
def test_run_with_a_bad_retry_setting_exits_2_and_stores_nothing(case: str, tmp_path: Path) -> None:
    flow = tmp_path / "f.yaml"
    flow.write_text(yaml.safe_dump(_flow(BAD[case][0])))
    db = tmp_path / "sagas.db"
    result = runner.invoke(app, ["orchestrate", "run", str(flow), "--db", str(db)])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert BAD[case][1] in result.stderr
    assert not db.exists()


def test_sensible_settings_still_load() -> None:
    flow = flow_from_dict(
        _flow({"max_attempts": 5, "initial_delay": 0.1, "max_delay": 60, "deadline": 3600}),
        source="f",
    )
    assert flow.steps[0].retry == RetryPolicy(
        max_attempts=5, initial_delay=0.1, max_delay=60, deadline=3600
    )


@pytest.mark.parametrize("kind", ["none", "full", "equal", True, False])
def test_a_step_names_a_jitter_kind(kind: object) -> None:
    flow = flow_from_dict(_flow({"max_attempts": 5, "jitter": kind}), source="f")
    expected = {True: "full", False: "none"}.get(kind, kind)  # type: ignore[call-overload]
    assert flow.steps[0].retry.jitter_kind == expected
