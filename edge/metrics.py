"""A tiny Prometheus text-format registry: counters, gauges and latency histograms.

No dependency on prometheus_client: each server process keeps its own `Metrics` and renders
it on `GET /metrics`. Labels are fixed per sample (a sorted tuple of pairs); everything here
runs on one event loop or under the GIL with plain dict updates, which is enough for counters
that are only ever incremented.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

__all__ = ["LATENCY_BUCKETS", "Metrics", "render_gauges"]

#: Latency buckets in seconds (1 ms to 10 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Mapping[str, str] | Labels) -> Labels:
    items = labels.items() if isinstance(labels, Mapping) else labels
    return tuple(sorted((k, str(v)) for k, v in items))


def _fmt(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in pairs
    )
    return "{" + inner + "}"


class Metrics:
    """Counters and histograms of one process, rendered as Prometheus text."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._help: dict[str, tuple[str, str]] = {}
        self._counters: dict[str, dict[Labels, float]] = {}
        self._hists: dict[str, dict[Labels, list[float]]] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        """Register HELP/TYPE lines for `name` (without the prefix)."""
        self._help[name] = (kind, text)

    def inc(self, name: str, labels: Mapping[str, str] | Labels = (), value: float = 1.0) -> None:
        """Add `value` to a counter."""
        series = self._counters.setdefault(name, {})
        key = _labels(labels)
        series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, seconds: float, labels: Mapping[str, str] | Labels = ()) -> None:
        """Record one latency in a histogram."""
        series = self._hists.setdefault(name, {})
        key = _labels(labels)
        counts = series.get(key)
        if counts is None:
            # one slot per bucket, then +Inf, then the sum
            counts = series[key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def counter_value(self, name: str, labels: Mapping[str, str] | Labels = ()) -> float:
        """Current value of a counter series (0 if never incremented)."""
        return self._counters.get(name, {}).get(_labels(labels), 0.0)

    def render(self, gauges: Iterable[tuple[str, str, Mapping[str, str], float]] = ()) -> str:
        """Prometheus text: counters, histograms, then `gauges` (name, help, labels, value)."""
        lines: list[str] = []
        p = self.prefix
        for name, series in self._counters.items():
            kind, text = self._help.get(name, ("counter", name))
            lines += [f"# HELP {p}{name} {text}", f"# TYPE {p}{name} {kind}"]
            lines += [f"{p}{name}{_fmt(k)} {v:g}" for k, v in series.items()]
        for name, hist in self._hists.items():
            _, text = self._help.get(name, ("histogram", name))
            lines += [f"# HELP {p}{name} {text}", f"# TYPE {p}{name} histogram"]
            for key, counts in hist.items():
                running = 0.0
                for bound, n in zip(LATENCY_BUCKETS, counts, strict=False):
                    running += n
                    lines.append(
                        f"{p}{name}_bucket{_fmt(key, (('le', f'{bound:g}'),))} {running:g}"
                    )
                running += counts[len(LATENCY_BUCKETS)]
                lines.append(f"{p}{name}_bucket{_fmt(key, (('le', '+Inf'),))} {running:g}")
                lines.append(f"{p}{name}_sum{_fmt(key)} {counts[-1]:.6f}")
                lines.append(f"{p}{name}_count{_fmt(key)} {running:g}")
        lines += render_gauges(p, gauges)
        return "\n".join(lines) + "\n"


def render_gauges(
    prefix: str, gauges: Iterable[tuple[str, str, Mapping[str, str], float]]
) -> list[str]:
    """Gauge lines, with one HELP/TYPE header per metric name."""
    lines: list[str] = []
    seen: set[str] = set()
    for name, text, labels, value in gauges:
        if name not in seen:
            seen.add(name)
            lines += [f"# HELP {prefix}{name} {text}", f"# TYPE {prefix}{name} gauge"]
        lines.append(f"{prefix}{name}{_fmt(_labels(labels))} {value:g}")
    return lines
