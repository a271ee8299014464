"""`sagalab simulate validate`: what a scenario asks of the real stack, and sim against real.

The real run (`stack/realrun.py`) needs the scenario said in what the fake services can do:
`plan()` turns each service's latency, error and reject rates into standing faults and the
scenario's fault windows into timed ones, and refuses (ValidationRefused, exit 2) anything
the fake services cannot express. `compare()` then sets the two runs' figures side by side
with a two-sample Kolmogorov-Smirnov test on the end-to-end latencies and the stated
tolerance (`Tolerance`). No I/O, no clock, no randomness here.

How the real stack's own overhead is treated: each fake service answers after a fixed delay
equal to the scenario's median latency for it (the fake services add a fixed delay, not a
distribution: the spread, sigma, is not carried over), *plus* the real HTTP hops and commits
(edge, gateway, API, SQLite, the worker's pickup and calls). The model has only its own gateway
and database times for these (defaults, not fitted), so the CLI measures the stack's own path
on sagas run one at a time before the arrivals, and shifts every real end-to-end latency by
the model's own path less the stack's (`base_path_config`; either sign), printing both: what
is compared is what load, queues, faults and retries add to each. A scenario fitted by
`simulate calibrate` from the journal of this same stack already has the service calls' hops
in its latencies (calibrate measures each call as the worker saw it): validate it with
`--no-service-latency` so the fake services add nothing. The shift never includes service time
(the stack's path is each base saga's end-to-end latency less its calls' journaled durations,
the model's is run with its services answering at once), so a wrong service latency stays
wrong.
"""

from __future__ import annotations

import bisect
import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_VALIDATE_DURATION",
    "MAX_VALIDATE_DURATION",
    "MAX_VALIDATE_REQUESTS",
    "FaultAction",
    "Plan",
    "Tolerance",
    "ValidationRefused",
    "as_served",
    "base_path_config",
    "breaker_open_seconds",
    "compare",
    "histogram_samples",
    "ks_two_sample",
    "ks_within",
    "plan",
]

#: Seconds of arrivals on the real stack: short by default, bounded (the real run is wall
#: clock time on a shared machine).
DEFAULT_VALIDATE_DURATION = 20.0
MAX_VALIDATE_DURATION = 120.0
#: Sagas the real run may submit (rate x duration): the loopback stack's honest capacity.
MAX_VALIDATE_REQUESTS = 6000
#: The real stack serves these flows by name (orchestrator/examples).
REAL_FLOWS = ("checkout",)


#: What the real run cannot carry over from a scenario it accepts.
NOT_EXPRESSED = (
    "service latency spread: each fake service waits a fixed delay, the scenario's median "
    "less the stack's own call hop (the median call of the sagas run alone)",
    "the model's gateway, firewall and database times: the stack has its own (the real "
    "latencies are shifted by the model's path less the stack's, measured on sagas run alone)",
    "client retries of the submit and per-key rate limits: the load client sends once",
    "an outage as a refused connection: the fake services answer 503 with Retry-After (the "
    "outage's remaining seconds), so the model runs each outage window with `answer: 503`",
)


class ValidationRefused(Exception):
    """The scenario asks for something the real stack or the fake services cannot express."""


@dataclass(frozen=True)
class FaultAction:
    """At `at` seconds after the first arrival: post `spec` to `/_admin/faults`
    (`clear` False), or clear `service`'s faults and post its standing ones again (`clear`)."""

    at: float
    service: str
    spec: Mapping[str, Any] = field(default_factory=dict)
    clear: bool = False


@dataclass(frozen=True)
class Plan:
    """What the real run does: the flow, the arrival segments, the stack's size, the faults."""

    flow: str
    #: (start, end, rate) of Poisson arrivals, seconds from the first arrival.
    rates: tuple[tuple[float, float, float], ...]
    duration: float
    gateways: int
    workers: int
    concurrency: int
    breakers: dict[str, dict[str, float]]
    #: Faults in force from the start, by service (latency, error rate, reject rate).
    standing: dict[str, tuple[dict[str, Any], ...]]
    #: The scenario's fault windows, in time order.
    timed: tuple[FaultAction, ...]


