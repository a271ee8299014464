"""benchmarks/bench_postgres.py still runs: tiny counts, its JSON has the fields its README
section quotes, the guarantee holds on both sides, and its cluster and workers are gone.

Not a measurement (the counts are far too small for rates to mean anything); it keeps the
benchmark from rotting between the runs someone makes on purpose.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_postgres.py"


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes naming `text` (a cluster's temp folder, say)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_bench_postgres_runs_and_reports_its_fields() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable, str(SCRIPT), "--count", "5", "--warmup", "1", "--check", "2",
            "--http-count", "3", "--workers", "1", "--concurrency", "2",
            "--latency-ms", "0", "--time-limit", "30", "--json",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)

    assert len(result["load_start"]) == 3 and len(result["load_end"]) == 3
    # dbos comes with the bench extra; without it the script leaves DBOS out, and says so.
    with_dbos = importlib.util.find_spec("dbos") is not None
    for side in ("sagalab", "dbos") if with_dbos else ("sagalab",):
        report = result[side]
        assert report["sagas"] == 5 and report["sagas_per_second"] > 0
        assert report["guarantee_checked_sagas"] == 2
        assert report["guarantee_violations"] == []
        assert report["client"]["statements_per_saga"] > 0
        assert report["client"]["round_trips_per_saga"] > 0
    # sagalab's durable path: the saga with its first start, then one append per step.
    assert result["sagalab"]["client"]["round_trips_per_saga"] == 4
    if result["pg_stat_statements"]:
        assert result["sagalab"]["server"]["statements_per_saga"] == 4
    if with_dbos:
        assert result["ratio"] > 0 and isinstance(result["meets_target"], bool)
    (run,) = result["workers"]["runs"]
    assert run["workers"] == 1 and run["sagas"] == 3 and run["sagas_per_second"] > 0
    assert set(run["cpu_ms_per_saga"]) == {"workers", "services", "postgres"}
    assert not Path(result["workdir"]).exists()
    assert _processes_mentioning(result["workdir"]) == []  # cluster and workers stopped
