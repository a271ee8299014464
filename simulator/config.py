"""Scenarios: find, load, merge with defaults, override with `--set`, and read typed values.

A scenario is a YAML mapping; anything it leaves out comes from `simulator.defaults.DEFAULTS`.
Mappings merge key by key; `clients` entries and `services` entries each merge over a template
(the first default client, the default payments service), so a scenario can say just
`services: {payments: {concurrency: 8}}`. `Node` reads values with their dotted path, so every
error names the place to fix.

`configure()` is the one way a run (or each run of a sweep) gets its scenario: load, apply the
overrides, then `validate()`: the bounds of `orchestrator.limits` (simulated duration, arrival
rates, expected requests, replica counts), every typed read the model makes and every claim
(its syntax, its metric, its window), before anything runs. `simulate run` and `simulate
sweep` so refuse a bad value with the same message.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sagalab.orchestrator.limits import (
    MAX_SIM_DURATION,
    MAX_SIM_RATE,
    MAX_SIM_REPLICAS,
    MAX_SIM_REQUESTS,
    MAX_SIM_WORKERS,
)
from sagalab.orchestrator.safeyaml import safe_load

from .bounds import BOUNDS, NULL_BY_DEFAULT, check_numbers, estimate_events
from .claims import check as check_claims
from .defaults import DEFAULTS
from .errors import ScenarioError, ScenarioNotFound

__all__ = [
    "Node",
    "apply_override",
    "check_bounds",
    "check_seed",
    "configure",
    "list_scenarios",
    "load_scenario",
    "merge_defaults",
    "parse_value",
    "validate",
]

_CLIENT_TEMPLATE = DEFAULTS["clients"][0]
_SERVICE_TEMPLATE = DEFAULTS["services"]["payments"]


def _scenario_dir() -> Any:
    return resources.files("sagalab.simulator") / "scenarios"


def list_scenarios() -> dict[str, dict[str, Any]]:
    """Shipped scenarios by name, each as its raw YAML mapping."""
    out: dict[str, dict[str, Any]] = {}
    for entry in sorted(_scenario_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            raw = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
            out[entry.name[: -len(".yaml")]] = raw
    return out


# Mappings whose keys depend on a `kind` or `dist` inside them (a rate schedule, a latency
# distribution): their keys are checked where they are read, not against the defaults.
_OPEN = {"rate", "latency", "db_write", "write_latency", "read_latency"}


# Settings that take a number (their old meaning) or a distribution mapping.
_NUMBER_OR_DIST = {"service_time", "handle_time"}


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    open_ended = where.rsplit(".", 1)[-1] in _OPEN
    for key, value in over.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in base and not open_ended:
            # A misspelt setting would otherwise be ignored and the default silently used.
            known = ", ".join(sorted(str(k) for k in base))
            raise ScenarioError(path, f"unknown setting; known here: {known}")
        if key == "clients" and not where:
            if not isinstance(value, list):
                raise ScenarioError(path, "must be a list of client groups")
            out[key] = [_merge_client(v, f"{path}[{i}]") for i, v in enumerate(value)]
        elif key == "services" and not where:
            if not isinstance(value, Mapping):
                raise ScenarioError(path, "must be a mapping of service name to settings")
            merged = dict(out.get(key, {}))
            for name, svc in value.items():
                if svc is None:  # `shipping: null` removes a service (a flow step using it
                    merged.pop(name, None)  # is refused when the model is built)
                    continue
                merged[name] = _merge_item(
                    merged.get(name, _SERVICE_TEMPLATE), svc, f"{path}.{name}"
                )
            out[key] = merged
        elif key == "flow":
            out[key] = copy.deepcopy(value)  # a flow is replaced whole, never merged
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_item(template: dict[str, Any], value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ScenarioError(where, "must be a mapping")
    return _deep_merge(template, value, where)


def _merge_client(value: Any, where: str) -> dict[str, Any]:
    merged = _merge_item(_CLIENT_TEMPLATE, value, where)
    if value.get("population") is not None and "rate" not in value:
        # A closed population replaces the default open schedule (stating both is refused
        # where the group is read: `population.arrival_kind`).
        merged["rate"] = None
    return merged


def merge_defaults(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The full scenario: `raw` over the defaults."""
    return _deep_merge(DEFAULTS, raw, "")


