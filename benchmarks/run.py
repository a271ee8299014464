"""Run the benchmarks, print one table of their ratios against their targets, and gate on
the last recorded results.

    python benchmarks/run.py [--quick] [--runs 3] [--only NAME ...] [--record] [--timeout S]
                             [--suite benchmarks/suite.toml] [--results benchmarks/results.json]

Each selected benchmark of the suite (benchmarks/suite.toml) runs `--runs` times as its own
process with `--json`; the runner reads each metric from that JSON and prints, per metric, the
median of the runs, their min - max, the target and whether the median meets it, next to the
median recorded in benchmarks/results.json for the same mode (quick or full). The gate: a
median below 70% of the recorded one fails the run, below 80% warns ("below" by the metric's
direction: for a latency, the recorded median over this one). `--record` writes this run's
medians, with the machine's description, as the new record.

Exit codes: 0 the gate passed (warnings and a missing record included); 1 a metric below 70% of
its record, or a benchmark crashed, timed out or left a metric out of its JSON; 2 bad input
(an unknown name, an unreadable suite or results file); 130 interrupted (Ctrl-C or SIGTERM:
the running benchmark is stopped and nothing is recorded).

Every run of a script is bounded by its timeout: it gets SIGINT (so its own cleanup stops its
servers), then SIGTERM, then SIGKILL for its whole process group.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sagalab.cli.signals import sigterm_raises

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAIL_BELOW = 0.7  # of the recorded median: the gate fails
WARN_BELOW = 0.8  # of the recorded median: the gate warns
GRACE_S = 10.0  # after SIGINT, before SIGTERM (and again before SIGKILL): cleanup time
EXIT_OK, EXIT_GATE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class BadInput(Exception):
    """The suite, the results file or an option is unusable; the message says which and why."""


# -- the suite ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One number a benchmark's JSON reports, with its target and direction."""

    name: str
    path: str  # dotted keys into the JSON
    target: float | None = None
    better: str = "higher"  # or "lower" (latencies)
    gate: bool = True  # False: shown, never fails or warns (too noisy)

    def meets(self, value: float) -> bool | None:
        """Whether `value` meets the target (None: no target)."""
        if self.target is None:
            return None
        return value >= self.target if self.better == "higher" else value <= self.target

    def score(self, value: float, recorded: float) -> float | None:
        """This value as a fraction of the recorded one, 1.0 meaning as good, lower worse
        (None: the record is not a positive number, so there is nothing to compare with)."""
        if not recorded > 0:
            return None
        if self.better == "higher":
            return value / recorded
        return recorded / value if value > 0 else math.inf


