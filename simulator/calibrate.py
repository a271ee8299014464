"""Calibration: fit a scenario to the journal of real runs (`sagalab simulate calibrate`).

Pure: takes the sagas read from a store (`Observed`: created_at, flow snapshot, journal rows as
`Row`s) and returns the scenario mapping and a fit report; no I/O, no clock, no randomness.

What is fitted, per service (the step's `service` in the flow snapshot):
- latency of the answered attempts (an HTTP status came back; timeouts are censored, not
  durations), per endpoint and phase in the report and over the action attempts for the
  scenario: a lognormal by maximum likelihood (mu, sigma of the log durations) and the
  empirical quantiles, with the Kolmogorov-Smirnov distance D of the lognormal against the data
  and its asymptotic p-value. The parameters are estimated from the same data, so the p-value is
  optimistic (Lilliefors): read D first. The scenario carries the lognormal, or the empirical
  distribution (`dist: empirical`, EMPIRICAL_POINTS quantiles from min to max) when asked or,
  with `latency="auto"`, when the KS test rejects the lognormal at AUTO_P.
- error rates by kind: 5xx (503 apart), 429, other 4xx (a rejection), 409 in progress,
  timeouts, connection errors, dropped connections. `error_rate` is the 5xx share of the
  answered attempts, `reject_rate` the other-4xx share of first action attempts.
- Retry-After: `not_before - at` of each retry scheduled after a 429 or 503.
- arrivals: sagas created per second, the inter-arrival CV and the dispersion index of counts
  per bin; Poisson-like arrivals become a constant rate, bursty ones a `steps` schedule.

A service with fewer than `MIN_ATTEMPTS` answered attempts keeps the defaults and says so.
"""

from __future__ import annotations

import copy
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sagalab.orchestrator.flow import FlowDefinition, flow_to_dict

__all__ = [
    "MIN_ATTEMPTS",
    "CalibrationError",
    "Observed",
    "LATENCY_CHOICES",
    "Row",
    "arrival_fit",
    "calibrate",
    "path_samples",
    "shifted_exponential",
    "header",
    "classify",
    "ks_lognormal",
    "kolmogorov_p",
    "lognormal_mle",
    "quantiles",
]

#: Fewer answered attempts than this and a service keeps the scenario defaults.
MIN_ATTEMPTS = 20
#: Quantiles kept of every latency sample.
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
#: Points of an empirical latency in the scenario: the quantiles 0, 1/20, ..., 1.
EMPIRICAL_POINTS = 21
#: `latency="auto"` writes the empirical distribution when the lognormal's KS p is under this.
AUTO_P = 0.01
#: What `calibrate(latency=...)` takes.
LATENCY_CHOICES = ("auto", "lognormal", "empirical")
#: Inter-arrival CV and dispersion index within these bounds: Poisson-like arrivals.
POISSON_CV = (0.7, 1.4)
POISSON_DISPERSION = (0.5, 2.0)
#: Arrivals spanning less than this many seconds are a batch, simulated over MIN_SPAN.
MIN_SPAN = 1.0
#: Most bins of a bursty arrival schedule.
MAX_BINS = 60
#: Requests per second one simulated API key may send (the defaults' gateway rate limit).
_KEY_RATE = 5.0


class CalibrationError(ValueError):
    """Nothing to fit (no saga in the window, no flow the simulator can run)."""


@dataclass(frozen=True)
class Row:
    """One journal row as calibration reads it (`Event` fields plus the stored status and
    duration); `failure` is the failure's error text, None if there was none."""

    type: str
    at: float
    step: str | None = None
    phase: str | None = None
    attempt: int = 0
    status_code: int | None = None
    duration_ms: float | None = None
    failure: str | None = None
    retry_after: float | None = None
    not_before: float | None = None


@dataclass(frozen=True)
class Observed:
    """One saga: when it was created, its flow snapshot and its journal in order."""

    created_at: float
    flow: FlowDefinition
    rows: Sequence[Row] = field(default_factory=tuple)
    #: The saga's last commit (`updated_at`) if it ended, else None.
    ended_at: float | None = None