def _median(latency: Mapping[str, Any], where: str) -> float:
    dist = latency.get("dist")
    if dist == "lognormal":
        return float(latency["median"])
    if dist == "exponential":
        return float(latency["mean"]) * math.log(2.0)
    if dist == "constant":
        return float(latency["value"])
    if dist == "uniform":
        return (float(latency["low"]) + float(latency["high"])) / 2.0
    if dist == "empirical":
        points = list(latency["quantiles"])
        return float(points[len(points) // 2])
    raise ValidationRefused(f"{where}: latency dist {dist!r} cannot be expressed")


def _database(node: Any) -> None:
    """The database block the real stack expresses: its own SQLite file, one writer, no
    replica, no cache, no status reads (the load client does not poll)."""
    if not isinstance(node, Mapping) or not node.get("enabled"):
        return
    if node.get("engine", "sqlite") != "sqlite":
        raise ValidationRefused("database.engine: the real run's stack uses SQLite")
    if (node.get("replicas") or {}).get("count", 0):
        raise ValidationRefused("database.replicas cannot be applied to the real stack")
    if (node.get("cache") or {}).get("enabled"):
        raise ValidationRefused("database.cache cannot be applied to the real stack")
    if (node.get("reads") or {}).get("per_saga", 0):
        raise ValidationRefused(
            "database.reads.per_saga: the real run's load client does not poll saga status"
        )


def plan(
    config: Mapping[str, Any],
    *,
    duration: float,
    segments: Sequence[tuple[float, float, float]],
    service_latency: bool = True,
) -> Plan:
    """The real run of `config` (merged with defaults) for `duration` s of arrivals given as
    `segments` (start, end, rate); ValidationRefused naming what cannot be expressed."""
    if not 0 < duration <= MAX_VALIDATE_DURATION:
        raise ValidationRefused(
            f"--duration {duration:g} is outside 0 to {MAX_VALIDATE_DURATION:g} s (the real "
            "run takes that long in wall-clock time)"
        )
    flow = config.get("flow") or {}
    name = flow.get("name")
    if name not in REAL_FLOWS:
        raise ValidationRefused(
            f"flow {name!r} is not served by the real stack; validate runs {', '.join(REAL_FLOWS)} "
            "(a scenario from `simulate calibrate` of the stack has it)"
        )
    clients = config.get("clients") or []
    if len(clients) != 1 or clients[0].get("kind", "legit") != "legit":
        raise ValidationRefused(
            "validate drives one group of legit clients; the scenario has "
            f"{len(clients)} group(s) (attackers and several groups are not expressed)"
        )
    if clients[0].get("interarrival") is not None:
        raise ValidationRefused(
            "clients[0].interarrival cannot be expressed: the real run's arrivals are Poisson"
        )
    rates = tuple((s, min(e, duration), r) for s, e, r in segments if s < duration and r > 0)
    requests = sum((e - s) * r for s, e, r in rates)
    if requests > MAX_VALIDATE_REQUESTS:
        raise ValidationRefused(
            f"about {requests:,.0f} sagas in {duration:g} s is over the real run's limit of "
            f"{MAX_VALIDATE_REQUESTS:,}; lower --duration or the rate"
        )
    _database(config.get("database"))
    for key, what in (
        ("crashes", "orchestrator.crashes"),
        ("regions", "regions"),
    ):
        node = config.get(key) if key != "crashes" else config["orchestrator"].get("crashes")
        if key == "crashes" and node:
            raise ValidationRefused(f"{what} cannot be applied to the real stack by validate")
        if key != "crashes" and isinstance(node, Mapping) and node.get("enabled"):
            raise ValidationRefused(f"{what}.enabled cannot be applied to the real stack")
    if config["gateways"].get("crashes"):
        raise ValidationRefused("gateways.crashes cannot be applied to the real stack by validate")
    if config["orchestrator"]["autoscale"].get("enabled"):
        raise ValidationRefused("orchestrator.autoscale cannot be applied to the real stack")
    services = config["services"]
    steps = flow.get("steps") or []
    used = [s["service"] for s in steps if s.get("service")]
    standing: dict[str, tuple[dict[str, Any], ...]] = {}
    for svc in used:
        node = services.get(svc)
        if node is None:
            raise ValidationRefused(f"services.{svc}: the flow calls it but it has no settings")
        faults: list[dict[str, Any]] = []
        if service_latency:
            ms = round(_median(node["latency"], f"services.{svc}.latency") * 1000)
            if ms > 0:
                faults.append({"service": svc, "latency_ms": ms})
        if node.get("error_rate", 0) > 0:
            faults.append({"service": svc, "error_rate": float(node["error_rate"]), "status": 503})
        if node.get("reject_rate", 0) > 0:
            faults.append({"service": svc, "error_rate": float(node["reject_rate"]), "status": 422})
        standing[svc] = tuple(faults)
    timed: list[FaultAction] = []
    windows: dict[str, list[tuple[float, float]]] = {}
    for i, f in enumerate(config.get("faults") or []):
        where = f"faults[{i}]"
        svc, kind = f.get("service"), f.get("kind")
        start, end = float(f["start"]), float(f["end"])
        if svc not in standing:
            raise ValidationRefused(f"{where}.service {svc!r} is not called by the flow")
        for s, e in windows.get(svc, []):
            if start < e and s < end:
                raise ValidationRefused(f"{where}: overlaps another fault window of {svc}")
        windows.setdefault(svc, []).append((start, end))
        if kind == "outage":
            if str(f.get("answer", "503")) != "503":
                raise ValidationRefused(
                    f"{where}.answer {f.get('answer')!r} cannot be expressed: the fake services "
                    "answer an outage with 503 and Retry-After (answer: 503)"
                )
            timed.append(FaultAction(start, svc, {"service": svc, "outage_seconds": end - start}))
        elif kind == "errors":
            rate = float(f.get("rate", 1.0))
            timed.append(FaultAction(start, svc, {"service": svc, "error_rate": rate}))
            timed.append(FaultAction(end, svc, clear=True))
        else:
            raise ValidationRefused(
                f"{where}.kind {kind!r} cannot be expressed by the fake services (they add a "
                "fixed latency, not a factor); validate supports outage and errors windows"
            )
    breakers = config["breakers"]
    if not breakers.get("enabled", True):
        raise ValidationRefused(
            "breakers.enabled false cannot be applied: the real workers always have breakers"
        )
    configs = {
        svc: {
            "fail_max": int(breakers["fail_max"]),
            "reset_timeout": float(breakers["reset_timeout"]),
            "success_threshold": int(breakers["success_threshold"]),
        }
        for svc in standing
    }
    orch = config["orchestrator"]
    return Plan(
        flow=str(name),
        rates=rates,
        duration=duration,
        gateways=int(config["gateways"]["count"]),
        workers=int(orch["replicas"]),
        concurrency=int(orch["concurrency"]),
        breakers=configs,
        standing=standing,
        timed=tuple(sorted(timed, key=lambda a: a.at)),
    )


def as_served(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` for the model's half of validate: every outage window answers as the fake
    services do (`answer: 503`: a 503 with Retry-After the remaining seconds), not with the
    model's default refused connection. Without it the two runs differ by design: a refused
    call surely did not apply, a 503 may have, so the real saga refunds the charge and its
    refund waits for the open breaker (about one reset timeout), and the 503's Retry-After
    holds the retry until the outage ends."""
    out = copy.deepcopy(dict(config))
    out["faults"] = [
        {**f, "answer": "503"} if f.get("kind") == "outage" else dict(f)
        for f in out.get("faults") or []
    ]
    return out


def base_path_config(config: Mapping[str, Any], services: Iterable[str]) -> dict[str, Any]:
    """`config` with the flow's services answering at once, without errors or fault windows,
    at one saga a second: its simulated end-to-end latency is the model's own path (gateway,
    queue, commits), to set against the stack's (`stack.realrun`: end-to-end less the calls)."""
    out = copy.deepcopy(dict(config))
    for svc in services:
        node = out["services"][svc]
        node.update(latency={"dist": "constant", "value": 0.0}, error_rate=0.0, reject_rate=0.0)
    out["faults"] = []
    out["claims"] = []
    out["clients"] = [{**out["clients"][0], "rate": {"kind": "constant", "value": 1.0}}]
    return out


def ks_two_sample(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """The two-sample KS statistic D = sup |F_a - F_b| and its asymptotic p-value."""
    if not a or not b:
        return 1.0, 0.0
    xs, ys = sorted(a), sorted(b)
    n, m = len(xs), len(ys)
    i = j = 0
    d = 0.0
    while i < n and j < m:
        v = min(xs[i], ys[j])
        while i < n and xs[i] <= v:
            i += 1
        while j < m and ys[j] <= v:
            j += 1
        d = max(d, abs(i / n - j / m))
    effective = n * m / (n + m)
    lam = (math.sqrt(effective) + 0.12 + 0.11 / math.sqrt(effective)) * d
    if lam < 0.2:
        return d, 1.0
    total = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return d, min(1.0, max(0.0, total))


def ks_within(a: Sequence[float], b: Sequence[float], *, rel: float) -> float:
    """The KS statistic after allowing each sample's latencies to be `rel` (relative) slower
    than the other's: sup over x of F_a(x) - F_b(x(1 + rel)) and of F_b(x) - F_a(x(1 + rel)).

    Zero when each distribution is within that horizontal band of the other, so two narrow
    distributions a few percent apart (D = 1 for the plain KS test) agree, while a latency
    scale off by more than the band still gives D near 1 (a Levy-style distance)."""
    if not a or not b:
        return 1.0
    xs, ys = sorted(a), sorted(b)

    def gap(p: list[float], q: list[float]) -> float:
        n, m = len(p), len(q)
        # F_p jumps at its own points and F_q(x(1 + rel)) only grows, so the sup is at one of
        # p's points (counted with every equal point before it).
        return max(
            (bisect.bisect_right(p, x) / n - bisect.bisect_right(q, x * (1 + rel)) / m for x in p),
            default=0.0,
        )

    return max(0.0, gap(xs, ys), gap(ys, xs))


def histogram_samples(counts: Mapping[int, int], *, low: float, growth: float) -> list[float]:
    """The observations of a `simulator.metrics.Histogram` as values (the geometric centre of
    each bucket: about 1 % off the recorded value, far below what the KS bound tolerates)."""
    out: list[float] = []
    for index in sorted(counts):
        value = low * growth ** (index - 0.5) if index > 0 else low
        out.extend([value] * counts[index])
    return out


def breaker_open_seconds(
    transitions: Iterable[tuple[float, str, str]], *, until: float
) -> dict[str, float]:
    """Seconds each breaker spent away from closed (open or half-open) from 0 to `until`,
    from its transitions (t, service, new state) in time order."""
    since: dict[str, float] = {}
    total: dict[str, float] = {}
    for t, service, new in transitions:
        total.setdefault(service, 0.0)
        if new == "closed":
            if service in since:
                total[service] += max(0.0, min(t, until) - since.pop(service))
        elif service not in since:
            since[service] = max(0.0, t)
    for service, t in since.items():
        total[service] = total.get(service, 0.0) + max(0.0, until - t)
    return {k: round(v, 3) for k, v in sorted(total.items())}


@dataclass(frozen=True)
class Tolerance:
    """What "sim and real agree" means: relative error on the end-to-end p50 and p95, absolute
    difference of the completed and rolled-back shares, the KS D bound on the end-to-end
    latencies, and breaker open time within a share of the run plus one reset timeout."""

    latency_rel: float = 0.5
    share_abs: float = 0.05
    #: Loose on purpose: the fake services add a fixed delay, so the real latencies lack the
    #: model's spread (a point mass at the model's median alone gives D = 0.5), and the stack's
    #: CPU cost under load (not modelled) shifts them by a few ms. A wrong latency scale (10x)
    #: gives D near 1.
    ks_d: float = 0.7
    #: The KS D is taken after allowing the two sides' latencies to be this much apart
    #: (relative): the real stack on a busy machine runs a few percent slower than the model
    #: fitted before the burst, and two narrow distributions 3 % apart have D = 1.
    ks_shift: float = 0.1
    breaker_share: float = 0.25

    def describe(self) -> str:
        """One line for the report."""
        return (
            f"p50/p95 within {self.latency_rel:.0%} relative, or within the model's "
            "quantiles two standard errors of the rank away (widened as much), "
            "completed/rolled-back shares "
            f"within {self.share_abs:.0%} absolute or two standard errors of the difference "
            f"(whichever is larger), KS D <= {self.ks_d:g} with latencies allowed "
            f"{self.ks_shift:.0%} apart, breaker open time "
            f"within {self.breaker_share:.0%} of the run + one reset timeout"
        )


def _quantile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return 0.0
    data = sorted(xs)
    pos = q * (len(data) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def figures(
    e2e: Sequence[float],
    statuses: Mapping[str, int],
    breaker_open: Mapping[str, float],
    peak_depth: int,
) -> dict[str, Any]:
    """One side's figures: the same fields from the model's and the stack's runs."""
    created = sum(statuses.values())
    return {
        "sagas": created,
        "e2e_p50": round(_quantile(e2e, 0.5), 6),
        "e2e_p95": round(_quantile(e2e, 0.95), 6),
        "completed_share": round(statuses.get("completed", 0) / created, 4) if created else 0.0,
        "rolled_back_share": round(statuses.get("rolled_back", 0) / created, 4) if created else 0.0,
        "failed": statuses.get("failed", 0),
        "unfinished": statuses.get("unfinished", 0),
        "breaker_open_s": round(sum(breaker_open.values()), 3),
        "breaker_open_by_service": dict(breaker_open),
        "peak_queue_depth": peak_depth,
    }


def compare(
    sim: Mapping[str, Any],
    real: Mapping[str, Any],
    sim_e2e: Sequence[float],
    real_e2e: Sequence[float],
    *,
    tolerance: Tolerance,
    duration: float,
    reset_timeout: float,
) -> dict[str, Any]:
    """Each figure side by side with its check (None: reported only) and the KS test."""
    d, p = ks_two_sample(sim_e2e, real_e2e)
    rows: list[dict[str, Any]] = []

    def row(name: str, ok: bool | None, bound: str) -> None:
        rows.append(
            {"figure": name, "sim": sim[name], "real": real[name], "ok": ok, "bound": bound}
        )

    n_sim, n_real = sim["sagas"], real["sagas"]
    for name, q in (("e2e_p50", 0.5), ("e2e_p95", 0.95)):
        s, r = sim[name], real[name]
        rel = abs(r - s) / s if s > 0 else (0.0 if r == 0 else math.inf)
        # A quantile of a hundred sagas is itself uncertain, most where the latencies are
        # bimodal (completed against quickly rolled back): a share a few points off moves
        # the p50 from one mode to the other. The band is the model's quantiles two standard
        # errors of the rank away (the difference of two samples' q-th ranks), widened by the
        # stated relative error; either check passing is agreement.
        se = math.sqrt(q * (1 - q) * (1 / max(1, len(sim_e2e)) + 1 / max(1, len(real_e2e))))
        lo = _quantile(sim_e2e, max(0.0, q - 2 * se)) * (1 - tolerance.latency_rel)
        hi = _quantile(sim_e2e, min(1.0, q + 2 * se)) * (1 + tolerance.latency_rel)
        ok = rel <= tolerance.latency_rel or lo <= r <= hi
        row(
            name,
            ok,
            f"relative error {rel:.0%}; model's p{max(0.0, q - 2 * se) * 100:.0f}-"
            f"p{min(1.0, q + 2 * se) * 100:.0f} band {lo:.3g}-{hi:.3g} s",
        )
    for name in ("completed_share", "rolled_back_share"):
        diff = abs(real[name] - sim[name])
        # A share of a hundred sagas is itself uncertain: the bound is the stated one or two
        # standard errors of the difference (pooled), whichever is larger.
        pooled = (sim[name] * n_sim + real[name] * n_real) / max(1, n_sim + n_real)
        se = math.sqrt(pooled * (1 - pooled) * (1 / max(1, n_sim) + 1 / max(1, n_real)))
        bound = max(tolerance.share_abs, 2 * se)
        row(name, diff <= bound, f"difference {diff:.1%} (bound {bound:.1%})")
    slack = tolerance.breaker_share * duration + reset_timeout
    diff = abs(real["breaker_open_s"] - sim["breaker_open_s"])
    row("breaker_open_s", diff <= slack, f"difference {diff:.3g} s (bound {slack:.3g} s)")
    row("peak_queue_depth", None, "reported (sampled every 0.2 s on the stack)")
    row("sagas", None, "reported (Poisson arrivals differ)")
    within = ks_within(sim_e2e, real_e2e, rel=tolerance.ks_shift)
    ks = {
        "d": round(d, 4),
        "p_value": round(p, 6),
        "d_within_shift": round(within, 4),
        "ok": within <= tolerance.ks_d,
    }
    ok = ks["ok"] and all(r["ok"] is not False for r in rows)
    return {
        "rows": rows,
        "ks": ks,
        "ok": ok,
        "tolerance": tolerance.describe(),
        "not_expressed": list(NOT_EXPRESSED),
    }
