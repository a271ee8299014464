"""A services file (or SAGALAB_SERVICE_<NAME>) is checked when it is loaded.

A malformed URL or an out-of-range breaker setting is refused at once with exit 5 and a line
naming the service and the setting, before any saga is stored: never a saga that retries an
unusable URL or compensates for ever.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.orchestrator.breaker_board import BreakerConfig, load_breaker_configs
from sagalab.orchestrator.flowfile import load_services

runner = CliRunner()
ORDER = '{"order_id":"o","customer_id":"c","sku":"A","quantity":1,"amount":1}'
GOOD_URLS = {
    "inventory": "http://127.0.0.1:9/inventory",
    "payments": "https://payments.internal:8443",
    "shipping": "http://localhost:9/shipping/",
    "notifications": "http://[::1]:9",
}

BAD_URLS = {
    "no-scheme": ("127.0.0.1:8700/payments", "services.payments"),
    "host-port-only": ("localhost:8700", "services.payments"),
    "not-http": ("ftp://127.0.0.1/payments", "services.payments"),
    "port-out-of-range": ("http://127.0.0.1:99999/payments", "port"),
    "port-not-a-number": ("http://127.0.0.1:80a/payments", "port"),
    "port-zero": ("http://127.0.0.1:0/payments", "port"),
    "no-host": ("http:///payments", "host"),
    "spaces": ("http://127.0.0.1:8700/pay ments", "services.payments"),
    "not-a-string": (8700, "services.payments"),
    "ipv6-unclosed": ("http://[::1/payments", "Invalid IPv6 URL"),
    "ipv6-not-an-address": ("http://[zz]/payments", "services.payments"),
}

BAD_BREAKERS = {
    "fail_max-zero": ({"fail_max": 0}, "fail_max"),
    "fail_max-negative": ({"fail_max": -3}, "fail_max"),
    "fail_max-text": ({"fail_max": "three"}, "fail_max"),
    "fail_max-bool": ({"fail_max": True}, "fail_max"),
    "fail_max-fraction": ({"fail_max": 2.5}, "fail_max"),
    "fail_max-absurd": ({"fail_max": 10**9}, "fail_max"),
    "reset_timeout-zero": ({"reset_timeout": 0}, "reset_timeout"),
    "reset_timeout-negative": ({"reset_timeout": -5}, "reset_timeout"),
    "reset_timeout-absurd": ({"reset_timeout": 1e9}, "reset_timeout"),
    "reset_timeout-nan": ({"reset_timeout": float("nan")}, "reset_timeout"),
    "reset_timeout-inf": ({"reset_timeout": float("inf")}, "reset_timeout"),
    "reset_timeout-text": ({"reset_timeout": "10s"}, "reset_timeout"),
    "success_threshold-zero": ({"success_threshold": 0}, "success_threshold"),
    "success_threshold-text": ({"success_threshold": "1"}, "success_threshold"),
    "unknown-setting": ({"fail_maxx": 3}, "fail_maxx"),
    "not-a-mapping": (3, "breakers.payments"),
}


def _services_file(tmp: Path, urls: dict[str, object], breakers: object = None) -> Path:
    doc: dict[str, object] = {"services": urls}
    if breakers is not None:
        doc["breakers"] = {"payments": breakers}
    path = tmp / "services.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INVENTORY", "PAYMENTS", "SHIPPING", "NOTIFICATIONS"):
        monkeypatch.delenv(f"SAGALAB_SERVICE_{name}", raising=False)
    monkeypatch.delenv("SAGALAB_SERVICES_FILE", raising=False)
    monkeypatch.delenv("SAGALAB_DB", raising=False)


COMMANDS = {
    "run --wait": ["orchestrate", "run", "checkout", "--input", ORDER, "--wait"],
    "run": ["orchestrate", "run", "checkout", "--input", ORDER],  # queued: checked all the same
    "worker": ["worker", "--exit-when-idle", "0.1", "--max-seconds", "2"],
}


def _assert_refused(args: list[str], services: Path, tmp: Path, *words: str) -> None:
    db = tmp / "sagas.db"
    result = runner.invoke(app, [*args, "--services", str(services), "--db", str(db)])
    assert result.exit_code == 5, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not db.exists()  # refused before any saga (or database) was stored


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(BAD_URLS))
def test_malformed_service_url_is_refused_at_load(command: str, case: str, tmp_path: Path) -> None:
    url, word = BAD_URLS[case]
    services = _services_file(tmp_path, {**GOOD_URLS, "payments": url})
    _assert_refused(COMMANDS[command], services, tmp_path, "payments", word)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(BAD_BREAKERS))
def test_out_of_range_breaker_setting_is_refused_at_load(
    command: str, case: str, tmp_path: Path
) -> None:
    settings, word = BAD_BREAKERS[case]
    services = _services_file(tmp_path, GOOD_URLS, settings)
    _assert_refused(COMMANDS[command], services, tmp_path, "payments", word)


def test_malformed_url_in_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = _services_file(tmp_path, GOOD_URLS)
    monkeypatch.setenv("SAGALAB_SERVICE_PAYMENTS", "payments:8700")
    _assert_refused(COMMANDS["run --wait"], services, tmp_path, "SAGALAB_SERVICE_PAYMENTS")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_missing_services_file_is_refused(command: str, tmp_path: Path) -> None:
    _assert_refused(COMMANDS[command], tmp_path / "nope.yaml", tmp_path, "nope.yaml")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_breaker_for_a_service_nothing_configures_is_refused(
    command: str, tmp_path: Path
) -> None:
    services = tmp_path / "services.yaml"
    doc = {"services": GOOD_URLS, "breakers": {"nosuch": {"fail_max": 3}}}
    services.write_text(yaml.safe_dump(doc))
    _assert_refused(COMMANDS[command], services, tmp_path, "breakers.nosuch", "no service")


def test_a_breaker_may_name_a_service_configured_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = tmp_path / "services.yaml"
    services.write_text("breakers:\n  payments: {fail_max: 3}\n")  # no services: section
    monkeypatch.setenv("SAGALAB_SERVICE_PAYMENTS", "http://127.0.0.1:9/payments")
    assert load_services(services) == {"payments": "http://127.0.0.1:9/payments"}
    assert load_breaker_configs(services) == {"payments": BreakerConfig(fail_max=3)}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_yaml_syntax_error_is_one_line_with_file_and_line(command: str, tmp_path: Path) -> None:
    services = tmp_path / "services.yaml"
    services.write_text("services:\n  payments: http://127.0.0.1:9\n  shipping: [oops\n")
    _assert_refused(COMMANDS[command], services, tmp_path, f"{services}:", "line 4")


def test_good_settings_load(tmp_path: Path) -> None:
    services = _services_file(
        tmp_path, GOOD_URLS, {"fail_max": 3, "reset_timeout": 2.5, "success_threshold": 2}
    )
    assert load_services(services)["payments"] == "https://payments.internal:8443"
    assert load_services(services)["shipping"] == "http://localhost:9/shipping"
    assert load_breaker_configs(services) == {
        "payments": BreakerConfig(fail_max=3, reset_timeout=2.5, success_threshold=2)
    }


def test_breaker_config_refuses_bad_values_in_code_too() -> None:
    with pytest.raises(ValueError, match="reset_timeout"):
        BreakerConfig(reset_timeout=0)
    with pytest.raises(ValueError, match="fail_max"):
        BreakerConfig(fail_max=0)


@pytest.mark.parametrize("verb", ["rollback", "retry-step", "skip-step"])
def test_an_operator_action_with_a_bad_services_file_writes_nothing(
    verb: str, tmp_path: Path
) -> None:
    db = tmp_path / "sagas.db"
    queued = runner.invoke(app, ["orchestrate", "run", "checkout", "-i", ORDER, "--db", str(db)])
    assert queued.exit_code == 0, queued.stderr
    saga_id = queued.stdout.strip()
    args = {
        "rollback": ["rollback", saga_id],
        "retry-step": ["retry-step", saga_id, "charge_payment"],
        "skip-step": ["skip-step", saga_id, "charge_payment", "--reason", "by hand"],
    }[verb]
    bad = _services_file(tmp_path, {**GOOD_URLS, "payments": "ftp://127.0.0.1/payments"})
    result = runner.invoke(app, ["orchestrate", *args, "--services", str(bad), "--db", str(db)])
    assert result.exit_code == 5, (result.exit_code, result.stderr)
    assert "services.payments" in result.stderr and "Traceback" not in result.stderr
    events = runner.invoke(app, ["orchestrate", "events", saga_id, "--db", str(db), "--json"])
    assert [e["type"] for e in json.loads(events.stdout)] == ["saga_created"]