def load_scenario(name_or_path: str) -> dict[str, Any]:
    """Load a shipped scenario by name or a YAML file by path, merged over the defaults."""
    if not name_or_path.strip():
        raise ScenarioNotFound(name_or_path, sorted(list_scenarios()))
    path = Path(name_or_path)
    entry = _scenario_dir() / f"{name_or_path}.yaml"
    shipped = path.suffix not in (".yaml", ".yml") and "/" not in name_or_path
    try:
        # A file wins; then a shipped name, so that a folder called `ddos` in the working
        # directory does not hide the shipped `ddos` (as `load_flow` does for flows).
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            source = str(path)
        elif shipped and entry.is_file():
            text = entry.read_text(encoding="utf-8")
            source = name_or_path
        elif path.is_dir():
            raise ScenarioError(name_or_path, "is a directory, not a scenario file")
        else:
            raise ScenarioNotFound(name_or_path, sorted(list_scenarios()))
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            str(path), f"is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError:  # a name too long for the file system, say: no such scenario
        raise ScenarioNotFound(name_or_path, sorted(list_scenarios())) from None
    try:
        raw = safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{source} {at}", f"malformed YAML: {problem}") from None
    if not isinstance(raw, Mapping):
        raise ScenarioError(source, "a scenario must be a YAML mapping")
    merged = merge_defaults(raw)
    merged.setdefault("source", source)
    return merged


def parse_value(text: str) -> Any:
    """A `--set` value: YAML scalars and flow collections (`3`, `0.5`, `true`, `[1, 2]`)."""
    try:
        return safe_load(text)
    except yaml.YAMLError:
        return text


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return "null"


def apply_override(config: dict[str, Any], assignment: str) -> None:
    """Apply one `key.path=value` in place; ScenarioError if the path or value does not fit.

    The path reaches into nested mappings and list items (`clients.0.retry.max_attempts`),
    and turns on a setting that is off (`clients.0.throttle.k=3` where `throttle` is null)."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ScenarioError(f"--set {assignment}", "expected key.path=value")
    parts = key.split(".")
    node: Any = config
    # A setting that is off by default (null: a throttle, a retry budget, a population,
    # `measure`) takes any key here, and the path turns it on (`clients.0.throttle.k=3`), as
    # the file would write `throttle: {k: 3}`; its keys and values are then checked where the
    # file's are (the bounds and the typed reads), so a misspelt key is still refused.
    pattern = ""  # the path as `bounds.BOUNDS` writes it: `clients[].throttle`
    for i, part in enumerate(parts[:-1]):
        child = _child(node, part, ".".join(parts[: i + 1]), missing_ok=pattern in NULL_BY_DEFAULT)
        pattern = _pattern(pattern, node, part)
        if child is None and pattern in NULL_BY_DEFAULT:
            child = {}
            node[part] = child
        node = child
    last = parts[-1]
    current = _child(node, last, key, missing_ok=pattern in NULL_BY_DEFAULT)
    value = parse_value(text)
    if _kind(current) == "number" and isinstance(value, str):
        # YAML 1.1 reads `1e6` and `inf` as strings: take them as the numbers they are, so
        # that the bounds say what is wrong with the value instead of a type error.
        with contextlib.suppress(ValueError):
            value = float(value)
    # null turns off a setting that is a mapping (`clients.0.throttle=null`, `rate=null` beside
    # a population); where a mapping is required, its typed read refuses the null.
    off = value is None and _kind(current) == "mapping"
    # A number or a distribution (`firewall.service_time`, `gateways.handle_time`).
    either = last in _NUMBER_OR_DIST and _kind(current) == "number" and _kind(value) == "mapping"
    if current is not None and _kind(current) != _kind(value) and not (off or either):
        raise ScenarioError(
            f"--set {key}", f"expects a {_kind(current)} (now {current!r}), got {text!r}"
        )
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _pattern(pattern: str, node: Any, part: str) -> str:
    """`pattern` one step further down `node[part]`, in `bounds.BOUNDS`'s notation."""
    if isinstance(node, list):
        return f"{pattern}[]"
    if pattern == "services":
        return "services.*"
    return f"{pattern}.{part}" if pattern else part


def _child(node: Any, part: str, where: str, *, missing_ok: bool = False) -> Any:
    """`node[part]`; ScenarioError naming `where` if there is no such setting (None for a
    missing key when `missing_ok`: inside a mapping that `--set` just turned on)."""
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ScenarioError(f"--set {where}", f"index {part!r} is not in a list of {len(node)}")
        return node[int(part)]
    if isinstance(node, Mapping):
        if part not in node:
            if missing_ok:
                return None
            known = ", ".join(sorted(str(k) for k in node))
            raise ScenarioError(f"--set {where}", f"unknown setting; known here: {known}")
        return node[part]
    raise ScenarioError(f"--set {where}", "is not a mapping or list")


