"""Files a run writes: the JSON report, the CSV time series and the PNG chart.

Each is written to a hidden temporary file beside it and renamed into place, so a full disk,
Ctrl-C or a crash mid-write never leaves a truncated file under the final name (a cut JSON
report, or a cut calibrated scenario that still parses as YAML).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_atomic", "write_chart", "write_csv", "write_json", "write_outputs"]


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` for a temporary path beside `path`, then rename it to `path`; the
    temporary file is removed if writing fails (OSError, Ctrl-C, anything)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(report: Mapping[str, Any], path: Path) -> Path:
    """The report as indented JSON."""
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_csv(series: Sequence[Mapping[str, float]], path: Path) -> Path:
    """One row per sampling interval; columns as in the first row."""
    buffer = io.StringIO(newline="")
    if series:
        writer = csv.DictWriter(buffer, fieldnames=list(series[0]))
        writer.writeheader()
        writer.writerows(series)
    text = buffer.getvalue()
    return write_atomic(path, lambda tmp: tmp.write_bytes(text.encode("utf-8")))


def _windows(ax: Any, faults: Sequence[Mapping[str, Any]], label: bool) -> None:
    colours = ["#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    for i, f in enumerate(faults):
        colour = colours[i % len(colours)]
        if f["end"] > f["start"]:
            ax.axvspan(f["start"], f["end"], color=colour, alpha=0.12, lw=0)
        else:
            ax.axvline(f["start"], color=colour, lw=1.5, ls="--")
        if label:
            ax.annotate(
                f["label"],
                xy=(f["start"], 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12 - 11 * (i % 3)),
                textcoords="offset points",
                fontsize=8,
                color=colour,
                fontweight="bold",
            )


def write_chart(
    report: Mapping[str, Any], series: Sequence[Mapping[str, float]], path: Path
) -> Path:
    """Throughput, latency, queue, replicas and breakers against time, fault windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [row["t"] for row in series]
    col = lambda name: [row.get(name, 0.0) for row in series]  # noqa: E731
    fig, axes = plt.subplots(5, 1, figsize=(11, 12), sharex=True, constrained_layout=True)
    scenario = report["scenario"]["name"]
    fig.suptitle(f"sagalab simulation: {scenario} (seed {report['seed']})", fontsize=13)
    faults = report.get("faults", [])

    ax = axes[0]
    ax.plot(t, col("legit_offered"), label="offered (customers)", color="#7f7f7f", lw=1)
    ax.plot(t, col("completed"), label="sagas completed", color="#2ca02c", lw=1.6)
    ax.plot(t, col("rolled_back"), label="rolled back", color="#ff7f0e", lw=1.2)
    ax.plot(t, col("failed"), label="failed", color="#d62728", lw=1.2)
    if any(col("rate_limited")):
        ax.plot(t, col("rate_limited"), label="rate-limited (429)", color="#bcbd22", lw=1)
    ax.set_ylabel("per second")
    ax.set_title("Throughput", loc="left", fontsize=10)
    ax.legend(loc="upper right", fontsize=8, ncol=3)
    if any(col("attacker_offered")):
        twin = ax.twinx()
        twin.plot(t, col("attacker_offered"), color="#000000", lw=0.8, ls=":", label="attack")
        twin.plot(t, col("blocked"), color="#9467bd", lw=0.8, ls="--", label="blocked (403)")
        twin.set_ylabel("attack req/s")
        twin.legend(loc="upper left", fontsize=8)

    ax = axes[1]
    for q, colour in (("e2e_p50", "#1f77b4"), ("e2e_p95", "#ff7f0e"), ("e2e_p99", "#d62728")):
        values = [v if v > 0 else float("nan") for v in col(q)]
        ax.plot(t, values, label=q.replace("e2e_", ""), color=colour, lw=1.3)
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.set_title("End-to-end saga latency (customers, by finish time)", loc="left", fontsize=10)
    ax.legend(loc="upper right", fontsize=8, ncol=3)

    ax = axes[2]
    ax.plot(t, col("queue_depth"), color="#1f77b4", lw=1.3, label="queue depth")
    ax.set_ylabel("sagas")
    ax.set_title("Queue between gateways and orchestrator", loc="left", fontsize=10)
    twin = ax.twinx()
    twin.plot(t, col("oldest_age"), color="#8c564b", lw=1, ls="--", label="oldest age (s)")
    twin.set_ylabel("oldest age (s)")
    ax.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)

    ax = axes[3]
    ax.step(
        t, col("replicas"), where="post", color="#2ca02c", lw=1.5, label="orchestrator replicas"
    )
    if any(col("replicas_starting")):
        ax.step(t, col("replicas_starting"), where="post", color="#98df8a", lw=1, label="starting")
    ax.step(
        t,
        col("gateways_healthy"),
        where="post",
        color="#17becf",
        lw=1.2,
        ls="--",
        label="gateways in rotation",
    )
    ax.set_ylabel("instances")
    ax.set_ylim(bottom=0)
    ax.set_title("Replicas and gateways", loc="left", fontsize=10)
    ax.legend(loc="upper right", fontsize=8, ncol=3)

    ax = axes[4]
    names = [
        k[len("breaker_") :] for k in (series[0] if series else {}) if k.startswith("breaker_")
    ]
    end = t[-1] if t else 0.0
    level = {"closed": 0.0, "half-open": 0.4, "open": 0.8}
    for i, name in enumerate(names):
        xs, ys = [0.0], [float(i)]
        for tr in report.get("breaker_transitions", []):
            if tr["service"] == name:
                xs.append(tr["t"])
                ys.append(i + level.get(tr["to"], 0.8))
        xs.append(end)
        ys.append(ys[-1])
        ax.step(xs, ys, where="post", lw=1.6)
    ax.set_yticks([i + 0.4 for i in range(len(names))], names, fontsize=8)
    ax.set_ylim(-0.2, max(len(names), 1) - 0.1)
    ax.set_title(
        "Circuit breakers (each line: low = closed, middle = half-open, high = open)",
        loc="left",
        fontsize=10,
    )
    ax.set_xlabel("simulated time (s)")
    axes[2].set_ylim(bottom=0, top=max(max(col("queue_depth"), default=0) * 1.1, 1.0))
    twin.set_ylim(bottom=0, top=max(max(col("oldest_age"), default=0) * 1.1, 0.1))

    for i, ax in enumerate(axes):
        _windows(ax, faults, label=i == 0)
        ax.grid(True, alpha=0.3)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    finally:
        plt.close(fig)
    return path


def write_outputs(
    report: Mapping[str, Any], series: Sequence[Mapping[str, float]], out: Path, stem: str
) -> list[Path]:
    """report JSON, series CSV and chart PNG in `out`, named after `stem`."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        written.append(write_json(report, out / f"{stem}.json"))
        written.append(write_csv(series, out / f"{stem}.csv"))
        written.append(write_chart(report, series, out / f"{stem}.png"))
    except BaseException:
        # All or nothing: a report without its series or chart is not a finished run.
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
