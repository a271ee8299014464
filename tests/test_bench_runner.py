"""benchmarks/run.py: one table of medians against targets, and the gate against the recorded
results (FAIL below 70%, WARN below 80%, a missing record said and passed), with a benchmark
that crashes, hangs or is interrupted stopped and reported without a traceback.

The benchmark here is a tiny fake script (its numbers come from the environment) in a suite
file of its own, run by the real runner as a real subprocess; one smoke test runs the real
suite's fastest benchmark (the simulator) once in --quick mode, another the explorer's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "benchmarks" / "run.py"

FAKE = """
import json, os, subprocess, sys, time
from pathlib import Path

counter = Path(os.environ["FAKE_COUNTER"])
n = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(n + 1))
values = [float(v) for v in os.environ.get("FAKE_VALUES", "10").split(",")]
mode = os.environ.get("FAKE_MODE", "ok")
print("fake benchmark: progress on stderr", file=sys.stderr)
if mode == "crash":
    raise RuntimeError("fake failure")
if mode == "hang":
    # A server it started, in its process group, that its own exit leaves behind.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(os.environ["FAKE_PIDS"]).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(120)
latency = float(os.environ.get("FAKE_LATENCY", "20"))
report = {"speed": {"ratio": values[n % len(values)]}, "latency_ms": latency}
if mode == "nometric":
    del report["speed"]
print(json.dumps(report))
"""

SUITE = """
[[benchmark]]
name = "fake"
script = "fake_bench.py"
args = ["--json"]
quick = ["--quick-flag"]
timeout = 60
quick_timeout = 60

[[benchmark.metric]]
name = "speed ratio"
path = "speed.ratio"
target = 9.0

[[benchmark.metric]]
name = "latency ms"
path = "latency_ms"
target = 30.0
better = "lower"

[[benchmark]]
name = "other"
script = "fake_bench.py"
args = []

[[benchmark.metric]]
name = "speed ratio"
path = "speed.ratio"
"""


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "fake_bench.py").write_text(FAKE)
    path = tmp_path / "suite.toml"
    path.write_text(SUITE)
    return path


def _run(
    tmp_path: Path, suite: Path, *args: str, timeout: float = 60, **fake: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FAKE_COUNTER": str(tmp_path / "counter"),
        "FAKE_PIDS": str(tmp_path / "pids"),
        **{f"FAKE_{k.upper()}": v for k, v in fake.items()},
    }
    results = ["--results", str(tmp_path / "results.json")]
    return subprocess.run(
        [sys.executable, str(RUNNER), "--suite", str(suite), *results, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _record(tmp_path: Path, ratio: float, latency: float = 20.0) -> None:
    """A recorded full run of the fake benchmark with these medians."""
    metrics = {"speed ratio": {"median": ratio}, "latency ms": {"median": latency}}
    results = {"full": {"fake": {"metrics": metrics}}}
    (tmp_path / "results.json").write_text(json.dumps(results))


def _row(stdout: str, metric: str) -> list[str]:
    """The table's line for a metric, split on runs of two or more spaces."""
    (line,) = [line for line in stdout.splitlines() if f"  {metric}  " in line]
    return re.split(r"\s{2,}", line.strip())


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for a parent that may never reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _no_runner_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert 'run.py", line' not in done.stdout + done.stderr


def test_table_shows_median_range_target_and_records_the_machine(
    tmp_path: Path, suite: Path
) -> None:
    done = _run(tmp_path, suite, "--only", "fake", "--record", values="8,12,10")
    assert done.returncode == 0, done.stdout + done.stderr
    row = _row(done.stdout, "speed ratio")
    # benchmark, metric, median, min - max, target, met, recorded, vs rec, gate
    assert row == ["fake", "speed ratio", "10.0", "8.00 - 12.0", ">= 9.00", "yes", "-", "-"] + [
        "no record"
    ]
    assert _row(done.stdout, "latency ms")[4:6] == ["<= 30.0", "yes"]
    assert "no full record" in done.stdout and "gate passed" in done.stdout
    assert (tmp_path / "counter").read_text() == "3"  # three runs by default

    recorded = json.loads((tmp_path / "results.json").read_text())["full"]["fake"]
    assert recorded["metrics"]["speed ratio"]["median"] == 10.0
    assert recorded["metrics"]["speed ratio"]["values"] == [8.0, 12.0, 10.0]
    assert recorded["runs"] == 3 and recorded["date"].startswith("20")
    host = recorded["machine"]
    assert host["cpu_count"] == os.cpu_count() and host["cpu_model"]
    assert len(host["load_start"]) == 3 and host["python"].count(".") == 2

    # The next run compares with that record.
    again = _run(tmp_path, suite, "--only", "fake", "--runs", "1", values="10")
    assert again.returncode == 0
    assert _row(again.stdout, "speed ratio")[6:] == ["10.0", "100%", "ok"]


@pytest.mark.parametrize(
    ("ratio", "latency", "code", "verdict", "metric"),
    [
        ("6.5", "20", 1, "FAIL", "speed ratio"),  # 65% of the record
        ("7.5", "20", 0, "WARN", "speed ratio"),  # 75%
        ("8.5", "20", 0, "ok", "speed ratio"),  # 85%
        ("10", "40", 1, "FAIL", "latency ms"),  # twice the recorded latency: 50%
        ("10", "26", 0, "WARN", "latency ms"),  # 20 / 26: 77%
    ],
    ids=["below-70-fails", "below-80-warns", "above-80-passes", "latency-fails", "latency-warns"],
)
def test_gate_against_the_record(
    tmp_path: Path, suite: Path, ratio: str, latency: str, code: int, verdict: str, metric: str
) -> None:
    _record(tmp_path, 10.0, latency=20.0)
    done = _run(tmp_path, suite, "--only", "fake", "--runs", "1", values=ratio, latency=latency)
    assert done.returncode == code, done.stdout + done.stderr
    assert _row(done.stdout, metric)[-1] == verdict
    if verdict == "FAIL":
        assert f"FAIL, below 70% of the record: fake: {metric}" in done.stdout
    if verdict == "WARN":
        assert f"WARN, below 80% of the record: fake: {metric}" in done.stdout
    _no_runner_traceback(done)


