"""The pure core imports no I/O, clock, randomness or runtime module, directly or through ours.

The core decides; the shells act (README, "Architecture"). What makes that true is what the core
modules import, so this test reads their source with `ast` (importing them would run whatever
they import) and follows every import of our own packages:

* a core module imports none of `BANNED` (I/O, clocks, randomness, concurrency, the libraries
  the shells do I/O with);
* our own modules it imports, and the packages around them (importing `orchestrator.saga` runs
  `orchestrator/__init__.py` first), are core modules too: nothing reaches the store, the runner,
  the worker, the API, the edge, the simulator or the CLI. A failure names the chain of imports.

What is core, and why the rest is not:

* core: `saga.py` (the state machine), `driver.py` (the saga driver both runtimes interpret),
  `outcomes.py` (what an answer means), `flow.py` (flow definitions), `templates.py`,
  `jsonsafe.py` (the one JSON check), `reconcile.py` (journals against ledgers), `records.py`
  (`direct_init`, the hot records' initialiser), `errors.py`
  (the exception tree they raise) and
  `policies/*` (retry, breaker, token bucket, balancer, autoscaling, firewall);
* `operations.py` (the operator actions) is a shell: it reads and appends through the store
  port, reads the wall clock by default and asks `leases` whether an owner's process is alive;
* `limits.py` is configuration of the shells: its bounds on real processes come from
  `os.cpu_count()` of this machine;
* `journal.py`, `store.py`, `views.py`, `registry.py`, `flowfile.py` and the runtime modules are
  shells or the data the shells exchange; nothing in the core imports them.

`pybreaker` and `tenacity` are banned too: both read clocks of their own, and their public
interfaces cannot take ours, so the breaker and retry policies are small pure rules of ours
(issue 9; their module docstrings say why).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The pure core, as paths from the repository root.
CORE = (
    "orchestrator/__init__.py",
    "orchestrator/saga.py",
    "orchestrator/driver.py",
    "orchestrator/flow.py",
    "orchestrator/templates.py",
    "orchestrator/jsonsafe.py",
    "orchestrator/outcomes.py",
    "orchestrator/errors.py",
    "orchestrator/reconcile.py",
    "orchestrator/forkplan.py",
    "orchestrator/sagafilter.py",
    "orchestrator/redact.py",
    "orchestrator/records.py",  # direct_init, the hot frozen records' __init__: pure
    "simulator/__init__.py",  # runs before the simulator's core modules: it imports nothing
    "simulator/calibrate.py",  # fitting a scenario to journal rows: pure, the CLI reads them
    "simulator/explore.py",  # seeded crash orderings through the driver: the seed's rng passed in
    "simulator/explore_checks.py",  # the invariants checked after each explored seed
    "simulator/explore_world.py",  # the explored world: faults, a fencing store, services
    "simulator/validate.py",  # validate's plan for the real stack and its sim-vs-real check
    "simulator/metastability.py",  # amplification and time to recover over sampled series
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "orchestrator" / "policies").glob("*.py")),
    "edge/__init__.py",  # runs before the edge's policies: it imports nothing
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "edge" / "policies").glob("*.py")),
)

#: Top-level packages of this repository: an import of one of them must stay inside CORE.
OURS = ("sagalab",)

#: sagalab/__init__.py resolves its public names lazily (nothing imported until one is used;
#: test_importing_the_core_loads_no_runtime checks it), so importing a core module through
#: the `sagalab` package does not run the runtime.
LAZY_INIT = "sagalab/__init__.py"

#: Modules the core never imports, with what each would bring in. `os.path` goes with `os`:
#: the core handles no file names, and `os.path.exists` is I/O.
BANNED = {
    "time": "a clock",
    "datetime": "a clock (datetime.now)",
    "random": "a global random generator",
    "secrets": "randomness",
    "uuid": "randomness and a clock",
    "asyncio": "an event loop",
    "threading": "threads",
    "multiprocessing": "processes",
    "concurrent": "threads or processes",
    "subprocess": "processes",
    "signal": "signals",
    "os": "the process and its files",
    "pathlib": "files",
    "io": "files",
    "shutil": "files",
    "tempfile": "files",
    "glob": "files",
    "logging": "log output",
    "importlib": "importing by name (which this test cannot follow)",
    "socket": "the network",
    "ssl": "the network",
    "select": "the network",
    "selectors": "the network",
    "http": "the network",
    "urllib.request": "the network",
    "httpx": "the network",
    "sqlite3": "the database",
    "sqlite_utils": "the database",
    "simpy": "the simulation's clock",
    "uvicorn": "a server",
    "fastapi": "a server",
    "starlette": "a server",
    "typer": "the CLI",
    "rich": "terminal output",
    "yaml": "reading files (flowfile.py reads YAML)",
    "pybreaker": "a wall clock (its open state reads datetime.now)",
    "tenacity": "a clock (time.monotonic) and the global random generator",
}

#: (core module, import) pairs that break the rule today, with the reason. Each must still be
#: true (the test fails when one is fixed, so the list only shrinks).
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_path(name: str) -> str | None:
    """The file of one of our modules by dotted name (a package is its `__init__.py`), as a
    path from the repository root: `sagalab.orchestrator.saga` is orchestrator/saga.py (the
    sagalab package links to the top-level folders)."""
    if name == "sagalab":
        return LAZY_INIT
    base = ROOT.joinpath(*name.removeprefix("sagalab.").split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return str(candidate.relative_to(ROOT))
    return None


def package_inits(name: str) -> list[str]:
    """The `__init__.py` files Python runs before module `name` (its enclosing packages)."""
    parts = name.split(".")
    found = []
    for i in range(1, len(parts)):
        init = module_path(".".join(parts[:i]))
        if init is not None and init != LAZY_INIT:
            found.append(init)
    return found


def imported_names(path: str) -> list[str]:
    """Every module `path` imports, by absolute dotted name, anywhere in the file.

    `from a import b` yields `a.b` when that is one of our modules and `a` otherwise, so an
    import of a sibling module is followed. Imports under `if TYPE_CHECKING:` count too: a
    core module that needs a runtime type for its annotations has the wrong shape.
    """
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    package = "sagalab." + path.removesuffix(".py").replace("/", ".")
    if not path.endswith("__init__.py"):
        package = package.rpartition(".")[0]
    else:
        package = package.removesuffix(".__init__")
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                names.append(sub if module_path(sub) is not None else module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            names.append("importlib")  # a dynamic import is banned like importlib itself
    return names


def banned_reason(name: str) -> str | None:
    """Why the core must not import `name` (None if it may)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        reason = BANNED.get(".".join(parts[:i]))
        if reason is not None:
            return reason
    return None


