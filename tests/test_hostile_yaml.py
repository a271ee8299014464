"""Hostile YAML is refused in one line, quickly and in little memory (issue 13, outside
attacker's round): a 300-byte "billion laughs" scenario (aliases of aliases) took 3 GB and
never finished `simulate run` or `simulate explore`; a list nested 5,000 deep ended in a
RecursionError traceback, exit 1. `orchestrator.safeyaml.safe_load` bounds both."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sagalab.orchestrator.safeyaml import MAX_YAML_DEPTH, safe_load

ROOT = Path(__file__).resolve().parent.parent

# Memory capped, so a regression fails with MemoryError instead of eating the machine.
CAPPED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from sagalab.cli.main import app
sys.argv = ["sagalab", *sys.argv[1:]]
app()
"""


def laughs(levels: int = 9) -> str:
    """Nine lists of nine aliases of the level below: 9**levels strings when expanded."""
    value = "&a0 [" + ", ".join(['"lol"'] * 9) + "]"
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 8)
        value = f"&a{i} [{value}, {refs}]"
    return value


HOSTILE = {
    "laughs-claims": f"name: x\nclaims: {laughs()}\n",
    "laughs-quantiles": (
        f"name: x\nservices: {{payments: {{latency: {{dist: empirical, quantiles: {laughs()}}}}}\n"
    ),
    "deep": "name: x\nclaims: " + "[" * 5000 + "]" * 5000 + "\n",
    "self-alias": "name: x\nclaims: &a [*a]\n",
}


def cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CAPPED.format(cap=700 * 1024 * 1024), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )


@pytest.mark.parametrize("verb", ["run", "explore"])
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_scenario_is_refused_in_one_line(kind: str, verb: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.yaml"
    path.write_text(HOSTILE[kind], encoding="utf-8")
    started = time.monotonic()
    done = cli(["simulate", verb, str(path), *(["--out", str(tmp_path)] if verb == "run" else [])])
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "malformed YAML" in lines[0] or "not a readable YAML" in lines[0]
    assert time.monotonic() - started < 30


def test_safe_load_keeps_ordinary_aliases() -> None:
    text = "lat: &lat {dist: exponential, mean: 0.01}\na: *lat\nb: *lat\n"
    assert safe_load(text) == yaml.safe_load(text)


def test_safe_load_bounds_depth_and_expansion() -> None:
    ok = "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1)
    assert safe_load(ok) is not None
    with pytest.raises(yaml.YAMLError, match="nested more than"):
        safe_load("[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1))
    with pytest.raises(yaml.YAMLError, match="expands to more than"):
        safe_load(laughs())
    assert len(safe_load(laughs(3))) == 9  # small expansions are fine
