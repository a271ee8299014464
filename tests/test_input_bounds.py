"""`--input @file` / `@-` reads at most the JSON size limit, refuses bytes that are not UTF-8
and an empty file name, and every door refuses a number too long to be a number (issue 8,
outside tester's round).

The unbounded reads are tested in a subprocess whose address space is capped: a CLI that reads
the whole of /dev/zero or an endless stdin dies of MemoryError there instead of eating the
machine, and the test fails."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.orchestrator.errors import InputError
from sagalab.orchestrator.jsonsafe import MAX_BYTES, MAX_DIGITS, check_json_value, loads_strict

ROOT = Path(__file__).resolve().parent.parent
CAP_BYTES = 600 * 1024 * 1024  # address space for the child: far below what an unbounded read takes

CAPPED_CLI = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from sagalab.cli.main import app
sys.argv = ["sagalab", *sys.argv[1:]]
app()
"""


def capped_cli(args: list[str], *, stdin: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", CAPPED_CLI.format(cap=CAP_BYTES), *args],
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_input_from_an_endless_file_stops_at_the_limit(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    started = time.monotonic()
    result = capped_cli(
        ["orchestrate", "run", "checkout", "--db", str(db), "--input", "@/dev/zero"]
    )
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert f"{MAX_BYTES}" in line.replace(",", "") and "--input" in line
    assert time.monotonic() - started < 20
    assert not db.exists()


def test_input_from_an_endless_stdin_stops_at_the_limit(tmp_path: Path) -> None:
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        assert yes.stdout is not None
        result = capped_cli(
            ["orchestrate", "run", "checkout", "--db", str(tmp_path / "s.db"), "--input", "@-"],
            stdin=yes.stdout.fileno(),
        )
    finally:
        yes.kill()
        yes.wait()
        if yes.stdout is not None:
            yes.stdout.close()
    assert result.returncode == 2, result.stderr
    assert f"{MAX_BYTES}" in one_error_line(result.stderr).replace(",", "")


def test_input_exactly_at_the_limit_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text('"' + "x" * (MAX_BYTES - 2) + '"')
    result = CliRunner().invoke(
        app,
        ["orchestrate", "run", "checkout", "--db", str(tmp_path / "s.db"), "--input", f"@{path}"],
    )
    # Read whole and parsed: the flow then refuses a string where it wants an object.
    assert "bytes; at most" not in result.stderr, result.stderr


def test_input_file_that_is_not_utf8_is_one_line_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "utf16.json"
    path.write_bytes(b"\xff\xfe{\x00}\x00")
    result = CliRunner().invoke(
        app,
        ["orchestrate", "run", "checkout", "--db", str(tmp_path / "s.db"), "--input", f"@{path}"],
    )
    assert result.exit_code == 2, result.output
    assert "not UTF-8" in one_error_line(result.stderr)


def test_input_at_sign_alone_asks_for_a_file_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["orchestrate", "run", "checkout", "--db", str(tmp_path / "s.db"), "--input", "@"]
    )
    assert result.exit_code == 2, result.output
    assert "--input @ needs a file name (or @- for stdin)" in one_error_line(result.stderr)


# -- numbers too long to be numbers -------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    ["9" * 5000, "-" + "9" * 5000, "9" * (MAX_DIGITS + 1), "1" + "0" * 400 + ".5"],
    ids=["over-python-limit", "negative", "just-over-ours", "long-float"],
)
def test_a_number_too_long_is_refused_clearly(number: str) -> None:
    with pytest.raises(InputError, match="number too long") as caught:
        loads_strict('{"amount": ' + number + "}", what="--input")
    assert "set_int_max_str_digits" not in str(caught.value)
    assert str(MAX_DIGITS) in str(caught.value)


def test_a_number_of_max_digits_is_kept() -> None:
    assert loads_strict("9" * MAX_DIGITS) == int("9" * MAX_DIGITS)


def test_check_json_value_refuses_a_huge_integer() -> None:
    with pytest.raises(InputError, match="number too long"):
        check_json_value({"a": 10**MAX_DIGITS}, what="input")


def test_cli_refuses_a_huge_integer_with_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "orchestrate",
            "run",
            "checkout",
            "--db",
            str(tmp_path / "s.db"),
            "--input",
            '{"amount": ' + "9" * 5000 + "}",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "number too long" in one_error_line(result.stderr)


@pytest.mark.parametrize(
    "args",
    [
        [b"orchestrate", b"list", b"--error", b"\xff"],
        [b"orchestrate", b"list", b"--key", b"k\xfe"],
        [b"orchestrate", b"rollback", b"01a2", b"--force", b"--reason", b"bad\xff"],
        [b"orchestrate", b"run", b"checkout", b"--idempotency-key", b"k\xff", b"-i", b"{}"],
        [b"orchestrate", b"list", b"--db", b"caf\xe9.db"],
    ],
    ids=["list-error", "list-key", "rollback-reason", "run-key", "db-path"],
)
def test_an_argument_that_is_not_utf8_is_exit_2_in_one_line(
    tmp_path: Path, args: list[bytes]
) -> None:
    """Bytes that are not UTF-8 on the command line (Python reads them as lone surrogates,
    which SQLite cannot store) are refused before anything runs, not a UnicodeEncodeError
    traceback out of the store."""
    db = tmp_path / "sagas.db"
    done = subprocess.run(
        [sys.executable.encode(), b"-m", b"sagalab.cli.main", *args],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SAGALAB_DB": str(db)},
        check=False,
    )
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, err
    assert "Traceback" not in err and "not UTF-8 text" in err
    assert len(err.strip().splitlines()) == 1
    assert not db.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["orchestrate", "list", "--db", "loop"],
        ["orchestrate", "run", "checkout", "-i", "{}", "--db", "loop"],
        ["stack", "status", "--dir", "loop"],
        ["stack", "up", "--detach", "--dir", "loop"],
    ],
    ids=["list-db", "run-db", "stack-status", "stack-up"],
)
def test_a_loop_of_symbolic_links_is_exit_5_in_one_line(tmp_path: Path, args: list[str]) -> None:
    """`ln -s b a; ln -s a b`: pathlib raises RuntimeError("Symlink loop ...") as the path is
    resolved, which came out as a traceback."""
    (tmp_path / "loop").symlink_to(tmp_path / "back")
    (tmp_path / "back").symlink_to(tmp_path / "loop")
    done = subprocess.run(
        [sys.executable, "-m", "sagalab.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 5, done.stderr
    assert "Traceback" not in done.stderr and "symbolic links" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "loop"]
