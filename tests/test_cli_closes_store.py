"""Every `orchestrate` verb closes the store it opened, also when called in-process (an
embedding program, CliRunner): a PostgreSQL connection left to the garbage collector is a
ResourceWarning, and a server slot held until the process ends."""

from __future__ import annotations

import gc
import json
import warnings

from typer.testing import CliRunner

from sagalab.cli.main import app


def invoke_and_collect(*args: str) -> tuple[int, str, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = CliRunner().invoke(app, list(args))
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    return out.exit_code, out.output, leaks


def test_run_queued_resume_and_fork_leave_no_connection_open(pg_url: str) -> None:
    order = json.dumps(
        {"order_id": "close-1", "customer_id": "c-1", "sku": "sku-1", "amount": 5, "quantity": 1}
    )
    code, output, leaks = invoke_and_collect(
        "orchestrate", "run", "checkout", "--input", order, "--db", pg_url, "--json"
    )
    assert code == 0 and not leaks, (output, leaks)
    saga_id = json.loads(output)["id"]
    for args in (
        ("orchestrate", "rollback", saga_id, "--db", pg_url, "--json"),
        ("orchestrate", "cancel", saga_id, "--db", pg_url),
        ("orchestrate", "fork", saga_id, "--from-step", "reserve_inventory", "--db", pg_url),
        ("orchestrate", "retry-step", saga_id, "charge_payment", "--db", pg_url),
        ("orchestrate", "skip-step", saga_id, "charge_payment", "--db", pg_url),
        ("orchestrate", "resume", saga_id, "--db", pg_url),
    ):
        code, output, leaks = invoke_and_collect(*args)
        assert not leaks, (args, code, output, leaks)
        assert "Traceback" not in output, (args, output)