class Node:
    """Typed, path-aware reads from a scenario mapping."""

    __slots__ = ("data", "path")

    def __init__(self, data: Any, path: str = "") -> None:
        self.data = data
        self.path = path

    def _where(self, key: str | int) -> str:
        return f"{self.path}.{key}" if self.path else str(key)

    def get(self, key: str, default: Any = None) -> Any:
        if not isinstance(self.data, Mapping):
            raise ScenarioError(self.path or "(top)", "must be a mapping")
        return self.data.get(key, default)

    def node(self, key: str) -> Node:
        value = self.get(key)
        if not isinstance(value, Mapping):
            raise ScenarioError(self._where(key), "must be a mapping")
        return Node(value, self._where(key))

    def items(self, key: str) -> list[Node]:
        value = self.get(key, [])
        if value is None:
            return []
        if not isinstance(value, list):
            raise ScenarioError(self._where(key), "must be a list")
        return [Node(v, f"{self._where(key)}[{i}]") for i, v in enumerate(value)]

    def num(
        self,
        key: str,
        *,
        min: float | None = None,
        max: float | None = None,
        positive: bool = False,
        default: Any = ...,
    ) -> float:
        value = self.get(key, None if default is ... else default)
        if default is not ... and value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ScenarioError(self._where(key), f"must be a number, got {value!r}")
        if math.isinf(value):
            raise ScenarioError(self._where(key), f"must be a finite number, got {value!r}")
        if positive and value <= 0:
            raise ScenarioError(self._where(key), f"must be positive, got {value!r}")
        if min is not None and value < min:
            raise ScenarioError(self._where(key), f"must be at least {min}, got {value!r}")
        if max is not None and value > max:
            raise ScenarioError(self._where(key), f"must be at most {max}, got {value!r}")
        return float(value)

    def int(self, key: str, *, min: int = 0, default: Any = ...) -> int:
        value = self.num(key, min=min, default=default)
        if value != int(value):
            raise ScenarioError(self._where(key), f"must be a whole number, got {value!r}")
        return int(value)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise ScenarioError(self._where(key), f"must be true or false, got {value!r}")
        return value

    def text(self, key: str, default: str | None = None, choices: Any = None) -> str:
        value = self.get(key, default)
        if not isinstance(value, str):
            raise ScenarioError(self._where(key), f"must be a string, got {value!r}")
        if choices is not None and value not in choices:
            raise ScenarioError(
                self._where(key), f"must be one of {sorted(choices)}, got {value!r}"
            )
        return value


def configure(
    scenario: str,
    sets: Sequence[str] = (),
    *,
    seed: int | None = None,
    duration: float | None = None,
) -> dict[str, Any]:
    """The scenario with every `key.path=value` of `sets` applied, validated; ScenarioError."""
    config = load_scenario(scenario)
    for item in sets:
        apply_override(config, item)
    validate(config, seed=seed, duration=duration)
    return config


def validate(
    config: dict[str, Any], *, seed: int | None = None, duration: float | None = None
) -> None:
    """Raise ScenarioError if `config` (run for `duration`, if given) is out of bounds, any
    value the model reads is missing or of the wrong type, or a claim could never be measured
    (`simulator.claims.check`); runs nothing."""
    _check_name(config.get("name"))
    check_seed(seed)
    check_bounds(config, duration=duration)
    from .model import Simulation  # the model imports this module
    from .report import shape_before_run

    # Building the model performs every typed read (and builds no more than the bounds allow).
    sim = Simulation(config, seed=seed, duration=duration)
    # Claims are checked against the report and series the run will have, before it runs.
    report, columns = shape_before_run(sim)
    check_claims(config.get("claims") or [], report, columns)


def check_seed(seed: int | None, where: str = "--seed") -> None:
    """A `--seed` is held to the bound of the scenario's own `seed` (`bounds.BOUNDS`): the
    option stands for `--set seed=N`, and a seed of any size was taken and written into the
    report's file name."""
    bound = BOUNDS["seed"]
    if seed is not None and not bound.low <= seed <= bound.high:
        raise ScenarioError(
            where, f"must be {bound.low:,.0f} to {bound.high:,.0f} ({bound.why}), got {seed}"
        )


