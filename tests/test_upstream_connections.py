"""The edge's upstream client leaves no socket behind: not when closed mid-exchange, not when
its caller is cancelled at any point of a request. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from sagalab.edge.upstream import Upstream, UpstreamFailed


async def _silent_server() -> tuple[asyncio.Server, int, asyncio.Event]:
    """A server that reads a request and never answers; `seen` is set once one arrived."""
    seen = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            seen.set()
            await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def _resource_warnings(run: object) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        asyncio.run(run)  # type: ignore[arg-type]
        gc.collect()
    return [w for w in seen if issubclass(w.category, ResourceWarning)]


def test_close_ends_an_exchange_in_flight_and_leaves_no_socket() -> None:
    async def main() -> None:
        server, port, seen = await _silent_server()
        upstream = Upstream("127.0.0.1", port, timeout=30)
        task = asyncio.create_task(upstream.request("GET", "/slow", []))
        await asyncio.wait_for(seen.wait(), 5)
        upstream.close()  # as the edge's shutdown does with a request still waiting
        with pytest.raises(UpstreamFailed):  # its outcome is unknown, not a timeout
            await asyncio.wait_for(task, 5)
        server.close()
        await server.wait_closed()

    assert _resource_warnings(main()) == []


def test_a_request_cancelled_at_any_point_leaves_no_socket() -> None:
    async def main() -> None:
        server, port, _ = await _silent_server()
        for steps in range(40):  # cancelled after 0, 1, ... 39 turns of the loop
            upstream = Upstream("127.0.0.1", port, timeout=30)
            task = asyncio.create_task(upstream.request("GET", "/", []))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            upstream.close()
        server.close()
        await server.wait_closed()

    assert _resource_warnings(main()) == []
