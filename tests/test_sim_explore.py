"""`sagalab simulate explore`: seeded crash and delivery orderings through the saga driver.

The shipped checkout flow survives 1000 seeds of faults; a planted bug is found at its smallest
failing seed, whose printed replay command reproduces it in another process; the same seed
gives the same result in two processes; bad input is one line and exit 2.
"""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from explorelab import plant
from typer.testing import CliRunner

from sagalab.cli.simulate import app
from sagalab.orchestrator.flowfile import load_flow
from sagalab.simulator.explore import MAX_SEEDS, FaultKind, Setup, run_seed
from sagalab.simulator.explore_checks import check_seed, explore

ROOT = Path(__file__).resolve().parents[1]
LAB = str(Path(__file__).with_name("explorelab.py"))
runner = CliRunner()


def sagalab(*args: str, bug: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own (with `bug` planted, through explorelab.py)."""
    command = [sys.executable, LAB, bug, *args] if bug else [sys.executable, "-m", "sagalab", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def checkout() -> Setup:
    return Setup(load_flow("checkout"), {})


def test_a_thousand_seeds_of_checkout_break_no_invariant() -> None:
    found = explore(checkout(), range(1, 1001), random.Random)
    assert found.failing_seed is None, found.to_dict()
    assert found.seeds == 1000 and found.sagas == 2000
    # Every kind of fault was met, and every way a saga may end was reached.
    assert set(found.faults) == {k.value for k in FaultKind}
    assert found.outcomes["completed"] and found.outcomes["rolled_back"]
    assert found.fenced_writes > 0  # old holders woke up and were refused


@pytest.mark.parametrize(
    ("bug", "invariant"),
    [
        ("forward-compensation", "compensation_order"),
        ("no-fence", "write_under_lost_lease"),
    ],
    ids=["forward-compensation", "no-fence"],
)
def test_a_planted_bug_is_found_at_its_smallest_seed_and_replays(
    bug: str, invariant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = sagalab("simulate", "explore", "checkout", "--seeds", "1000", bug=bug)
    assert shown.returncode == 1, shown.stderr
    out = shown.stdout
    assert "VIOLATION at seed" in out and invariant in out and "fault schedule" in out
    seed = int(out.split("VIOLATION at seed ")[1].split()[0])
    replay = out.split("replay: ")[1].strip()
    assert replay == f"sagalab simulate explore checkout --seed {seed} --replay"

    # The smallest: every seed before it passes with the same bug.
    with monkeypatch.context() as patched:
        plant_in(patched, bug)
        earlier = explore(checkout(), range(1, seed), random.Random)
        assert earlier.failing_seed is None

    # The printed command, run in another process with the same bug, shows the violation ...
    again = sagalab(*shlex.split(replay)[1:], bug=bug)
    assert again.returncode == 1, again.stderr
    assert f"VIOLATION {invariant}" in again.stdout
    # ... which is the bug's: without it the same seed passes.
    clean = sagalab(*shlex.split(replay)[1:])
    assert clean.returncode == 0 and "no invariant broken" in clean.stdout, clean.stdout


def plant_in(patched: pytest.MonkeyPatch, bug: str) -> None:
    """`explorelab.plant`, undone when `patched` closes (it records both originals first)."""
    from sagalab.orchestrator import saga as saga_module
    from sagalab.orchestrator.saga import SagaState
    from sagalab.simulator import explore as module

    patched.setattr(SagaState, "next_to_compensate", SagaState.next_to_compensate)
    patched.setattr(saga_module, "INTERRUPTED", saga_module.INTERRUPTED)
    patched.setattr(module.JournalStore, "__init__", module.JournalStore.__init__)
    plant(bug)


def test_the_same_seeds_give_the_same_report_in_two_processes() -> None:
    """The CLI in another process (its own string hashing) against this one."""
    shown = sagalab("simulate", "explore", "checkout", "--seeds", "300", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    here = explore(checkout(), range(1, 301), random.Random).to_dict()
    assert {k: report[k] for k in here} == here and here["seeds"] == 300
    replay = sagalab("simulate", "explore", "checkout", "--seed", "17", "--replay", "--json")
    traced = run_seed(checkout(), 17, random.Random(17), trace=True)
    assert json.loads(replay.stdout)["trace"] == traced.trace and traced.trace


def test_a_seed_is_the_same_run_in_process() -> None:
    setup = checkout()
    a = run_seed(setup, 5, random.Random(5), trace=True)
    b = run_seed(setup, 5, random.Random(5), trace=True)
    assert a.trace == b.trace and a.ledger == b.ledger and a.journals == b.journals
    assert check_seed(setup.flow, a) == check_seed(setup.flow, b)


def test_a_scenario_explores_its_flow_and_services() -> None:
    result = runner.invoke(app, ["explore", "payments-outage", "--seeds", "50", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "scenario" and report["flow"] == "order" and report["seeds"] == 50


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["no-such-flow"], "no flow or scenario 'no-such-flow'"),
        (["checkout", "--seeds", "0"], "--seeds"),
        (["checkout", "--seeds", str(MAX_SEEDS + 1)], f"limit of {MAX_SEEDS}"),
        (["checkout", "--replay"], "--replay runs one seed"),
        (["checkout", "--sagas", "0"], "--sagas"),
        (["checkout", "--fault-rate", "1.5"], "--fault-rate"),
        (["BAD_YAML"], "not a readable YAML file"),
        (["BAD_SHAPE"], "BAD_SHAPE"),
        (["BAD_FLOW"], "BAD_FLOW"),
    ],
    ids=[
        "unknown",
        "zero-seeds",
        "too-many-seeds",
        "replay-without-seed",
        "zero-sagas",
        "rate-over-1",
        "malformed-yaml",
        "scenario-wrong-shape",
        "flow-invalid",
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], says: str, tmp_path: Path) -> None:
    files = {
        "BAD_YAML": "steps: [a, b\n",
        "BAD_SHAPE": "name: x\nservices: 3\n",
        "BAD_FLOW": "name: f\nversion: 1\nsteps: [{name: a}]\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = [str(tmp_path / a) if a in files else a for a in args]
    says = str(tmp_path / says) if says in files else says
    result = runner.invoke(app, ["explore", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_a_clean_run_prints_its_counts_and_exits_0() -> None:
    result = runner.invoke(app, ["explore", "checkout", "--seeds", "100", "--sagas", "3"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "explored 100 seed(s) of checkout" in out and "300 sagas, 3 per seed" in out
    assert "faults injected: crash_after_commit" in out and "seeds/min" in out
    assert "outcomes: completed" in out and out.rstrip().endswith("no invariant broken")


def test_a_violation_in_json_names_the_seed_schedule_and_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plant_in(monkeypatch, "forward-compensation")
    result = runner.invoke(app, ["explore", "checkout", "--seeds", "1000", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    seed = report["failing_seed"]
    assert report["seeds"] == seed  # it stopped at the first, smallest, failing seed
    assert {v["invariant"] for v in report["violations"]} >= {"compensation_order"}
    assert report["fault_schedule"] == [
        f.to_dict() for f in run_seed(checkout(), seed, random.Random(seed)).faults
    ]
    assert report["replay"] == f"sagalab simulate explore checkout --seed {seed} --replay"


def test_the_replay_command_carries_the_options_that_differ() -> None:
    from sagalab.cli.explore import replay_command

    options = {"sagas": 3, "fault_rate": 0.25, "max_faults": 4}
    assert replay_command("my flow.yaml", 5, options) == (
        "sagalab simulate explore 'my flow.yaml' --seed 5 --sagas 3 --replay"
    )


@pytest.mark.parametrize(
    ("bug", "invariant"),
    [
        ("forward-compensation", "compensation_order"),
        ("no-fence", "write_under_lost_lease"),
        ("interrupted-not-applied", "action_standing"),
    ],
    ids=["forward-compensation", "no-fence", "interrupted-not-applied"],
)
def test_each_planted_bug_breaks_its_invariant_within_a_thousand_seeds(
    bug: str, invariant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant_in(monkeypatch, bug)
    found = explore(checkout(), range(1, 1001), random.Random)
    assert found.failing_seed is not None
    assert invariant in {v.invariant for v in found.violations}, found.to_dict()
