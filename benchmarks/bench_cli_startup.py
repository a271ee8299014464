"""CPU time of a `sagalab` command's start-up against `python3 -c pass` (run on demand).

Every command the operator types pays the CLI's imports before it does anything, and the test
suite starts the CLI as a subprocess hundreds of times. This runs each command `--runs` times
(alternating, so load changes hit all alike) and prints the mean user+system CPU of the child
process and its ratio to a bare interpreter's. CPU time, not wall time: the load of a shared
machine changes it less. Nothing here asserts a number; tests/test_cli_startup.py guards
which modules start-up imports.

    PYTHONPATH=$PWD python3 benchmarks/bench_cli_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CLI = [sys.executable, "-m", "sagalab.cli.main"]
CHECKOUT_INPUT = {"order_id": "o1", "customer_id": "c1", "sku": "s", "quantity": 1, "amount": 5}


def child_cpu(argv: list[str]) -> float:
    """User+system CPU seconds `argv` took, run once to its end (output discarded)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def commands(db: Path, saga_id: str) -> dict[str, list[str]]:
    """The commands measured, by label."""
    return {
        "python3 -c pass": [sys.executable, "-c", "pass"],
        "--help": [*CLI, "--help"],
        "orchestrate list": [*CLI, "orchestrate", "list", "--db", str(db)],
        "orchestrate status": [*CLI, "orchestrate", "status", saga_id, "--db", str(db)],
        "orchestrate events": [*CLI, "orchestrate", "events", saga_id, "--db", str(db)],
        "simulate run --help": [*CLI, "simulate", "run", "--help"],
        "demo --help": [*CLI, "demo", "--help"],
    }


def main() -> None:
    """Measure and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each command (1 - 100)")
    args = parser.parse_args()
    if not 1 <= args.runs <= 100:
        parser.error("--runs takes 1 to 100")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "small.db"
        made = subprocess.run(
            [*CLI, "orchestrate", "run", "checkout", "--db", str(db)]
            + ["--input", json.dumps(CHECKOUT_INPUT)],
            capture_output=True,
            text=True,
            check=True,
        )
        saga_id = made.stdout.strip()
        measured = commands(db, saga_id)
        totals = dict.fromkeys(measured, 0.0)
        for _ in range(args.runs):
            for label, argv in measured.items():
                totals[label] += child_cpu(argv)
    base = totals["python3 -c pass"] / args.runs
    print(f"load average {os.getloadavg()[0]:.2f}, {args.runs} runs each, mean CPU (user+sys)")
    for label, total in totals.items():
        mean = total / args.runs
        print(f"{label:22} {mean * 1000:7.0f} ms  {mean / base:5.1f}x python3 -c pass")


if __name__ == "__main__":
    main()