@dataclass(frozen=True)
class Benchmark:
    """A benchmark script and the metrics the runner reads from its --json."""

    name: str
    script: Path
    args: tuple[str, ...]
    full: tuple[str, ...]
    quick: tuple[str, ...]
    timeout: float
    quick_timeout: float
    metrics: tuple[Metric, ...]

    def command(self, quick: bool) -> list[str]:
        """The command line of one run."""
        extra = self.quick if quick else self.full
        return [sys.executable, str(self.script), *self.args, *extra]


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadInput(f"{where} must be a list of strings")
    return tuple(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise BadInput(f"{where} must be a positive number, got {value!r}")
    return float(value)


def load_suite(path: Path) -> list[Benchmark]:
    """The benchmarks of a suite file (see benchmarks/suite.toml); scripts are relative to it."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"cannot read the suite {path}: {exc}") from None
    suite = []
    for i, raw in enumerate(data.get("benchmark", [])):
        where = f"{path}: benchmark {raw.get('name', i)!r}"
        try:
            metrics = tuple(
                Metric(
                    name=str(m["name"]),
                    path=str(m["path"]),
                    target=None if "target" not in m else _number(m["target"], f"{where} target"),
                    better=str(m.get("better", "higher")),
                    gate=bool(m.get("gate", True)),
                )
                for m in raw.get("metric", [])
            )
            bench = Benchmark(
                name=str(raw["name"]),
                script=(path.parent / str(raw["script"])).resolve(),
                args=_strings(raw.get("args", []), f"{where} args"),
                full=_strings(raw.get("full", []), f"{where} full"),
                quick=_strings(raw.get("quick", []), f"{where} quick"),
                timeout=_number(raw.get("timeout", 900), f"{where} timeout"),
                quick_timeout=_number(raw.get("quick_timeout", 300), f"{where} quick_timeout"),
                metrics=metrics,
            )
        except KeyError as exc:
            raise BadInput(f"{where} has no {exc.args[0]!r}") from None
        if any(m.better not in ("higher", "lower") for m in metrics):
            raise BadInput(f'{where}: a metric\'s "better" must be "higher" or "lower"')
        suite.append(bench)
    if not suite:
        raise BadInput(f"the suite {path} names no benchmark")
    return suite


# -- running -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """A benchmark's runs: the values read per metric, and what went wrong, if anything."""

    bench: Benchmark
    values: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    started: str = ""  # UTC, ISO 8601


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """Stop a run and everything it started: SIGINT first (its finally blocks stop its
    servers), then SIGTERM, then SIGKILL, each to the whole process group."""
    for sig, grace in ((signal.SIGINT, GRACE_S), (signal.SIGTERM, GRACE_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            # The leader is gone; what it left in its group gets no grace.
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def _read(report: Any, path: str) -> float:
    """The number at a dotted path of a JSON object; KeyError or ValueError if it is not one."""
    value = report
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(path)
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{path} is {value!r}, not a number")
    return float(value)


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def run_once(bench: Benchmark, quick: bool, timeout: float, into: Outcome) -> None:
    """One run of a benchmark: its metrics go into `into.values`, a failure into `into.errors`."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryFile("w+") as err:
        # Its own session: a timeout or Ctrl-C stops its whole group, and the terminal's
        # Ctrl-C reaches the runner only, which then stops the run in order.
        proc = subprocess.Popen(
            bench.command(quick),
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            proc.communicate()
            into.errors.append(f"timed out after {timeout:g} s (stopped)")
            return
        except BaseException:  # Ctrl-C, SIGTERM: stop the run before unwinding
            _stop_group(proc)
            raise
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        into.errors.append(f"crashed (exit {proc.returncode}); its stderr ends:\n{_tail(stderr)}")
        return
    try:
        report = json.loads(out)
    except json.JSONDecodeError:
        into.errors.append(f"printed no JSON on stdout; its stdout starts: {out[:200]!r}")
        return
    for metric in bench.metrics:
        try:
            into.values.setdefault(metric.name, []).append(_read(report, metric.path))
        except KeyError:
            into.errors.append(f"its JSON has no {metric.path!r} ({metric.name})")
        except ValueError as exc:
            into.errors.append(f"its JSON's {exc}")


def run_benchmark(bench: Benchmark, runs: int, quick: bool, timeout: float | None) -> Outcome:
    """All runs of one benchmark, one after the other, with progress on stderr."""
    limit = timeout or (bench.quick_timeout if quick else bench.timeout)
    outcome = Outcome(bench, load_start=_load(), started=_now())
    for i in range(runs):
        started = time.monotonic()
        errors_before = len(outcome.errors)
        shown = [bench.script.name, *bench.command(quick)[2:]]
        log(f"[{bench.name} {i + 1}/{runs}] {' '.join(shown)} ...")
        run_once(bench, quick, limit, outcome)
        status = "failed" if len(outcome.errors) > errors_before else "ok"
        log(f"[{bench.name} {i + 1}/{runs}] {status} in {time.monotonic() - started:.1f} s")
    outcome.load_end = _load()
    return outcome


def _load() -> tuple[float, float, float]:
    one, five, fifteen = (round(x, 2) for x in os.getloadavg())
    return one, five, fifteen


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def log(message: str) -> None:
    """Progress on stderr: stdout carries the table."""
    print(message, file=sys.stderr, flush=True)


# -- the machine, the record and the gate ------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit or None,
    }


def load_results(path: Path) -> dict[str, Any]:
    """The recorded results ({} when there is no file yet)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(
            f"cannot read the recorded results {path}: {exc}; fix or remove the file "
            "(--record would overwrite it)"
        ) from None
    if not isinstance(data, dict):
        raise BadInput(f"the recorded results {path} are not a JSON object; fix or remove it")
    return data


def recorded_median(results: dict[str, Any], mode: str, bench: str, metric: str) -> float | None:
    """The recorded median of a metric for a mode, if there is one."""
    try:
        value = results[mode][bench]["metrics"][metric]["median"]
    except (KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    bench: str
    metric: Metric
    values: list[float]
    recorded: float | None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def verdict(self) -> str:
        """ok, WARN, FAIL, no record, not gated, or no value."""
        median = self.median
        if median is None:
            return "no value"
        if self.recorded is None:
            return "no record"
        score = self.metric.score(median, self.recorded)
        if score is None:
            return "no record"
        if not self.metric.gate:
            return "not gated"
        return "FAIL" if score < FAIL_BELOW else "WARN" if score < WARN_BELOW else "ok"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == math.inf:
        return "inf"
    size = abs(value)
    return (
        f"{value:,.0f}"
        if size >= 100
        else f"{value:.1f}"
        if size >= 10
        else f"{value:.2f}"
        if size >= 1
        else f"{value:.3f}"
    )


def render(rows: Sequence[Row], outcomes: Sequence[Outcome], mode: str) -> str:
    """The table, then each benchmark's errors."""
    head = (
        "benchmark",
        "metric",
        "median",
        "min - max",
        "target",
        "met",
        "recorded",
        "vs rec",
        "gate",
    )
    lines: list[tuple[str, ...]] = [head]
    for row in rows:
        m = row.metric
        met = m.meets(row.median) if row.median is not None else None
        target = (
            "-" if m.target is None else ("<= " if m.better == "lower" else ">= ") + _fmt(m.target)
        )
        spread = f"{_fmt(min(row.values))} - {_fmt(max(row.values))}" if row.values else "-"
        score = (
            m.score(row.median, row.recorded)
            if row.median is not None and row.recorded is not None
            else None
        )
        lines.append(
            (
                row.bench,
                m.name,
                _fmt(row.median),
                spread,
                target,
                "-" if met is None else "yes" if met else "NO",
                _fmt(row.recorded),
                "-" if score is None else f"{score:.0%}",
                row.verdict,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    numeric = {2, 3, 6, 7}
    out = [
        f"benchmarks ({mode}), median of runs; gate: FAIL below {FAIL_BELOW:.0%}, "
        f"WARN below {WARN_BELOW:.0%} of the recorded median"
    ]
    for line in lines:
        out.append(
            "  ".join(
                cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                for i, cell in enumerate(line)
            ).rstrip()
        )
    for outcome in outcomes:
        for error in outcome.errors:
            out.append(f"{outcome.bench.name}: {error}")
    return "\n".join(out)


def record(
    path: Path, results: dict[str, Any], mode: str, outcomes: Sequence[Outcome], runs: int
) -> list[str]:
    """Write the complete benchmarks of this run as the new record; the names written."""
    host = machine()
    written = []
    section = results.setdefault(mode, {})
    for outcome in outcomes:
        if outcome.errors:
            continue
        bench = outcome.bench
        section[bench.name] = {
            "date": outcome.started,
            "machine": {**host, "load_start": outcome.load_start, "load_end": outcome.load_end},
            "runs": runs,
            "command": [bench.script.name, *bench.command(mode == "quick")[2:]],
            "metrics": {
                m.name: {
                    "median": statistics.median(outcome.values[m.name]),
                    "min": min(outcome.values[m.name]),
                    "max": max(outcome.values[m.name]),
                    "values": outcome.values[m.name],
                    "target": m.target,
                    "better": m.better,
                }
                for m in bench.metrics
            },
        }
        written.append(bench.name)
    if written:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)  # atomic: an interrupted write leaves the old record whole
    return written


# -- the command -------------------------------------------------------------------------------


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the running benchmark is stopped in order; and SIGINT
    raises even when a shell started this in the background with SIGINT ignored."""

    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with sigterm_raises():  # the CLI's: one rule for SIGTERM
            yield
    finally:
        signal.signal(signal.SIGINT, previous_int)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per benchmark (default 3)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these benchmarks only")
    parser.add_argument("--quick", action="store_true", help="small counts: minutes, not an hour")
    parser.add_argument("--record", action="store_true", help="write this run as the new record")
    parser.add_argument("--timeout", type=float, help="seconds per run (default: the suite's)")
    parser.add_argument("--suite", type=Path, default=HERE / "suite.toml")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.runs < 1:
            raise BadInput("--runs must be at least 1")
        if args.timeout is not None and not args.timeout > 0:
            raise BadInput("--timeout must be a positive number of seconds")
        suite = load_suite(args.suite)
        names = [b.name for b in suite]
        unknown = [n for n in args.only or () if n not in names]
        if unknown:
            raise BadInput(
                f"no benchmark named {', '.join(unknown)}; the suite has: {', '.join(names)}"
            )
        selected = [b for b in suite if not args.only or b.name in args.only]
        results = load_results(args.results)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    mode = "quick" if args.quick else "full"
    host = machine()
    log(
        f"{len(selected)} benchmark(s) x {args.runs} run(s), {mode}; {host['cpu_count']} CPUs "
        f"({host['cpu_model']}), Python {host['python']}, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    outcomes = []
    try:
        with sigterm_as_interrupt():
            for bench in selected:
                outcomes.append(run_benchmark(bench, args.runs, args.quick, args.timeout))
    except KeyboardInterrupt:
        log("interrupted: the running benchmark was stopped; nothing recorded")
        return EXIT_INTERRUPTED
    rows = [
        Row(
            o.bench.name,
            m,
            o.values.get(m.name, []),
            recorded_median(results, mode, o.bench.name, m.name),
        )
        for o in outcomes
        for m in o.bench.metrics
    ]
    print(render(rows, outcomes, mode))
    print("load average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    missing = sorted({r.bench for r in rows if r.verdict == "no record"})
    if missing:
        print(
            f"no {mode} record in {args.results} for: {', '.join(missing)} "
            "(nothing to compare with)"
        )
    failed = [o.bench.name for o in outcomes if o.errors]
    regressed = [f"{r.bench}: {r.metric.name}" for r in rows if r.verdict == "FAIL"]
    warned = [f"{r.bench}: {r.metric.name}" for r in rows if r.verdict == "WARN"]
    if args.record:
        written = record(args.results, results, mode, outcomes, args.runs)
        print(f"recorded {', '.join(written) or 'nothing'} in {args.results}")
        if failed:
            print(f"not recorded (a run failed): {', '.join(failed)}")
    if warned:
        print(f"WARN, below {WARN_BELOW:.0%} of the record: " + "; ".join(warned))
    if regressed or failed:
        if regressed:
            print(f"FAIL, below {FAIL_BELOW:.0%} of the record: " + "; ".join(regressed))
        if failed:
            print(f"FAIL, benchmark(s) that did not complete: {', '.join(failed)}")
        return EXIT_GATE
    print("gate passed")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