def test_a_missing_record_is_said_and_passes(tmp_path: Path, suite: Path) -> None:
    _record(tmp_path, 10.0)  # a full record only: --quick has none
    done = _run(tmp_path, suite, "--quick", "--runs", "1", values="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no quick record" in done.stdout and "fake, other" in done.stdout
    assert _row(done.stdout, "latency ms")[-1] == "no record"


def test_a_crashing_benchmark_is_reported_not_recorded(tmp_path: Path, suite: Path) -> None:
    _record(tmp_path, 10.0)
    before = (tmp_path / "results.json").read_text()
    done = _run(tmp_path, suite, "--only", "fake", "--runs", "2", "--record", mode="crash")
    assert done.returncode == 1
    assert "fake: crashed (exit 1)" in done.stdout
    assert "RuntimeError: fake failure" in done.stdout  # the tail of its stderr
    assert "did not complete: fake" in done.stdout and "not recorded" in done.stdout
    assert (tmp_path / "results.json").read_text() == before
    _no_runner_traceback(done)


def test_a_metric_left_out_of_the_json_fails(tmp_path: Path, suite: Path) -> None:
    done = _run(tmp_path, suite, "--only", "fake", "--runs", "1", mode="nometric")
    assert done.returncode == 1
    assert "its JSON has no 'speed.ratio'" in done.stdout
    assert _row(done.stdout, "speed ratio")[2] == "-"


def test_a_hanging_benchmark_times_out_and_its_group_is_stopped(
    tmp_path: Path, suite: Path
) -> None:
    started = time.monotonic()
    done = _run(tmp_path, suite, "--only", "fake", "--runs", "1", "--timeout", "2", mode="hang")
    assert done.returncode == 1
    assert "fake: timed out after 2 s" in done.stdout
    assert time.monotonic() - started < 30
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert not any(_alive(pid) for pid in pids)  # the script and the server it left
    _no_runner_traceback(done)


def test_ctrl_c_stops_the_running_benchmark(tmp_path: Path, suite: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FAKE_COUNTER": str(tmp_path / "counter"),
        "FAKE_PIDS": str(tmp_path / "pids"),
        "FAKE_MODE": "hang",
    }
    runner = subprocess.Popen(
        [sys.executable, str(RUNNER), "--suite", str(suite), "--only", "fake", "--record"]
        + ["--results", str(tmp_path / "results.json")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "pids").exists() or not (tmp_path / "pids").read_text():
            assert time.monotonic() < deadline, "the fake benchmark never started"
            time.sleep(0.05)
        runner.send_signal(signal.SIGINT)
        out, err = runner.communicate(timeout=30)
    finally:
        runner.kill()
    assert runner.returncode == 130
    assert "interrupted" in err and 'run.py", line' not in out + err
    assert not (tmp_path / "results.json").exists()
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert not any(_alive(pid) for pid in pids)


@pytest.mark.parametrize(
    ("args", "contents", "message"),
    [
        (["--only", "nope"], None, "no benchmark named nope; the suite has: fake, other"),
        (["--runs", "0"], None, "--runs must be at least 1"),
        (["--record"], "{not json", "fix or remove the file"),
    ],
    ids=["unknown-name", "no-runs", "corrupt-record"],
)
def test_bad_input_exits_2_and_keeps_the_record(
    tmp_path: Path, suite: Path, args: list[str], contents: str | None, message: str
) -> None:
    if contents is not None:
        (tmp_path / "results.json").write_text(contents)
    done = _run(tmp_path, suite, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "counter").exists()  # nothing ran
    if contents is not None:
        assert (tmp_path / "results.json").read_text() == contents
    _no_runner_traceback(done)


def test_the_real_suite_quick_smoke(tmp_path: Path) -> None:
    """The shipped suite parses, and its fastest benchmark runs once in --quick mode."""
    results = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--only", "simulator", "--quick", "--runs", "1"]
        + ["--results", str(results), "--record"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    row = _row(done.stdout, "full requests / M/M/1 customers")
    assert row[0] == "simulator" and float(row[2]) > 0 and row[4] == ">= 0.100"
    recorded = json.loads(results.read_text())["quick"]["simulator"]
    assert recorded["command"] == ["bench_simulator.py", "--json", "--duration", "60"]


def test_the_explore_benchmark_through_the_runner(tmp_path: Path) -> None:
    """`explore` runs once in --quick mode and meets its 1000 seeds/minute target (about 200
    times over here, so the check does not depend on the machine's speed); its counts are
    bounded (exit 2, argparse's usage and one error line)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--only", "explore", "--quick", "--runs", "1"]
        + ["--results", str(tmp_path / "results.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    row = _row(done.stdout, "checkout seeds explored / minute")
    assert row[0] == "explore" and row[4] == ">= 1,000" and row[5] == "yes", row
    bench = ROOT / "benchmarks" / "bench_explore.py"
    for bad in (["--seeds", "0"], ["--seeds", "100001"], ["--runs", "x"]):
        refused = subprocess.run(
            [sys.executable, str(bench), "--json", *bad],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2, refused.stderr
        assert refused.stdout == "" and "Traceback" not in refused.stderr