def violations(start: str) -> list[str]:
    """Every banned import reachable from core module `start`, each with its chain."""
    found: list[str] = []
    seen: set[str] = set()

    def visit(path: str, chain: list[str]) -> None:
        if path in seen:
            return
        seen.add(path)
        for name in imported_names(path):
            via = " -> ".join([*chain, name])
            if name.split(".")[0] in OURS:
                # Python runs the enclosing packages' __init__.py before the module itself.
                steps = [(init, f"{name} (runs {init})") for init in package_inits(name)]
                steps.append((module_path(name), name))
                for reached, label in steps:
                    if reached is None or reached in seen:
                        continue
                    if reached not in CORE:
                        where = " -> ".join([*chain, label])
                        found.append(f"{where}: {reached} is a shell or runtime module, not core")
                    else:
                        visit(reached, [*chain, label])
                continue
            reason = banned_reason(name)
            if reason is not None and (path, name.split(".")[0]) not in KNOWN_EXCEPTIONS:
                found.append(f"{via}: brings in {reason}")

    visit(start, [start])
    for init in package_inits(start.removesuffix(".py").replace("/", ".")):
        if init != start:
            visit(init, [start, init])
    return found


@pytest.mark.parametrize("path", CORE, ids=CORE)
def test_core_module_imports_no_io_clock_randomness_or_runtime(path: str) -> None:
    problems = violations(path)
    assert not problems, f"{path} must stay pure (see {Path(__file__).name}):\n" + "\n".join(
        problems
    )


def test_known_exceptions_are_still_needed() -> None:
    stale = [
        f"{path} no longer imports {module}: remove it from KNOWN_EXCEPTIONS"
        for path, module in sorted(KNOWN_EXCEPTIONS)
        if module not in {name.split(".")[0] for name in imported_names(path)}
    ]
    assert not stale, f"in {Path(__file__).name}:\n" + "\n".join(stale)


def test_the_guard_follows_imports_of_our_modules() -> None:
    """The chain is followed: a core module reaches a runtime module through `from x import y`."""
    assert "sagalab.orchestrator.policies.retry" in imported_names("orchestrator/saga.py")
    assert "sagalab.orchestrator.leases" in imported_names("orchestrator/operations.py")
    assert module_path("sagalab.orchestrator.policies") == "orchestrator/policies/__init__.py"
    # operations.py is a shell: were it core, the guard would say so, naming the chain.
    problems = "\n".join(violations("orchestrator/operations.py"))
    assert "sagalab.orchestrator.leases: orchestrator/leases.py is a shell" in problems
    assert "-> time: brings in a clock" in problems


def test_importing_the_core_loads_no_runtime() -> None:
    """`import sagalab.orchestrator.saga` runs sagalab/__init__.py, which must stay lazy: the
    simulator and library users importing the core do not load the store, httpx or the CLI."""
    probe = (
        "import sys, sagalab.orchestrator.saga, sagalab.orchestrator.driver;"
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    runtime = {"sqlite3", "httpx", "typer", "sagalab.orchestrator.runner", "sagalab.cli"}
    assert not runtime & set(loaded), sorted(runtime & set(loaded))


def test_the_public_api_resolves_every_name() -> None:
    import sagalab

    assert set(sagalab.__all__) == set(sagalab._WHERE)
    for name in sagalab.__all__:
        assert getattr(sagalab, name).__name__ == name
    with pytest.raises(AttributeError):
        _ = sagalab.no_such_name


def test_every_import_of_ours_goes_through_the_sagalab_name() -> None:
    """Installed, only `sagalab` exists: `from orchestrator.x import y` would work in a checkout
    (and load a second copy of the module) but not for a user."""
    folders = (
        "cli",
        "orchestrator",
        "simulator",
        "edge",
        "fakeservices",
        "loadtests",
        "stack",
        "ui",
    )
    bare = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in ("sagalab", "build", "dist") or ".venv" in relative.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            bare += [f"{relative}:{node.lineno}: {n}" for n in names if n.split(".")[0] in folders]
    assert not bare, "import these as sagalab.…:\n" + "\n".join(bare)


def test_python_m_sagalab_is_the_command() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "sagalab", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert shown.returncode == 0 and "orchestrate" in shown.stdout, shown.stderr