#: A scenario's name is the stem of the files `run` writes: long names fail to be written.
MAX_NAME_LENGTH = 100


def _check_name(name: Any) -> None:
    """The name becomes `<name>-seed<N>.json` under `--out`: a path separator would write
    elsewhere (`name: ../x` wrote beside `--out`), an empty name a file called `-seed1.json`."""
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError("name", f"must be a non-empty text, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ScenarioError("name", f"is longer than {MAX_NAME_LENGTH} characters")
    if any(c in "/\\" or not c.isprintable() for c in name):
        raise ScenarioError(
            "name", f"{name!r}: a file name is made of it; no '/', '\\' or control characters"
        )


def _at_most(where: str, value: float, limit: float, why: str) -> None:
    if value > limit:
        raise ScenarioError(where, f"{value:,.10g} is over the limit of {limit:,.10g} ({why})")


def check_bounds(config: dict[str, Any], *, duration: float | None = None) -> None:
    """The bounds of `orchestrator.limits`: every number's own (`simulator.bounds`), then those
    of combinations (saga workers of all replicas, expected requests of the run, and the
    events the run will schedule: `bounds.estimate_events`)."""
    from .population import arrival_kind, population_settings  # they import this module
    from .schedule import segments

    check_numbers(config)
    root = Node(config)
    if duration is None:
        where, span = "duration", root.num("duration", positive=True)
    else:
        where, span = "--duration", duration
        if not math.isfinite(span) or span <= 0:
            raise ScenarioError(where, f"must be positive, got {span:g}")
    _at_most(where, span, MAX_SIM_DURATION, "simulated seconds: one day")
    _at_most("drain", root.num("drain", min=0.0), MAX_SIM_DURATION, "simulated seconds: one day")
    counts = [
        ("orchestrator.replicas", root.node("orchestrator").int("replicas", min=1)),
        ("orchestrator.autoscale.max", root.node("orchestrator").node("autoscale").int("max")),
        ("gateways.count", root.node("gateways").int("count", min=1)),
    ]
    for path, count in counts:
        _at_most(path, count, MAX_SIM_REPLICAS, "simulated processes")
    # Every saga worker of every replica is a SimPy process held for the whole run.
    workers = max(counts[0][1], counts[1][1]) * root.node("orchestrator").int("concurrency", min=1)
    _at_most(
        "orchestrator.concurrency",
        workers,
        MAX_SIM_WORKERS,
        "saga workers of all replicas: concurrency x the most replicas",
    )
    requests = 0.0
    for client in root.items("clients"):
        if arrival_kind(client) == "population":
            # At most one request per user per think time (each takes some time too).
            users, _, think = population_settings(client)
            requests += users * span / think
            continue
        for start, end, _, peak in segments(client.node("rate")):
            _at_most(f"{client.path}.rate", peak, MAX_SIM_RATE, "arrivals per second at peak")
            if start < span:
                requests += peak * (min(end, span) - start)
    if requests > MAX_SIM_REQUESTS:
        raise ScenarioError(
            "clients",
            f"up to {requests:,.0f} requests in {span:g} s is over the limit of "
            f"{MAX_SIM_REQUESTS:,} per run; lower the rates or the duration",
        )
    database = root.node("database")
    if database.flag("enabled", False):
        # Every request may create a saga whose client then reads its status `per_saga` times.
        reads = requests * database.node("reads").int("per_saga")
        if requests + reads > MAX_SIM_REQUESTS:
            raise ScenarioError(
                "database.reads.per_saga",
                f"up to {requests:,.0f} requests and {reads:,.0f} status reads in {span:g} s "
                f"is over the limit of {MAX_SIM_REQUESTS:,} per run; lower the reads, the "
                "rates or the duration",
            )
    # The flow is checked later, by its own rules: here only its length counts.
    flow = config.get("flow")
    steps = flow.get("steps") if isinstance(flow, Mapping) else None
    scale = root.node("orchestrator").node("autoscale")
    estimate = estimate_events(
        requests=requests,
        span=span,
        steps=len(steps) if isinstance(steps, list) else 0,
        client_groups=len(root.items("clients")),
        interval=root.num("interval", positive=True),
        gateways=max(counts[2][1], 1),
        health_interval=root.node("balancer").node("health").num("interval", positive=True),
        autoscale_interval=scale.num("interval", positive=True)
        if scale.flag("enabled", False)
        else None,
    )
    refusal = estimate.refusal()
    if refusal is not None:
        raise ScenarioError("scenario", refusal)
