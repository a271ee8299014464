"""The README's incident walkthrough, end to end: a payments outage strands checkouts; the
operator finds them by filter, retries and forks them in bulk at a rate, and `verify` proves
every flow done or undone. Real fake services over HTTP, a real SQLite file, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from apilab import cli, order_json
from workerlab import REPO

from sagalab.fakeservices import FaultSpec, RunningServices

QUICK = {"max_attempts": 2, "initial_delay": 0.01, "max_delay": 0.01}


def _quick_checkout(tmp_path: Path) -> str:
    """The checkout flow with retries that give up at once (the outage lasts a test)."""
    raw = yaml.safe_load((REPO / "orchestrator" / "examples" / "checkout.yaml").read_text())
    for step in raw["steps"]:
        step["retry"] = QUICK
        step["compensation_retry"] = QUICK
    path = tmp_path / "checkout.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_payments_outage_found_retried_forked_and_verified(
    env: Path, lab: RunningServices, tmp_path: Path
) -> None:
    flow = _quick_checkout(tmp_path)
    services = tmp_path / "services.json"
    quick = {"fail_max": 2, "reset_timeout": 0.3, "success_threshold": 1}
    services.write_text(json.dumps({"services": lab.services, "breakers": {"payments": quick}}))
    lab.lab.add_fault(FaultSpec(service="payments", error_rate=1.0, status=503))
    for n in range(4):
        code, _, err = cli(
            "orchestrate", "run", flow, "-i", order_json(f"o-{n}"), "--wait", "--json",
            "--services", str(services),
        )  # fmt: skip
        assert code == 1, err

    code, stranded, _ = cli(
        "orchestrate", "list", "--status", "failed", "--step", "charge_payment", "-o", "ids"
    )
    assert code == 0 and stranded.split()
    lab.lab.clear_faults("payments")

    code, out, err = cli(
        "orchestrate", "retry-step", "--status", "failed", "--step", "charge_payment",
        "--rps", "50", "--yes", "--json", "--services", str(services),
        "--wait-breaker", "--wait-timeout", "5",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["acted"] == len(stranded.split())

    code, out, err = cli(
        "orchestrate", "fork", "--status", "rolled_back", "--step", "charge_payment",
        "--from-step", "reserve_inventory", "--set", "input.order_id={input.order_id}-r1",
        "--rps", "50", "--yes", "--json", "--services", str(services), "--wait-breaker",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["acted"] == summary["matched"] == 4

    code, out, _ = cli("orchestrate", "list", "--json")
    statuses = sorted(r["status"] for r in json.loads(out))
    assert statuses == ["completed"] * 4 + ["rolled_back"] * 4
    code, out, err = cli("verify", "--json")
    assert code == 0, out + err