def classify(row: Row) -> str:
    """The kind of an attempt's outcome: ok, 5xx, 503, 429, 4xx, in_progress, timeout,
    connect or dropped."""
    code = row.status_code
    if code is not None:
        if 200 <= code < 300:
            return "ok"
        if code == 503:
            return "503"
        if code >= 500:
            return "5xx"
        if code == 429:
            return "429"
        if code == 409 and "in_progress" in (row.failure or ""):
            return "in_progress"
        return "4xx"
    text = row.failure or ""
    # executors.py writes "<httpx exception class>: <message>".
    if text.startswith(("Connect", "PoolTimeout")):
        return "connect"
    if "Timeout" in text.split(":", 1)[0] or "timed out" in text:
        return "timeout"
    return "ok" if row.type == "attempt_succeeded" else "dropped"


def lognormal_mle(xs: Sequence[float]) -> tuple[float, float]:
    """Maximum-likelihood (mu, sigma) of a lognormal: mean and population standard deviation
    of the logs. `xs` positive, at least one."""
    logs = [math.log(x) for x in xs]
    mu = math.fsum(logs) / len(logs)
    sigma = math.sqrt(math.fsum((v - mu) ** 2 for v in logs) / len(logs))
    return mu, sigma


def kolmogorov_p(d: float, n: int) -> float:
    """P(D_n >= d) for the one-sample KS statistic, asymptotic Kolmogorov distribution with
    Stephens' small-sample correction."""
    if d <= 0:
        return 1.0
    root = math.sqrt(n)
    lam = (root + 0.12 + 0.11 / root) * d
    if lam < 0.2:
        return 1.0  # the series converges slowly here and the sum is 1 to double precision
    total = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return min(1.0, max(0.0, total))


def ks_lognormal(xs: Sequence[float], mu: float, sigma: float) -> float:
    """The KS statistic D = sup |F_n(x) - F(x)| of `xs` against lognormal(mu, sigma)."""
    data = sorted(xs)
    n = len(data)
    d = 0.0
    for i, x in enumerate(data):
        if sigma > 0:
            cdf = 0.5 * (1.0 + math.erf((math.log(x) - mu) / (sigma * math.sqrt(2.0))))
        else:
            cdf = 1.0 if math.log(x) >= mu else 0.0
        d = max(d, (i + 1) / n - cdf, cdf - i / n)
    return d


def quantiles(xs: Sequence[float], qs: Iterable[float] = QUANTILES) -> dict[str, float]:
    """Linear-interpolation quantiles of `xs` (non-empty), keyed `p50` and so on."""
    data = sorted(xs)
    out: dict[str, float] = {}
    for q in qs:
        pos = q * (len(data) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(data) - 1)
        out[f"p{q * 100:g}"] = data[lo] + (data[hi] - data[lo]) * (pos - lo)
    return out


def latency_fit(seconds: Sequence[float]) -> dict[str, Any]:
    """Lognormal (MLE) and empirical fit of positive durations in seconds, with the KS D and
    its p-value."""
    xs = [x for x in seconds if x > 0]
    if not xs:
        return {"n": 0}
    mu, sigma = lognormal_mle(xs)
    d = ks_lognormal(xs, mu, sigma)
    return {
        "n": len(xs),
        "lognormal": {"mu": mu, "sigma": sigma, "median": math.exp(mu)},
        "empirical": quantiles(xs),
        "points": [
            round(v, 6)
            for v in quantiles(
                xs, [i / (EMPIRICAL_POINTS - 1) for i in range(EMPIRICAL_POINTS)]
            ).values()
        ],
        "mean": math.fsum(xs) / len(xs),
        "ks": {"d": d, "p_value": kolmogorov_p(d, len(xs))},
    }


