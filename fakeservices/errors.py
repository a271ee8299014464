"""Errors raised by the fake services library and its admin client.

FakeServicesError            base of everything raised here
├── UnknownServiceError      a name that is not one of the four fake services
├── PortInUseError           the address to listen on is taken
├── ServerStartError         uvicorn did not come up in time
├── ServicesUnreachable      nothing answers at the admin URL
└── AdminRequestRejected     the admin API refused a request (bad values)
"""

from __future__ import annotations


class FakeServicesError(Exception):
    """Base class for every error raised by :mod:`fakeservices`."""


class UnknownServiceError(FakeServicesError):
    """A service name that the lab does not host."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown service {name!r}; choose one of: {', '.join(known)}")


class PortInUseError(FakeServicesError):
    """The host and port to listen on are already taken by another process."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        super().__init__(
            f"cannot listen on {host}:{port}: {reason}; stop whatever uses it or pick another "
            "port with --port"
        )


class ServerStartError(FakeServicesError):
    """The uvicorn server thread died or did not report `started` in time."""


class ServicesUnreachable(FakeServicesError):
    """No fake services answer at the given base URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(f"no fake services answer at {url}; start them with `sagalab services up`")


class AdminRequestRejected(FakeServicesError):
    """The admin API answered a 4xx: the request itself was wrong."""

    def __init__(self, status: int, error: str, message: str) -> None:
        self.status = status
        self.error = error
        super().__init__(message)
