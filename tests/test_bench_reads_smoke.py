"""benchmarks/bench_reads.py still runs: tiny durations with its Python client (no wrk
needed), its JSON has the ratios the benchmark runner reads, and every GET answered 200.

Not a measurement; it keeps the benchmark from rotting between the runs made on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_reads_runs_and_reports_its_ratios() -> None:
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "bench_reads.py"), "--seconds", "0.3",
            "--sagas", "3", "--rounds", "1", "--connections", "4", "--client", "python",
            "--no-pin", "--json",
        ],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["client"] == "python" and report["pinned"] is False
    for case in ("bare", "bare_same_server", "api_get", "api_healthz"):
        assert report[case]["rps"] > 0 and report[case]["non_2xx"] == 0
    assert report["get_over_bare"] > 0 and report["get_over_bare_same_server"] > 0
