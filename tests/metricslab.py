"""Reading Prometheus text exposition in tests (not a test module).

`scrape` parses with prometheus_client's own parser, so a test compares numbers, never the
formatting of a float.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, tuple[tuple[str, str], ...]]
"""(sample name, sorted label pairs)."""


def scrape(text: str) -> dict[Sample, float]:
    """Every sample of an exposition text: (name, sorted labels) -> value."""
    found: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def total(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, pairs), v in samples.items() if n == name and want <= set(pairs))
