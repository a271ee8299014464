"""`sagalab simulate calibrate`: the pure fits (simulator/calibrate.py) and, end to end, real
checkout sagas through a worker against the fake services with a known latency and error fault,
calibrated from their SQLite database and run by `simulate run`."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from workerlab import (
    REPO,
    Workers,
    drained,
    enqueue,
    order,
    run_seed,
    seeded_services,
    wait_for,
)

from sagalab.fakeservices import FaultSpec, RunningServices
from sagalab.orchestrator.flowfile import load_flow
from sagalab.simulator.calibrate import (
    CalibrationError,
    Observed,
    Row,
    arrival_fit,
    calibrate,
    classify,
    kolmogorov_p,
    ks_lognormal,
    lognormal_mle,
    quantiles,
)
from sagalab.simulator.config import merge_defaults, validate
from sagalab.simulator.errors import ScenarioError
from sagalab.simulator.stations import sampler


def test_lognormal_mle_recovers_mu_and_sigma() -> None:
    rng = random.Random(7)
    xs = [rng.lognormvariate(math.log(0.05), 0.4) for _ in range(4000)]
    mu, sigma = lognormal_mle(xs)
    assert mu == pytest.approx(math.log(0.05), abs=0.03)
    assert sigma == pytest.approx(0.4, abs=0.02)
    d = ks_lognormal(xs, mu, sigma)
    assert d < 0.03
    assert kolmogorov_p(d, len(xs)) > 0.05


def test_ks_against_a_wrong_distribution_is_large() -> None:
    rng = random.Random(8)
    xs = [rng.expovariate(1 / 0.05) for _ in range(2000)]
    # A lognormal twice as slow and far narrower than the data.
    d = ks_lognormal(xs, math.log(0.1), 0.1)
    assert d > 0.5
    assert kolmogorov_p(d, len(xs)) < 1e-6


def test_kolmogorov_p_matches_known_critical_values() -> None:
    # The asymptotic 5 % and 1 % critical values of sqrt(n) * D are 1.358 and 1.628.
    n = 10_000
    assert kolmogorov_p(1.358 / math.sqrt(n), n) == pytest.approx(0.05, abs=0.003)
    assert kolmogorov_p(1.628 / math.sqrt(n), n) == pytest.approx(0.01, abs=0.002)


def test_quantiles_interpolate() -> None:
    q = quantiles([1.0, 2.0, 3.0, 4.0, 5.0], (0.5, 0.25, 1.0))
    assert q == {"p50": 3.0, "p25": 2.0, "p100": 5.0}


def test_arrivals_poisson_is_constant_and_bursts_are_steps() -> None:
    rng = random.Random(3)
    t, poisson = 0.0, []
    while t < 200:
        t += rng.expovariate(5.0)
        poisson.append(t)
    fit = arrival_fit(poisson)
    assert fit["shape"] == "Poisson-like"
    assert fit["schedule"]["kind"] == "constant"
    assert fit["schedule"]["value"] == pytest.approx(5.0, rel=0.1)
    # Bursts: 100 arrivals in the first second of every 20.
    bursts = [b * 20 + i / 100 for b in range(10) for i in range(100)]
    fit = arrival_fit(bursts)
    assert fit["shape"].startswith("bursty")
    assert fit["schedule"]["kind"] == "steps"
    assert fit["dispersion"] > 10


def _rows(step: str, rng: random.Random, n: int, error_rate: float) -> list[Row]:
    rows = []
    for i in range(n):
        failed = rng.random() < error_rate
        rows.append(
            Row(
                type="attempt_failed" if failed else "attempt_succeeded",
                at=float(i),
                step=step,
                phase="action",
                attempt=1,
                status_code=500 if failed else 200,
                duration_ms=rng.lognormvariate(math.log(30.0), 0.3),
                failure="HTTP 500: boom" if failed else None,
            )
        )
    return rows


def test_calibrate_fits_services_and_marks_small_samples() -> None:
    flow = load_flow("checkout")
    rng = random.Random(5)
    sagas = [
        Observed(
            created_at=i * 0.1,
            flow=flow,
            rows=(
                *_rows("reserve_inventory", rng, 1, 0.0),
                *_rows("charge_payment", rng, 1, 0.2),
                # Shipping: only the first five sagas reached it.
                *(_rows("create_shipment", rng, 1, 0.0) if i < 5 else []),
            ),
        )
        for i in range(300)
    ]
    scenario, report = calibrate(sagas)
    payments = scenario["services"]["payments"]
    assert payments["latency"]["median"] == pytest.approx(0.030, rel=0.05)
    assert payments["error_rate"] == pytest.approx(0.2, abs=0.05)
    assert report["services"]["shipping"]["used"].startswith("defaults (n too small")
    assert scenario["services"]["shipping"] == {}
    assert report["services"]["notifications"]["attempts"] == 0
    assert scenario["flow"]["name"] == "checkout"


def test_calibrate_latency_choice() -> None:
    flow = load_flow("checkout")
    rng = random.Random(6)
    sagas = [
        Observed(i * 0.1, flow, tuple(_rows("charge_payment", rng, 1, 0.0))) for i in range(200)
    ]
    auto, report = calibrate(sagas)
    assert auto["services"]["payments"]["latency"]["dist"] == "lognormal"  # the data is one
    assert report["services"]["payments"]["simulated_latency"] == "lognormal"
    empirical, _ = calibrate(sagas, latency="empirical")
    spec = empirical["services"]["payments"]["latency"]
    assert spec["dist"] == "empirical" and len(spec["quantiles"]) == 21
    assert spec["quantiles"] == sorted(spec["quantiles"])
    assert spec["quantiles"][10] == pytest.approx(0.030, rel=0.1)
    validate(merge_defaults(empirical))  # the model takes what calibration writes


def test_empirical_latency_is_seeded_and_follows_its_points() -> None:
    spec = {"dist": "empirical", "quantiles": [0.01, 0.02, 0.05]}
    draw = sampler(spec, random.Random(1), "here")
    xs = [draw() for _ in range(20_000)]
    again = sampler(spec, random.Random(1), "here")
    assert [again() for _ in range(20_000)] == xs
    assert min(xs) >= 0.01 and max(xs) <= 0.05
    assert quantiles(xs, (0.5, 0.75)) == pytest.approx({"p50": 0.02, "p75": 0.035}, rel=0.03)


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([0.05, 0.01], "must not be less than the one before"),
        ([0.05], "a list of 2 to"),
        ("fast", "a list of 2 to"),
        ([0.01, "x"], "must be a number of seconds"),
        ([0.01, -1.0], "under the minimum"),
    ],
    ids=["decreasing", "one-point", "not-a-list", "not-a-number", "negative"],
)
def test_empirical_latency_refuses_bad_points(points: object, message: str) -> None:
    latency = {"dist": "empirical", "quantiles": points}
    with pytest.raises(ScenarioError, match=message):
        validate(merge_defaults({"services": {"payments": {"latency": latency}}}))


@pytest.mark.parametrize(
    ("row", "kind"),
    [
        (Row("attempt_succeeded", 0, status_code=201), "ok"),
        (Row("attempt_failed", 0, status_code=503, failure="HTTP 503: busy"), "503"),
        (Row("attempt_failed", 0, status_code=502, failure="HTTP 502"), "5xx"),
        (Row("attempt_failed", 0, status_code=429, failure="HTTP 429"), "429"),
        (Row("attempt_failed", 0, status_code=422, failure="HTTP 422: declined"), "4xx"),
        (
            Row("attempt_failed", 0, status_code=409, failure='HTTP 409: {"error": "in_progress"}'),
            "in_progress",
        ),
        (Row("attempt_failed", 0, failure="ReadTimeout: timed out"), "timeout"),
        (Row("attempt_failed", 0, failure="ConnectError: refused"), "connect"),
        (Row("attempt_failed", 0, failure="ConnectTimeout: no answer"), "connect"),
        (Row("attempt_failed", 0, failure="RemoteProtocolError: closed"), "dropped"),
    ],
    ids=[
        "2xx",
        "503",
        "502",
        "429",
        "422",
        "409",
        "read-timeout",
        "refused",
        "connect-timeout",
        "dropped",
    ],
)
def test_classify_attempts(row: Row, kind: str) -> None:
    assert classify(row) == kind


def test_retry_after_is_the_wait_after_a_429_or_503() -> None:
    flow = load_flow("checkout")
    rows: list[Row] = []
    for i in range(25):
        at = float(i * 10)
        code = 429 if i % 2 else 200
        rows.append(
            Row(
                "attempt_failed" if code == 429 else "attempt_succeeded",
                at,
                "charge_payment",
                "action",
                1,
                code,
                20.0,
                "HTTP 429: slow down" if code == 429 else None,
            )
        )
        if code == 429:
            rows.append(
                Row("retry_scheduled", at, "charge_payment", "action", 1, not_before=at + 2)
            )
    _, report = calibrate([Observed(0.0, flow, tuple(rows))])
    payments = report["services"]["payments"]
    assert payments["retry_after"]["n"] == 12
    assert payments["retry_after"]["p50"] == pytest.approx(2.0)
    assert payments["rates"]["429"] == pytest.approx(12 / 25)
    assert payments["error_rate"] == 0.0  # a 429 is no server error


def test_calibrate_refuses_nothing() -> None:
    with pytest.raises(CalibrationError, match="no saga"):
        calibrate([])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagalab.cli.main", "simulate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_calibrate_refuses_bad_input(tmp_path: Path) -> None:
    missing = _cli("calibrate", "--db", str(tmp_path / "no.db"), "--out", str(tmp_path / "s.yaml"))
    assert missing.returncode == 5, missing.stderr
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    junk = _cli("calibrate", "--db", str(tmp_path / "junk.db"), "--out", str(tmp_path / "s.yaml"))
    assert junk.returncode == 5, junk.stderr
    enqueue(tmp_path / "sagas.db", [order(1)])
    db = str(tmp_path / "sagas.db")
    bad_since = _cli("calibrate", "--db", db, "--since", "yesterday", "--out", str(tmp_path / "s"))
    assert bad_since.returncode == 2 and "--since" in bad_since.stderr
    no_dir = _cli("calibrate", "--db", db, "--out", str(tmp_path / "nope" / "s.yaml"))
    assert no_dir.returncode == 2 and "does not exist" in no_dir.stderr
    empty = _cli("calibrate", "--db", db, "--since", "2999-01-01", "--out", str(tmp_path / "s"))
    assert empty.returncode == 2 and "no saga" in empty.stderr
    (tmp_path / "there.yaml").write_text("kept\n")
    exists = _cli("calibrate", "--db", db, "--out", str(tmp_path / "there.yaml"))
    assert exists.returncode == 2 and "--force" in exists.stderr
    assert (tmp_path / "there.yaml").read_text() == "kept\n"
    assert "Traceback" not in missing.stderr + junk.stderr + bad_since.stderr + empty.stderr


def test_calibrate_reads_only(tmp_path: Path) -> None:
    """A missing database is not created (exit 5); an existing one keeps its bytes, its mtime
    and no -wal/-shm beside it (opened read-only, as the other read commands open it)."""
    missing = tmp_path / "not" / "there.db"
    outdir = tmp_path / "out"
    outdir.mkdir()
    gone = _cli("calibrate", "--db", str(missing), "--out", str(outdir / "s.yaml"))
    assert gone.returncode == 5 and "no saga database" in gone.stderr, gone.stderr
    assert not missing.parent.exists() and list(outdir.iterdir()) == []
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    enqueue(dbdir / "sagas.db", [order(n) for n in range(3)])
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in dbdir.iterdir()}
    done = _cli("calibrate", "--db", str(dbdir / "sagas.db"), "--out", str(outdir / "s.yaml"))
    assert done.returncode == 0, done.stderr
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in dbdir.iterdir()} == before
    assert "defaults (n too small: < 20)" in (outdir / "s.yaml").read_text()


def test_calibrate_from_postgres_masks_the_password(pg_url: str, tmp_path: Path) -> None:
    enqueue(pg_url, [order(n) for n in range(3)])
    # The lab's cluster trusts local connections: the password is there only to be masked.
    user, rest = pg_url.removeprefix("postgresql://").split("@", 1)
    url = f"postgresql://{user}:s3cret@{rest}"
    out = tmp_path / "pg.yaml"
    done = _cli("calibrate", "--db", url, "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "s3cret" not in text + done.stdout + done.stderr
    assert f"# database: postgresql://{user}:***@{rest}" in text
    assert json.loads(done.stdout)["sagas"] == 3
    down = _cli(
        "calibrate", "--db", "postgresql://me:s3cret@127.0.0.1:1/x", "--out", str(out), "--force"
    )
    assert down.returncode == 5 and "s3cret" not in down.stderr, down.stderr


@pytest.fixture(scope="module")
def lab() -> Iterator[RunningServices]:
    """The fake services with their fault draws seeded (printed, to rerun a failure)."""
    with seeded_services(run_seed("SAGALAB_CALIBRATE_SEED", "calibrate")) as running:
        yield running


SAGAS = 80
# Every measured call is its injected latency plus a round trip a loaded machine stretches by
# tens of milliseconds (added to both services alike): 150 ms against 75 ms keeps the two
# medians apart by more than 1.3x up to ~170 ms of such overhead (60 against 30 did to ~50).
PAYMENTS_MS = 150
ERROR_RATE = 0.2


def test_calibrate_from_real_sagas_then_run(
    db: Path, services: RunningServices, workers: Workers, tmp_path: Path
) -> None:
    services.lab.add_fault(FaultSpec(service="inventory", latency_ms=PAYMENTS_MS // 2))
    services.lab.add_fault(
        FaultSpec(service="payments", endpoint="/charges", latency_ms=PAYMENTS_MS)
    )
    services.lab.add_fault(
        FaultSpec(service="payments", endpoint="/charges", error_rate=ERROR_RATE, status=500)
    )
    enqueue(db, [order(n) for n in range(SAGAS)])
    workers.start("--concurrency", "16", "--exit-when-idle", "2", "--poll", "0.05")
    wait_for(drained(db, SAGAS), 25, "every saga to finish")
    out = tmp_path / "calibrated.yaml"
    done = _cli("calibrate", "--db", str(db), "--since", "1h", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    payments = report["services"]["payments"]
    median = payments["latency"]["lognormal"]["median"]
    # Each measured call is its injected latency plus the HTTP round trip, which a loaded
    # machine stretches: the floor is exact, the ceiling allows for it, and the fit must
    # still tell the slower service from the faster one: by the difference of the medians,
    # in which the round trip cancels (their ratio fell to 1.25 at load 9 once).
    assert PAYMENTS_MS / 1000 <= median <= PAYMENTS_MS / 1000 * 2.5, median
    inventory = report["services"]["inventory"]["latency"]["lognormal"]["median"]
    assert PAYMENTS_MS / 2000 <= inventory <= PAYMENTS_MS / 2000 * 3, inventory
    assert median - inventory > PAYMENTS_MS / 2000 * 0.5, (median, inventory)
    # About 100 charge attempts: a binomial share within three standard deviations.
    assert payments["error_rate"] == pytest.approx(ERROR_RATE, abs=0.12)
    assert report["services"]["inventory"]["error_rate"] == 0.0
    text = out.read_text()
    assert text.startswith("# Calibrated by `sagalab simulate calibrate`.")
    assert f"database: {db}" in text and "KS D" in text
    assert "  payments: " in text and "fitted (" in text
    written = yaml.safe_load(text)["services"]["payments"]["error_rate"]
    assert written == pytest.approx(payments["error_rate"], abs=1e-4)
    run = _cli("run", str(out), "--duration", "5", "--out", str(tmp_path / "sim"), "--json")
    assert run.returncode in (0, 1), run.stderr  # 1: an invariant; no claim is written
    sim = json.loads(run.stdout)
    assert sim["sagas"]["completed"] > 0
    assert sim["invariants_failed"] == 0


def _saga(created: float, wake: float, write: float, calls_ms: tuple[float, ...]) -> Observed:
    """A checkout saga as the journal has it: created, its first attempt `wake` s later, each
    call's attempt ending `write` s plus its call after it started, its last commit `write`
    s after its last event."""
    flow = load_flow("checkout")
    rows = [Row(type="saga_created", at=created)]
    t = created + wake
    for step, ms in zip([s.name for s in flow.steps], calls_ms, strict=False):
        rows.append(Row("attempt_started", t, step, "action", 1))
        t += write + ms / 1000.0
        rows.append(Row("attempt_succeeded", t, step, "action", 1, 201, ms))
    rows.append(Row("saga_completed", t))
    return Observed(created, flow, tuple(rows), t + write)


def test_calibrate_fits_the_writes_and_the_wake_up() -> None:
    rng = random.Random(11)
    sagas = []
    for i in range(200):
        wake = 0.0006 + rng.expovariate(1 / 0.0004)
        sagas.append(_saga(i * 0.1, wake, rng.lognormvariate(math.log(0.0003), 0.3), (2, 1, 1, 1)))
    # A backlog: ten sagas created at once wait in the queue; only the first one counts.
    sagas += [_saga(30.0, 0.05 * k + 0.001, 0.0003, (2, 1, 1, 1)) for k in range(10)]
    scenario, report = calibrate(sagas, latency="lognormal")
    writes, wake = report["path"]["writes"], report["path"]["wake"]
    # Five writes a saga: before each of the four calls, and the last commit.
    assert writes["n"] == 5 * 210 and writes["used"] == "fitted"
    assert writes["lognormal"]["median"] == pytest.approx(0.0003, rel=0.1)
    assert wake["n"] == 201 and wake["used"] == "fitted"
    assert wake["fixed"] == pytest.approx(0.0006, abs=0.0001)
    assert wake["exponential_mean"] == pytest.approx(0.0004, rel=0.3)
    assert wake["ks"]["d"] < 0.1
    db = scenario["database"]
    assert db["enabled"] and db["engine"] == "sqlite" and db["writers"] == 1
    assert db["write_latency"] == scenario["orchestrator"]["db_write"]
    # The claim is one write in the model: the gateways get the rest of the wake-up.
    auth = scenario["gateways"]["auth_time"]
    assert auth == pytest.approx(wake["fixed"] - writes["mean"], abs=2e-6)
    assert scenario["firewall"] == {"service_time": 0.0}
    validate(merge_defaults(scenario))
    # PostgreSQL: its writers are not in the journal, so no write queue is written.
    scenario, report = calibrate(sagas, latency="lognormal", engine="postgresql")
    assert "database" not in scenario and "orchestrator" in scenario
    assert scenario["gateways"]["auth_time"] == pytest.approx(wake["fixed"], abs=2e-6)


def test_a_calibrated_path_matches_the_journal_end_to_end() -> None:
    # What the model makes of the fitted path: its end-to-end p50 is the journal's (within
    # the spread of 200 sagas), where the defaults' path is several ms longer.
    from sagalab.simulator.model import Simulation

    rng = random.Random(12)
    sagas = [
        _saga(
            i * 0.1,
            0.0006 + rng.expovariate(1 / 0.0004),
            rng.lognormvariate(math.log(0.0003), 0.3),
            tuple(rng.lognormvariate(math.log(1.5), 0.3) for _ in range(4)),
        )
        for i in range(200)
    ]
    journal = sorted((s.ended_at or 0.0) - s.created_at for s in sagas)
    scenario, _ = calibrate(sagas, latency="lognormal")
    sim = Simulation(merge_defaults(scenario), seed=3, duration=20.0)
    sim.run()
    p50 = journal[len(journal) // 2]
    assert sim.e2e.quantile(0.5) == pytest.approx(p50, rel=0.15), (sim.e2e.quantile(0.5), p50)
