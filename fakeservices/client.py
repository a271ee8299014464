"""A small synchronous client for the lab's admin API (used by `sagalab services`)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from sagalab.fakeservices.catalog import get_service
from sagalab.fakeservices.errors import AdminRequestRejected, FakeServicesError, ServicesUnreachable

DEFAULT_URL = "http://127.0.0.1:8700"


class AdminClient:
    """Talks to ``/_admin`` of a running lab. Use as a context manager to close it."""

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        try:
            self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        except httpx.InvalidURL:
            raise FakeServicesError(f"{base_url!r} is not a valid URL") from None

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.TransportError, httpx.InvalidURL):
            raise ServicesUnreachable(self.base_url) from None
        if response.status_code == 404:
            # Something answers, but it is not a lab.
            raise ServicesUnreachable(self.base_url)
        try:
            data = response.json()
        except ValueError:
            raise ServicesUnreachable(self.base_url) from None
        if response.is_error:
            error = data.get("error", "error") if isinstance(data, dict) else "error"
            message = (
                data.get("message", response.text) if isinstance(data, dict) else response.text
            )
            raise AdminRequestRejected(response.status_code, str(error), str(message))
        return data

    def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        data: dict[str, Any] = self._request("GET", "/healthz")
        return data

    def add_fault(self, service: str, **spec: Any) -> dict[str, Any]:
        """Inject a fault (fields as in :class:`fakeservices.faults.FaultSpec`; None omitted)."""
        get_service(service)
        body = {"service": service, **{k: v for k, v in spec.items() if v is not None}}
        data: dict[str, Any] = self._request("POST", "/_admin/faults", json=body)
        return data

    def faults(self) -> list[dict[str, Any]]:
        """List the stored faults."""
        data: list[dict[str, Any]] = self._request("GET", "/_admin/faults")["faults"]
        return data

    def clear_faults(self, service: str | None = None) -> int:
        """Clear all faults, or one service's; return how many were removed."""
        params = {}
        if service is not None:
            get_service(service)
            params["service"] = service
        removed: int = self._request("DELETE", "/_admin/faults", params=params)["removed"]
        return removed

    def ledger(self, service: str | None = None) -> list[dict[str, Any]]:
        """Return the ledger entries, optionally of one service."""
        path = "/_admin/ledger"
        if service is not None:
            path = f"/{get_service(service).name}/ledger"
        entries: list[dict[str, Any]] = self._request("GET", path)["entries"]
        return entries

    def reset(self) -> None:
        """Clear the ledger, state and faults."""
        self._request("POST", "/_admin/reset")

    def close(self) -> None:
        """Close the underlying HTTP client."""
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
