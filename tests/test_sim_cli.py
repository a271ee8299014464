"""`sagalab simulate` commands: outputs, exit codes and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagalab.cli.simulate import app
from sagalab.orchestrator.limits import MAX_SIM_REPLICAS

runner = CliRunner()


def test_list_names_every_scenario() -> None:
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0
    assert {"baseline", "retry-storm", "retry-storm-resilient"} <= set(json.loads(result.stdout))


def test_run_writes_report_csv_and_chart(tmp_path: Path) -> None:
    args = ["run", "baseline", "--duration", "8", "--seed", "5", "--out", str(tmp_path), "--json"]
    args += ["--set", "clients.0.rate.value=20"]
    result = runner.invoke(app, args)
    report = json.loads(result.stdout)
    assert report["seed"] == 5 and report["requests"]["legit"]["offered"] > 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["baseline-seed5.csv", "baseline-seed5.json", "baseline-seed5.png"]
    rows = list(csv.DictReader((tmp_path / "baseline-seed5.csv").read_text().splitlines()))
    assert {"t", "completed", "queue_depth", "replicas", "breaker_payments"} <= set(rows[0])
    assert (tmp_path / "baseline-seed5.png").read_bytes()[:4] == b"\x89PNG"
    # Short run: the claims (sized for 60 s) may not hold, which is exit code 1, never 2.
    assert result.exit_code in (0, 1)


def test_run_summary_table(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "payments-outage", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.stdout
    assert "Invariants and claims" in result.stdout and "FAIL" not in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "nope"], "no scenario 'nope'"),
        (["run", "baseline", "--set", "gateways.cont=3"], "unknown setting"),
        (["run", "baseline", "--set", "gateways.count=many"], "expects a number"),
        (["run", "baseline", "--duration", "-1"], "--duration: must be positive"),
        (["sweep", "baseline", "--grid", "nothing"], "expected key.path=v1,v2"),
    ],
    ids=["unknown-scenario", "bad-path", "bad-value", "bad-duration", "bad-grid"],
)
def test_bad_input_is_one_line_exit_2(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and lines[0].startswith("error:")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "text",
    ["name: x\nclients: [\n", "- just\n- a list\n", "services: {payments: {concurrency: -3}}\n"],
    ids=["unclosed", "not-a-mapping", "bad-value"],
)
def test_malformed_scenario_file(text: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


BAD_CLAIMS = [
    ("import", "__import__('os').system('true') == 0", "cannot parse"),
    ("power", "sagas.completed ** 99999999 > 1", "cannot parse"),
    ("unknown-breaker", "breakers.nope.opened >= 1", "'breakers.nope.opened'"),
    ("unknown-metric", "sagas.complete >= 1", "'sagas.complete'"),
    ("not-a-number", "sagas.completed >= lots", "'lots' is not a number"),
    ("huge-bound", "sagas.completed < 1e999", "not a finite number"),
    ("unknown-column", "window(1, end).nope > 0", "no column 'nope'"),
    ("bad-window", "window(1.2.3, end).completed > 0", "cannot parse"),
    ("reversed-window", "window(9, 2).completed > 0", "must start before it ends"),
    ("not-a-leaf", "sagas >= 1", "'sagas' is not a number"),
]


@pytest.mark.parametrize(
    ("check", "fragment"), [b[1:] for b in BAD_CLAIMS], ids=[b[0] for b in BAD_CLAIMS]
)
def test_a_malformed_claim_is_refused_before_the_run_and_named(
    check: str, fragment: str, tmp_path: Path
) -> None:
    """Was found late: the whole simulation ran, then the claim failed (exit 1)."""
    path = tmp_path / "claims.yaml"
    path.write_text(
        json.dumps(
            {
                "name": "x",
                "claims": [
                    {"text": "fine", "check": "sagas.created >= 0"},
                    {"text": "bad", "check": check},
                ],
            }
        )
    )
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error: claims[1]"), line
    assert fragment in line and check in line, line
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written
    assert "Traceback" not in result.output


def test_sweep_runs_every_combination(tmp_path: Path) -> None:
    args = ["sweep", "payments-outage", "--duration", "6", "--out", str(tmp_path)]
    args += ["--grid", "breakers.fail_max=3,10", "--grid", "services.payments.concurrency=8,32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "sweep-payments-outage.csv").read_text().splitlines()))
    assert [(r["breakers.fail_max"], r["services.payments.concurrency"]) for r in rows] == [
        ("3", "8"),
        ("3", "32"),
        ("10", "8"),
        ("10", "32"),
    ]


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("orchestrator.replicas", "0"),
        ("gateways.count", "x"),
        ("orchestrator.replicas", str(MAX_SIM_REPLICAS + 1)),
        ("clients.0.rate.value", "1e12"),
        ("clients.0.rate.value", "inf"),
    ],
    ids=["below-minimum", "not-a-number", "replicas-over-limit", "rate-over-limit", "infinite"],
)
def test_sweep_refuses_a_bad_grid_value_exactly_as_run_refuses_it(
    key: str, bad: str, tmp_path: Path
) -> None:
    ran = runner.invoke(app, ["run", "baseline", "--set", f"{key}={bad}", "--out", str(tmp_path)])
    # The bad value second: every combination is checked, not only the first.
    swept = runner.invoke(
        app, ["sweep", "baseline", "--grid", f"{key}=1,{bad}", "--out", str(tmp_path)]
    )
    assert ran.exit_code == swept.exit_code == 2
    assert ran.stderr == swept.stderr
    lines = swept.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert key.split(".0.")[0] in lines[0]
    assert list(tmp_path.iterdir()) == [], "nothing ran, nothing was written"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "baseline", "--duration", "1e9"], "--duration: 1,000,000,000 is over the limit"),
        (["run", "baseline", "--set", "drain=1e9"], "drain: 1,000,000,000 is over the limit"),
        (["run", "baseline", "--set", "gateways.count=5000"], "gateways.count: 5,000 is over"),
        (
            ["run", "baseline", "--set", "clients.0.rate.value=90000", "--duration", "3600"],
            "requests in 3600 s is over the limit",
        ),
        (
            ["run", "baseline", "--duration", "86400", "--set", "gateways.count=1000"]
            + ["--set", "balancer.health.interval=0.01"],
            "ticks), about 20.1 hours at ~120,000 events/s, is over the limit of 60,000,000",
        ),
        (["sweep", "baseline", "--grid", "seed=1,2", "--workers", "999"], "--workers 999"),
        (
            ["sweep", "baseline", "--grid", f"seed={','.join(map(str, range(40)))}"]
            + ["--grid", f"gateways.count={','.join(map(str, range(1, 31)))}"],
            "--grid: 1,200 runs is over the limit of 1,000",
        ),
    ],
    ids=[
        "duration",
        "drain",
        "gateways",
        "total-requests",
        "total-events",
        "sweep-workers",
        "sweep-runs",
    ],
)
def test_simulated_sizes_are_bounded_and_the_bound_is_named(
    args: list[str], fragment: str, tmp_path: Path
) -> None:
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines
