"""Per-app Prometheus metrics on prometheus_client: counters, latency histograms, gauges.

Each server app (edge, gateway, API) keeps its own `Metrics`: its own `CollectorRegistry`
rather than the process-global one, so that several apps in one process (tests, a stack in
threads) never collide on a metric name. A metric is declared once with `describe` (its kind,
help text and label names), then `inc` and `observe` feed it; `render` is the text exposition
(`CONTENT_TYPE`), with gauges computed at scrape time (pool health, queue depth) appended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import exposition as _exposition
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Metrics", "GaugeSample"]

#: Latency buckets in seconds (1 ms to 10 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The text exposition format's content type (what prometheus_client's own server sends).
CONTENT_TYPE: str = _exposition.CONTENT_TYPE_PLAIN_0_0_4

GaugeSample = tuple[str, str, Mapping[str, str], float]
"""(name without the prefix, help text, labels, value): one gauge sample computed at scrape."""

LabelsArg = Mapping[str, str] | Sequence[tuple[str, str]]


class _Gauges(Collector):
    """Gauge families built from samples given at scrape time (one family per name)."""

    def __init__(self, prefix: str, samples: Iterable[GaugeSample]) -> None:
        self.prefix = prefix
        self.samples = samples

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for name, text, labels, value in self.samples:
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(
                    self.prefix + name, text, labels=sorted(labels)
                )
            family.add_metric([str(labels[k]) for k in sorted(labels)], value)
        return list(families.values())


class Metrics:
    """One app's counters and histograms, under a common name `prefix`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}

    def describe(self, name: str, kind: str, text: str, labels: Sequence[str] = ()) -> None:
        """Declare metric `name` (without the prefix) of `kind` ("counter" or "histogram")
        with its label names; declaring a name again keeps the first declaration."""
        if name in self._counters or name in self._histograms:
            return
        full = self.prefix + name
        if kind == "counter":
            self._counters[name] = Counter(full, text, list(labels), registry=self.registry)
        elif kind == "histogram":
            self._histograms[name] = Histogram(
                full, text, list(labels), registry=self.registry, buckets=LATENCY_BUCKETS
            )
        else:
            raise ValueError(f"metric kind {kind!r}: 'counter' or 'histogram'")

    def inc(self, name: str, labels: LabelsArg = (), value: float = 1.0) -> None:
        """Add `value` to counter `name` (declared with `describe`)."""
        counter = self._counters[name]
        values = dict(labels)
        (counter.labels(**values) if values else counter).inc(value)

    def observe(self, name: str, seconds: float, labels: LabelsArg = ()) -> None:
        """Record one latency in histogram `name` (declared with `describe`)."""
        histogram = self._histograms[name]
        values = dict(labels)
        (histogram.labels(**values) if values else histogram).observe(seconds)

    def counter_value(self, name: str, labels: LabelsArg = ()) -> float:
        """Current value of a counter series (0 if never incremented)."""
        value = self.registry.get_sample_value(f"{self.prefix}{name}", dict(labels))
        return 0.0 if value is None else value

    def render(self, gauges: Iterable[GaugeSample] = ()) -> str:
        """The text exposition: every declared metric, then `gauges`."""
        text = generate_latest(self.registry)
        extra = CollectorRegistry(auto_describe=False)
        extra.register(_Gauges(self.prefix, gauges))
        return (text + generate_latest(extra)).decode()
