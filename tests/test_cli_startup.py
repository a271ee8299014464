"""The CLI's start-up imports only what the command run needs (cli/main.py loads a command's
module when it runs; heavy libraries are imported where they are used).

Counted, not timed: which modules a command leaves in `sys.modules`. Before this, every
command (even `--help`) imported FastAPI, uvicorn, psycopg, SimPy, sqlite_utils (and numpy)
and httpx: about 1 s of CPU for each of the hundreds of CLI subprocesses the suite starts.
benchmarks/bench_cli_startup.py measures the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from sagalab.cli import main as cli_main

CHECKOUT_INPUT = {"order_id": "o1", "customer_id": "c1", "sku": "s", "quantity": 1, "amount": 5}

# What an operator's read of the database, or `--help`, has no use for.
HEAVY = {
    "fastapi",
    "starlette",
    "uvicorn",
    "psycopg",
    "simpy",
    "locust",
    "sqlite_utils",
    "numpy",
    "httpx",
    "prometheus_client",
}
# sagalab packages only other commands use.
OTHER_COMMANDS = ("sagalab.simulator", "sagalab.stack", "sagalab.loadtests", "sagalab.api")

# Runs the CLI as `python -m sagalab.cli.main` does, then writes the modules it loaded.
_PROBE = """
import json, runpy, sys
out = sys.argv.pop(1)
sys.argv[0] = "sagalab"
try:
    runpy.run_module("sagalab.cli.main", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env["COLUMNS"] = "100"
    return env


def loaded(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """The exit code of `sagalab ARGS` and every module it imported."""
    out = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *args],
        capture_output=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    found = json.loads(out.read_text())
    return found["code"], found["modules"]


@pytest.fixture(scope="module")
def saga_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small database with one queued checkout saga, and its id."""
    db = tmp_path_factory.mktemp("startup") / "sagas.db"
    made = subprocess.run(
        [sys.executable, "-m", "sagalab.cli.main", "orchestrate", "run", "checkout"]
        + ["--db", str(db), "--input", json.dumps(CHECKOUT_INPUT)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=True,
    )
    return db, made.stdout.strip()


@pytest.mark.parametrize("command", ["--help", "list", "status", "events"])
def test_reads_and_help_import_nothing_heavy(
    command: str, saga_db: tuple[Path, str], tmp_path: Path
) -> None:
    db, saga_id = saga_db
    args = {
        "--help": ["--help"],
        "list": ["orchestrate", "list", "--db", str(db)],
        "status": ["orchestrate", "status", saga_id, "--db", str(db)],
        "events": ["orchestrate", "events", saga_id, "--db", str(db)],
    }[command]
    code, modules = loaded(tmp_path, *args)
    assert code in (0, None)
    tops = {name.split(".")[0] for name in modules}
    assert tops & HEAVY == set()
    assert [m for m in modules if m.startswith(OTHER_COMMANDS)] == []
    # Only the command run is loaded, of the twelve commands' modules (cli/filters.py takes
    # `parse_since` from cli/verify.py, which imports its own needs where it uses them).
    commands = {f"sagalab.cli.{entry.module}" for entry in cli_main.COMMANDS.values()}
    expected = set() if command == "--help" else {"sagalab.cli.orchestrate", "sagalab.cli.verify"}
    assert commands & set(modules) == expected


def test_a_command_still_gets_what_it_uses(tmp_path: Path) -> None:
    """The laziness is per command: `simulate run --help` loads the simulator (SimPy)."""
    code, modules = loaded(tmp_path, "simulate", "run", "--help")
    assert code == 0
    assert "simpy" in {name.split(".")[0] for name in modules}


def test_lazy_help_is_the_full_apps_help() -> None:
    """`sagalab --help` (deferred commands) prints what the whole app prints, byte for byte."""

    def run(code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", "import sys; sys.argv[0] = 'sagalab'; " + code, "--help"],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=60,
            check=True,
        )
        return done.stdout

    lazy = run("from sagalab.cli.main import main; main()")
    full = run("from sagalab.cli.main import app; app()")
    assert lazy == full
    for name in cli_main.COMMANDS:
        assert f" {name} " in lazy


def test_commands_match_the_full_app() -> None:
    """COMMANDS names every command of the app, in its order, with its help's first paragraph."""
    full = typer.main.get_group(cli_main.app)
    assert list(full.commands) == list(cli_main.COMMANDS)
    for name, entry in cli_main.COMMANDS.items():
        real = full.commands[name]
        assert (real.help or "").split("\n\n")[0].strip() == entry.summary
        assert cli_main.load(name).help == real.help


@pytest.mark.parametrize("name", list(cli_main.COMMANDS))
def test_every_deferred_command_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each deferred command loads and parses: its own `--help` is shown, exit 0."""
    with pytest.raises(SystemExit) as exited:
        cli_main.lazy_command()([name, "--help"], prog_name="sagalab")
    assert exited.value.code == 0
    assert f"sagalab {name}" in capsys.readouterr().out