def arrival_fit(created: Sequence[float]) -> dict[str, Any]:
    """Rate and shape of saga arrivals; `schedule` is the scenario's `rate` for them and
    `duration` the seconds it spans."""
    times = sorted(created)
    n = len(times)
    span = times[-1] - times[0] if n > 1 else 0.0
    duration = max(span, MIN_SPAN)
    out: dict[str, Any] = {"sagas": n, "span": span, "duration": duration}
    if n < 3 or span < MIN_SPAN:
        # A batch queued at once (a test, a backfill) has no rate to speak of: spread it over
        # the shortest run, as Poisson arrivals.
        shape = (
            "too few arrivals to tell"
            if n < 3
            else f"a batch within {span:.3g} s (simulated as {n} Poisson arrivals "
            f"in {duration:g} s)"
        )
        out.update(rate=n / duration, shape=shape, cv=None, dispersion=None)
        out["schedule"] = {"kind": "constant", "value": n / duration}
        return out
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    mean_gap = math.fsum(gaps) / len(gaps)
    sd_gap = math.sqrt(math.fsum((g - mean_gap) ** 2 for g in gaps) / len(gaps))
    cv = sd_gap / mean_gap if mean_gap > 0 else math.inf
    bins = max(2, min(MAX_BINS, n // 10))
    width = span / bins
    counts = [0] * bins
    for t in times:
        counts[min(bins - 1, int((t - times[0]) / width))] += 1
    mean_c = n / bins
    var_c = math.fsum((c - mean_c) ** 2 for c in counts) / (bins - 1)
    dispersion = var_c / mean_c
    rate = (n - 1) / span
    poisson = (
        POISSON_CV[0] <= cv <= POISSON_CV[1]
        and POISSON_DISPERSION[0] <= dispersion <= POISSON_DISPERSION[1]
    )
    if poisson or cv < POISSON_CV[0]:
        shape = "Poisson-like" if poisson else "more regular than Poisson (simulated as Poisson)"
        schedule: dict[str, Any] = {"kind": "constant", "value": rate}
    else:
        shape = f"bursty (a {bins}-step schedule of {width:.3g} s bins)"
        schedule = {
            "kind": "steps",
            "steps": [[round(i * width, 6), round(c / width, 6)] for i, c in enumerate(counts)],
        }
    out.update(rate=rate, cv=cv, dispersion=dispersion, bins=bins, shape=shape)
    out["schedule"] = schedule
    return out


def _ln(x: float) -> float:
    return math.log(x)


#: ln(1/0.9) and ln 2: a shifted exponential's 10th and 50th percentiles above its shift, per
#: unit of mean.
_P10, _P50 = -_ln(0.9), _ln(2.0)


def shifted_exponential(xs: Sequence[float]) -> dict[str, Any]:
    """A fixed part plus an exponential fitted to `xs` (non-empty) by their 10th and 50th
    percentiles (robust to the top tail, where queue waits the model makes itself lie), with
    the KS D against the data and its p-value."""
    q = quantiles(xs, (0.1, 0.5))
    spread = max(0.0, (q["p50"] - q["p10"]) / (_P50 - _P10))
    fixed = q["p10"] - _P10 * spread
    if fixed < 0:
        fixed, spread = 0.0, q["p50"] / _P50
    data = sorted(xs)
    n = len(data)
    d = 0.0
    for i, x in enumerate(data):
        cdf = 0.0 if x < fixed else (1.0 - math.exp(-(x - fixed) / spread) if spread > 0 else 1.0)
        d = max(d, (i + 1) / n - cdf, cdf - i / n)
    return {
        "n": n,
        "fixed": fixed,
        "exponential_mean": spread,
        "empirical": quantiles(xs),
        "mean": math.fsum(xs) / n,
        "ks": {"d": d, "p_value": kolmogorov_p(d, n)},
    }


def path_samples(sagas: Sequence[Observed]) -> tuple[list[float], list[float]]:
    """What the journal says of the stack's own path, in seconds: the writes (an attempt's end
    less its start and its call: the commit of the attempt's start before the call, and an
    ended saga's last commit after its last event) and the wake-up gaps (a saga's creation to
    its first attempt: the worker's wake-up and claim) of the sagas created on an empty queue
    (every saga created before had started), since queue waits are the model's own."""
    writes: list[float] = []
    wakes: list[float] = []
    backlog_until = -math.inf  # the latest first attempt of the sagas created so far
    for saga in sorted(sagas, key=lambda o: o.created_at):
        rows = saga.rows
        started: dict[tuple[str | None, str | None, int], float] = {}
        for row in rows:
            key = (row.step, row.phase, row.attempt)
            if row.type == "attempt_started":
                started[key] = row.at
            elif row.type in ("attempt_succeeded", "attempt_failed") and row.duration_ms:
                begun = started.get(key)
                if begun is not None:
                    writes.append(max(0.0, row.at - begun - row.duration_ms / 1000.0))
        first = next((r for r in rows if r.type == "attempt_started"), None)
        if first is not None:
            if first.attempt <= 1 and backlog_until <= saga.created_at:
                wakes.append(max(0.0, first.at - saga.created_at))
            backlog_until = max(backlog_until, first.at)
        if saga.ended_at is not None and rows:
            writes.append(max(0.0, saga.ended_at - rows[-1].at))
    return writes, wakes


def _flows(sagas: Sequence[Observed]) -> tuple[FlowDefinition, dict[str, int]]:
    counts = Counter((s.flow.name, s.flow.version) for s in sagas)
    seen = {f"{name} v{version}": n for (name, version), n in counts.most_common()}
    for (name, version), _ in counts.most_common():
        flow = next(s.flow for s in sagas if (s.flow.name, s.flow.version) == (name, version))
        if all(step.service is not None for step in flow.steps):
            return flow, seen
    raise CalibrationError(
        "no flow in the window calls only HTTP services (the simulator models services, not "
        f"Python handlers): {', '.join(seen)}"
    )


def _endpoint(flow: FlowDefinition, step: str, phase: str) -> str:
    try:
        s = flow.step(step)
    except (KeyError, ValueError):
        return step
    call = s.action if phase == "action" else s.compensation
    return f"{call.method} {call.path}" if call is not None else step


def _service_fit(
    attempts: list[tuple[Observed, Row, str]], retry_after: list[float]
) -> dict[str, Any]:
    kinds = Counter(kind for _, _, kind in attempts)
    answered = [(o, r, k) for o, r, k in attempts if r.status_code is not None]
    by_endpoint: dict[str, list[float]] = defaultdict(list)
    action_seconds: list[float] = []
    for o, r, _ in answered:
        if r.duration_ms is None:
            continue
        by_endpoint[f"{r.phase} {_endpoint(o.flow, r.step or '', r.phase or '')}"].append(
            r.duration_ms / 1000.0
        )
        if r.phase == "action":
            action_seconds.append(r.duration_ms / 1000.0)
    first_actions = [k for _, r, k in attempts if r.phase == "action" and r.attempt <= 1]
    n_answered = len(answered)
    fit: dict[str, Any] = {
        "attempts": len(attempts),
        "answered": n_answered,
        "outcomes": dict(sorted(kinds.items())),
        "rates": {
            kind: kinds[kind] / len(attempts)
            for kind in ("5xx", "503", "429", "4xx", "timeout", "connect", "dropped")
        },
        "latency": latency_fit(action_seconds),
        "endpoints": {k: latency_fit(v) for k, v in sorted(by_endpoint.items())},
        "error_rate": (kinds["5xx"] + kinds["503"]) / n_answered if n_answered else 0.0,
        "reject_rate": (first_actions.count("4xx") / len(first_actions) if first_actions else 0.0),
    }
    if retry_after:
        fit["retry_after"] = {
            "n": len(retry_after),
            "mean": math.fsum(retry_after) / len(retry_after),
            **quantiles(retry_after, (0.5, 0.95)),
            "max": max(retry_after),
        }
    enough = fit["latency"].get("n", 0) >= MIN_ATTEMPTS
    fit["used"] = "fitted" if enough else f"defaults (n too small: < {MIN_ATTEMPTS})"
    return fit


def _latency_spec(lat: dict[str, Any], latency: str) -> dict[str, Any]:
    empirical = latency == "empirical" or (latency == "auto" and lat["ks"]["p_value"] < AUTO_P)
    if empirical:
        return {"dist": "empirical", "quantiles": lat["points"]}
    return {
        "dist": "lognormal",
        "median": round(lat["lognormal"]["median"], 6),
        "sigma": round(lat["lognormal"]["sigma"], 4),
    }


def _path(
    sagas: Sequence[Observed], latency: str, engine: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The scenario settings and the report of the stack's own path: the database's write
    latency and the model's path before a saga's first commit."""
    writes, wakes = path_samples(sagas)
    report: dict[str, Any] = {"engine": engine}
    settings: dict[str, Any] = {}
    wfit = latency_fit(writes)
    report["writes"] = wfit
    write_mean = 0.0
    if wfit.get("n", 0) >= MIN_ATTEMPTS:
        spec = _latency_spec(wfit, latency)
        write_mean = wfit["mean"]
        report["writes"]["simulated_latency"] = spec["dist"]
        report["writes"]["used"] = "fitted"
        settings["orchestrator"] = {"db_write": copy.deepcopy(spec)}
        if engine == "sqlite":
            # One writer, as SQLite's write lock: the claim and every commit queue for it.
            settings["database"] = {
                "enabled": True,
                "engine": "sqlite",
                "writers": 1,
                "write_latency": copy.deepcopy(spec),
            }
    else:
        report["writes"]["used"] = f"defaults (n too small: < {MIN_ATTEMPTS})"
    if len(wakes) >= MIN_ATTEMPTS:
        wake = shifted_exponential(wakes)
        # With the database on, the model's claim is one write: the rest of the gap is the
        # wake-up, put before the saga's creation (see `calibrate`).
        claim = write_mean if "database" in settings else 0.0
        fixed = max(0.0, wake["fixed"] - claim)
        wake["gateway_auth_time"] = fixed
        wake["gateway_handle_time"] = wake["exponential_mean"]
        wake["used"] = "fitted"
        settings["firewall"] = {"service_time": 0.0}
        settings["gateways"] = {
            "auth_time": round(fixed, 6),
            "handle_time": round(wake["exponential_mean"], 6),
        }
        report["wake"] = wake
    else:
        report["wake"] = {"n": len(wakes), "used": f"defaults (n too small: < {MIN_ATTEMPTS})"}
    return settings, report


def calibrate(
    sagas: Sequence[Observed], *, latency: str = "auto", engine: str = "sqlite"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The scenario (a raw mapping, as a YAML file holds it) and the fit report of `sagas`;
    `latency` (LATENCY_CHOICES) picks each service's and the writes' latency distribution,
    `engine` (sqlite or postgresql) is the journal's database. CalibrationError if there is
    nothing to fit.

    The stack's own path is fitted too (`path` in the report): each write from the journal's
    commit gaps, as `database.write_latency` (SQLite: one writer) and `orchestrator.db_write`;
    and the wake-up (a saga's creation to its first attempt, less the claim's write) as the
    gateways' time, with the firewall's set to 0. A journal's end-to-end latency starts at the
    saga's creation, after the edge and the gateway, which it cannot see; the model's starts
    at the client and has no wake-up: giving the gateway the wake-up's time makes the two
    measure the same path."""
    if latency not in LATENCY_CHOICES:
        raise CalibrationError(f"latency must be one of {', '.join(LATENCY_CHOICES)}")
    if not sagas:
        raise CalibrationError("no saga in the window: nothing to calibrate from")
    flow, flows_seen = _flows(sagas)
    attempts: dict[str, list[tuple[Observed, Row, str]]] = defaultdict(list)
    waits: dict[str, list[float]] = defaultdict(list)
    for saga in sagas:
        by_step = {s.name: s.service for s in saga.flow.steps if s.service is not None}
        last_kind: dict[tuple[str | None, str | None], str] = {}
        for row in saga.rows:
            service = by_step.get(row.step or "")
            if service is None:
                continue
            if row.type in ("attempt_succeeded", "attempt_failed"):
                kind = classify(row)
                attempts[service].append((saga, row, kind))
                last_kind[(row.step, row.phase)] = kind
            elif (
                row.type == "retry_scheduled"
                and row.not_before is not None
                and last_kind.get((row.step, row.phase)) in ("429", "503")
            ):
                waits[service].append(max(0.0, row.not_before - row.at))
    fits = {
        name: _service_fit(rows, waits.get(name, [])) for name, rows in sorted(attempts.items())
    }
    arrivals = arrival_fit([s.created_at for s in sagas])
    services: dict[str, Any] = {}
    for step in flow.steps:
        name = step.service
        assert name is not None  # _flows keeps only flows of services
        fit = fits.get(name)
        if fit is None or not fit["used"].startswith("fitted"):
            if fit is None:
                fits[name] = {"attempts": 0, "used": f"defaults (n too small: < {MIN_ATTEMPTS})"}
            services.setdefault(name, {})
            continue
        spec = _latency_spec(fit["latency"], latency)
        fit["simulated_latency"] = spec["dist"]
        services[name] = {
            "latency": spec,
            "error_rate": round(fit["error_rate"], 4),
            "reject_rate": round(fit["reject_rate"], 4),
        }
    peak = max(
        [arrivals["schedule"].get("value", 0.0)]
        + [r for _, r in arrivals["schedule"].get("steps", [])]
    )
    scenario: dict[str, Any] = {
        "name": f"calibrated-{flow.name}",
        "description": f"Fitted to {len(sagas)} {flow.name} sagas of a journal.",
        "shows": "What the journal's services, errors and arrivals give in the model.",
        "duration": round(arrivals["duration"], 3),
        "clients": [
            {
                "name": "customers",
                "rate": arrivals["schedule"],
                # Enough keys that the gateways' per-key limit lets the observed rate through.
                "keys": max(50, math.ceil(2 * peak / _KEY_RATE)),
            }
        ],
        "flow": flow_to_dict(flow),
        "services": services,
    }
    path_settings, path_report = _path(sagas, latency, engine)
    scenario.update(path_settings)
    report = {
        "sagas": len(sagas),
        "flows": flows_seen,
        "flow": f"{flow.name} v{flow.version}",
        "window": {
            "first_created": min(s.created_at for s in sagas),
            "last_created": max(s.created_at for s in sagas),
        },
        "arrivals": {k: v for k, v in arrivals.items() if k != "schedule"},
        "services": fits,
        "path": path_report,
        "not_expressed": [
            "latency below the 5 % and above the 95 % quantile: the empirical distribution "
            "is linear between its points",
            "per-endpoint and compensation latency (one latency per service in the model)",
            "429 and Retry-After from services (reported, not simulated)",
            "timeouts and connection errors (they follow from latency and faults in the model)",
            "service concurrency and queue limits, orchestrator replicas and workers, the edge "
            "(not in the journal: the defaults)",
            "the edge and gateway hops before a saga's creation (not in the journal; the "
            "gateways' time is the fitted wake-up instead, the firewall's 0), status reads "
            "(the database's read latency is the default)"
            + ("" if engine == "sqlite" else ", the database's writers (no write queue)"),
        ],
    }
    return scenario, report


def _when(window: dict[str, Any], key: str) -> str:
    # The CLI adds the UTC time (the core has no datetime); epoch seconds otherwise.
    return str(window.get(f"{key}_utc") or f"{window[key]:.3f} (epoch s)")


def header(report: dict[str, Any], *, source: str, fitted_at: str, since: str | None) -> str:
    """The YAML comment block on top of a calibrated scenario: where and when it was fitted,
    the window, counts per service and the fit quality. `source` already masked."""
    w = report["window"]
    a = report["arrivals"]
    lines = [
        "Calibrated by `sagalab simulate calibrate`.",
        f"database: {source}",
        f"fitted at: {fitted_at}",
        f"window: sagas created {since or 'at any time'}: {report['sagas']} sagas, "
        f"created from {_when(w, 'first_created')} to {_when(w, 'last_created')}",
        f"flows seen: {', '.join(f'{k}: {v}' for k, v in report['flows'].items())}; "
        f"simulated: {report['flow']}",
        f"arrivals: {a['rate']:.4g}/s, {a['shape']}"
        + (
            f" (inter-arrival CV {a['cv']:.2f}, dispersion {a['dispersion']:.2f})"
            if a["cv"] is not None
            else ""
        ),
        "services (action latency: lognormal MLE; KS D against the data, p asymptotic and "
        "optimistic since fitted on the same data):",
    ]
    for name, fit in report["services"].items():
        lat = fit.get("latency") or {}
        if lat.get("n"):
            ln, ks, emp = lat["lognormal"], lat["ks"], lat["empirical"]
            detail = (
                f"median {ln['median'] * 1000:.3g} ms sigma {ln['sigma']:.3g}, "
                f"KS D {ks['d']:.3f} p {ks['p_value']:.3g}; empirical p50 "
                f"{emp['p50'] * 1000:.3g} ms p95 {emp['p95'] * 1000:.3g} ms p99 "
                f"{emp['p99'] * 1000:.3g} ms; errors 5xx {fit['error_rate']:.2%}, "
                f"rejected {fit['reject_rate']:.2%}"
            )
        else:
            detail = "no answered action attempt"
        used = fit["used"]
        if "simulated_latency" in fit:
            used += f" ({fit['simulated_latency']} latency)"
        lines.append(f"  {name}: {fit.get('attempts', 0)} attempts, {used}: {detail}")
        rates = fit.get("rates") or {}
        others = ", ".join(
            f"{k} {v:.2%}" for k, v in rates.items() if v and k not in ("5xx", "503")
        )
        if others:
            lines.append(f"    other outcomes: {others}")
        if "retry_after" in fit:
            ra = fit["retry_after"]
            lines.append(
                f"    Retry-After after 429/503: {ra['n']} waits, median {ra['p50']:.3g} s, "
                f"max {ra['max']:.3g} s"
            )
    path = report.get("path") or {}
    writes, wake = path.get("writes") or {}, path.get("wake") or {}
    if writes.get("n"):
        ln, ks, emp = writes["lognormal"], writes["ks"], writes["empirical"]
        lines.append(
            f"database ({path.get('engine')}) writes: {writes['n']} commits, {writes['used']}"
            + (f" ({writes['simulated_latency']} latency)" if "simulated_latency" in writes else "")
            + f": median {ln['median'] * 1000:.3g} ms sigma {ln['sigma']:.3g}, KS D "
            f"{ks['d']:.3f} p {ks['p_value']:.3g}; empirical p50 {emp['p50'] * 1000:.3g} ms "
            f"p95 {emp['p95'] * 1000:.3g} ms; mean {writes['mean'] * 1000:.3g} ms"
        )
    else:
        lines.append(f"database writes: {writes.get('used', 'no commit gap in the journal')}")
    if wake.get("used") == "fitted":
        ks, emp = wake["ks"], wake["empirical"]
        lines.append(
            f"wake-up (creation to first attempt): {wake['n']} sagas, fixed "
            f"{wake['fixed'] * 1000:.3g} ms + exponential mean "
            f"{wake['exponential_mean'] * 1000:.3g} ms, KS D {ks['d']:.3f} p {ks['p_value']:.3g}; "
            f"empirical p50 {emp['p50'] * 1000:.3g} ms p95 {emp['p95'] * 1000:.3g} ms; as the "
            f"gateways' time (auth {wake['gateway_auth_time'] * 1000:.3g} ms after the claim's "
            f"write, handle {wake['gateway_handle_time'] * 1000:.3g} ms)"
        )
    else:
        lines.append(f"wake-up: {wake.get('used', 'not fitted')}")
    lines.append("not expressed in the scenario (fallbacks):")
    lines.extend(f"  - {item}" for item in report["not_expressed"])
    return "".join(f"# {line}\n" for line in lines)
