"""GatheredWrites: what one event-loop step writes goes out as one write, in order, and nothing is
lost on close."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from controller.webhook.transport import GatheredWrites, GatheringHttpProtocol


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 4242)}.get(name, default)


async def _step() -> None:
    await asyncio.sleep(0)


def _run(scenario):
    async def main():
        transport = RecordingTransport()
        gathered = GatheredWrites(transport, asyncio.get_running_loop())
        await scenario(gathered, transport)

    asyncio.run(main())


def test_writes_of_one_step_go_out_as_one():
    async def scenario(gathered, transport):
        gathered.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        gathered.write(b"{}")
        assert transport.writes == []
        await _step()
        assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        gathered.write(b"next")
        await _step()
        assert transport.writes[1:] == [b"next"]

    _run(scenario)


def test_a_write_reaching_the_high_water_mark_goes_out_at_once():
    async def scenario(gathered, transport):
        gathered.write(b"head")
        gathered.write(b"x" * HIGH_WATER_LIMIT)
        assert transport.writes == [b"head" + b"x" * HIGH_WATER_LIMIT]
        gathered.write(b"tail")
        await _step()
        assert transport.writes[1:] == [b"tail"]

    _run(scenario)


def test_close_sends_what_is_gathered_first():
    async def scenario(gathered, transport):
        gathered.write(b"head")
        gathered.write(b"body")
        gathered.close()
        assert transport.writes == [b"headbody"]
        assert transport.closed
        await _step()  # the scheduled flush finds nothing left to send
        assert transport.writes == [b"headbody"]

    _run(scenario)


def test_nothing_is_written_to_a_transport_already_closing_or_aborted():
    async def scenario(gathered, transport):
        gathered.write(b"late")
        transport.closed = True  # the peer went away within the step
        await _step()
        assert transport.writes == []

    _run(scenario)

    async def aborted(gathered, transport):
        gathered.write(b"dropped")
        gathered.abort()
        await _step()
        assert transport.aborted and transport.writes == []

    _run(aborted)


@pytest.mark.parametrize(
    ("call", "check"),
    [
        (lambda g: g.pause_reading(), lambda t: not t.reading),
        (lambda g: g.get_extra_info("peername"), lambda t: True),
    ],
)
def test_everything_else_is_the_transports_own(call, check):
    async def scenario(gathered, transport):
        result = call(gathered)
        assert check(transport)
        if result is not None:
            assert result == ("127.0.0.1", 4242)
        assert gathered.is_closing() is False

    _run(scenario)


def test_a_streamed_response_still_waits_for_a_slow_client():
    """Backpressure survives the gathering: an app streaming 20 MiB to a client that does not read
    is held back by the transport, not buffered whole; the client then gets every byte."""
    chunk, chunks = b"x" * (256 * 1024), 80

    async def app(scope, receive, send):
        length = str(len(chunk) * chunks).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        for i in range(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < chunks - 1})

    async def main():
        config = uvicorn.Config(
            app, http=GatheringHttpProtocol, ws="none", lifespan="off", log_level="warning"
        )
        server = uvicorn.Server(config)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        await asyncio.sleep(0.5)  # the client reads nothing meanwhile
        assert server.server_state.tasks, "the request was not started"
        assert not any(task.done() for task in server.server_state.tasks), "the app was not held back"
        received = b""
        while len(received) < len(chunk) * chunks:
            data = await reader.read(1 << 20)
            assert data, "connection closed early"
            received += data
        head, _, body = received.partition(b"\r\n\r\n")
        while len(body) < len(chunk) * chunks:
            body += await reader.read(1 << 20)
        assert head.startswith(b"HTTP/1.1 200") and body == chunk * chunks
        writer.close()
        server.should_exit = True
        await serving

    asyncio.run(main())
