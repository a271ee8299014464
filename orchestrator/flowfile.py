"""Reading flow definitions and service maps from files and the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from sagalab.orchestrator.errors import (
    FlowNotFoundError,
    FlowValidationError,
    ServiceConfigError,
    ValidationIssue,
)
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.safeyaml import safe_load

SERVICE_ENV_PREFIX = "SAGALAB_SERVICE_"
SERVICES_FILE_ENV = "SAGALAB_SERVICES_FILE"


def example_flow_names() -> list[str]:
    """Names of the flows shipped with sagalab."""
    folder = resources.files("sagalab.orchestrator") / "examples"
    return sorted(
        p.name.removesuffix(".yaml")
        for p in folder.iterdir()
        if p.name.endswith(".yaml") and not p.name.startswith("services")
    )


def _read_yaml(text: str, source: str) -> Any:
    try:
        return safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(parse)"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FlowValidationError(
            [ValidationIssue(source, where, f"malformed YAML: {problem}")]
        ) from None


def load_flow(ref: str | Path) -> FlowDefinition:
    """A flow from a YAML file path, or the name of a shipped example (e.g. `checkout`)."""
    path = Path(ref)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FlowNotFoundError(f"cannot read flow file {path}: {exc}") from None
        return flow_from_dict(_read_yaml(text, str(path)), source=str(path))
    name = str(ref)
    if name in example_flow_names():
        resource = resources.files("sagalab.orchestrator") / "examples" / f"{name}.yaml"
        return flow_from_dict(_read_yaml(resource.read_text("utf-8"), name), source=name)
    if path.is_dir():
        raise FlowNotFoundError(f"flow file {name} is a directory, not a YAML file")
    if path.suffix in (".yaml", ".yml") or os.sep in name:
        raise FlowNotFoundError(f"flow file {name} does not exist")
    raise FlowNotFoundError(
        f"no flow file or example flow named {name!r}; examples: {', '.join(example_flow_names())}"
    )


def load_services(path: str | Path | None = None) -> dict[str, str]:
    """Service name -> base URL: the services file (if any), then SAGALAB_SERVICE_<NAME>."""
    services: dict[str, str] = {}
    file = path or os.environ.get(SERVICES_FILE_ENV)
    if file:
        raw = read_services_file(file)
        # A file of breaker settings only (the URLs in SAGALAB_SERVICE_*) has no services.
        table = raw.get("services", {} if "breakers" in raw else None)
        if not isinstance(table, Mapping):
            raise ServiceConfigError(
                f"services file {file} must look like 'services: {{name: http://host:port}}'"
                + (" (services: is not a mapping)" if "services" in raw else "")
            )
        for name, url in table.items():
            services[str(name)] = base_url(url, f"services file {file}: services.{name}")
    for key, value in os.environ.items():
        if key.startswith(SERVICE_ENV_PREFIX) and value:
            services[key.removeprefix(SERVICE_ENV_PREFIX).lower()] = base_url(value, key)
    return services


def read_services_file(path: str | Path) -> Mapping[Any, Any]:
    """The services file's top-level mapping; ServiceConfigError in one line otherwise.

    A YAML syntax error is named by file and line (`services.yaml:4: ...`), not by
    PyYAML's several lines.
    """
    try:
        raw = safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ServiceConfigError(f"cannot read services file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        col = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ServiceConfigError(f"services file {where}: malformed YAML: {problem}{col}") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ServiceConfigError(
            f"services file {path} must look like 'services: {{name: http://host:port}}'"
        )
    return raw


def base_url(value: object, where: str) -> str:
    """`value` as a service's base URL (no trailing slash); ServiceConfigError naming `where`.

    An http(s) URL with a host and, if given, a port from 1 to 65535: anything else would
    only fail at call time, where a compensation retries it for ever.
    """

    def refuse(why: str) -> ServiceConfigError:
        return ServiceConfigError(
            f"{where}: {value!r} is not a service base URL ({why}); "
            "write it as http://host:port/path"
        )

    if not isinstance(value, str):
        raise refuse("not a string")
    if any(c.isspace() for c in value):
        raise refuse("it contains spaces")
    try:  # a malformed IPv6 host ("http://[::1/x") fails in urlsplit itself
        parts = urlsplit(value)
        hostname = parts.hostname
    except ValueError as exc:
        raise refuse(str(exc)) from None
    if parts.scheme not in ("http", "https"):
        raise refuse("the scheme must be http or https")
    if not hostname:
        raise refuse("no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or parts.netloc.endswith(":"):
        raise refuse("the port must be a number from 1 to 65535")
    if parts.query or parts.fragment:
        raise refuse("a base URL has no query or fragment")
    return value.rstrip("/")


def check_services(flow: FlowDefinition, services: Mapping[str, str]) -> None:
    """Raise ServiceConfigError naming every service the flow uses without a base URL."""
    missing = sorted({s.service for s in flow.steps if s.service and s.service not in services})
    if missing:
        env = ", ".join(SERVICE_ENV_PREFIX + m.upper() for m in missing)
        raise ServiceConfigError(
            f"no base URL for service(s) {', '.join(missing)}: set {env} or pass --services FILE"
        )
