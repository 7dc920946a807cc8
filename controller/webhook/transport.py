"""One write per response: uvicorn's HTTP protocol with its writes gathered per event-loop step.

uvicorn writes a response's status line and headers as soon as the app sends
`http.response.start`, and the body as a second write. Over TLS each write is a record of its own
and a `send(2)` of its own, and a client waiting for the response is woken for the head and again
for the body. Gathering what one step of the event loop writes into a single write halves the
segments, records and wake-ups per admission; the gathered bytes go out on the very next step, so
nothing waits on a timer, or at once when they reach uvicorn's write high-water mark, so a streamed
response still meets the transport's backpressure.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GatheredWrites:
    """A connection's transport whose writes within one event-loop step go out as one.

    Everything else is the transport's own. `close()` sends what is gathered first, so a response
    followed by `Connection: close` is never cut off.
    """

    __slots__ = ("transport", "_loop", "_pending", "_size")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None
        self._size = 0

    def write(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self._size = len(data)
            self._loop.call_soon(self.flush)
        else:
            pending.append(data)
            self._size += len(data)
        # uvicorn only waits for the transport to drain once a write has paused it: a response
        # streamed without a pause of its own must reach the transport before it grows past that.
        if self._size >= HIGH_WATER_LIMIT:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self.transport.is_closing():
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.transport.get_protocol()

    def abort(self) -> None:
        self._pending = None
        self.transport.abort()


class GatheringHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through `GatheredWrites`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(GatheredWrites(transport, self.loop))  # type: ignore[arg-type]
