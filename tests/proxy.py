"""A loopback proxy in front of a real SQS server, for outage tests that keep the server's state.

Modes: `pass` forwards bytes both ways; `down` closes the listener and every connection (clients get
connection refused, as when the server is down); `error` and `throttle` answer every HTTP request
with a canned 503 or throttling error in SQS's JSON protocol; `blackhole` accepts connections and
never answers (a network partition: nothing is refused, nothing comes back), and every connection
open when it starts goes silent too. Switching between the other modes drops open connections, so
keep-alive clients see the change at once. The port stays the same across modes.

`drop_silently()` kills the connections open right now without telling either side (a NAT or load
balancer that forgot them): they stay open, bytes sent on them vanish, nothing ever comes back, and
new connections work. A short `blackhole` followed by `pass` is a silent loss: the pooled
connections in use during it stay dead afterwards, until the client gives up on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Final, Literal

HOST: Final = "127.0.0.1"
Mode = Literal["pass", "down", "error", "throttle", "blackhole"]

_ERRORS: Final[dict[str, tuple[str, str]]] = {
    "error": ("503 Service Unavailable", "ServiceUnavailable"),
    "throttle": ("400 Bad Request", "ThrottlingException"),
}


def _canned(mode: str) -> bytes:
    status, code = _ERRORS[mode]
    body = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": f"injected {code}"})
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.0\r\n"
        f"x-amzn-query-error: {code};Sender\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


class FaultProxy:
    """Forwards 127.0.0.1:<port> to a server, with switchable faults."""

    def __init__(self, target_host: str, target_port: int, port: int) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.mode: Mode = "down"
        self.requests_faulted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()
        self.connections = 0
        self.silenced = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def drop_silently(self) -> int:
        """Kill every open connection silently; return how many."""
        live = [link for link in self._links if not link.dead]
        for link in live:
            link.dead = True
        self.silenced += len(live)
        return len(live)

    async def set_mode(self, mode: Mode) -> None:
        previous, self.mode = self.mode, mode
        if mode == "blackhole":
            self.drop_silently()
            if self._server is None:
                self._server = await asyncio.start_server(self._accept, HOST, self.port)
            return
        if previous == "blackhole" and mode == "pass":
            return  # what went silent stays silent; new connections pass again
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        if mode == "down":
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
        elif self._server is None:
            self._server = await asyncio.start_server(self._accept, HOST, self.port)

    async def aclose(self) -> None:
        await self.set_mode("down")
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            if self.mode == "pass":
                await self._forward(reader, writer)
            elif self.mode == "blackhole":
                await _swallow(reader)
            else:
                await self._fault(reader, writer)
        except Exception:  # noqa: BLE001, S110 (a dropped connection is what this proxy is for)
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.add(up_writer)
        link = _Link()
        self._links.add(link)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_pipe(reader, up_writer, link))
                group.create_task(_pipe(up_reader, writer, link))
        finally:
            self._links.discard(link)
            self._writers.discard(up_writer)
            up_writer.close()
            with contextlib.suppress(ConnectionError):
                await up_writer.wait_closed()

    async def _fault(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            self.requests_faulted += 1
            writer.write(_canned(mode))
            await writer.drain()


class _Link:
    """One forwarded connection; a dead one forwards nothing, in either direction, for ever."""

    __slots__ = ("dead",)

    def __init__(self) -> None:
        self.dead = False


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link | None = None
) -> None:
    try:
        while data := await reader.read(65536):
            if link is not None and link.dead:
                continue  # silently lost: read (so the sender never blocks) and drop
            writer.write(data)
            await writer.drain()
    finally:
        if link is None or not link.dead:
            writer.close()


async def _swallow(reader: asyncio.StreamReader) -> None:
    """Read and drop everything until the client gives up: a black hole never answers."""
    while await reader.read(65536):
        pass
