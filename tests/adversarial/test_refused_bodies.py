"""Responses that end their connection, against a real ``vessel serve``, over raw sockets.

Hypercorn 0.18 closes such a connection from the task that sent the response, which
quart-trio cancels as soon as the response is out: before the gateway shielded that
close (vessel/gateway/_serve.py), a 401 or a 413 with ``Connection: close`` left the
socket open, and one answered while the request body was still arriving left the server
reading whatever the client went on sending, without end.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.cli._support import Daemon, start_daemon, stop_daemon
from vessel.gateway._app import MAX_UPLOAD_BYTES
from vessel.gateway._serve import LINGER_BYTES

from ._figures import Figures
from ._resources import watch_daemon

MiB = 2**20
#: What a client offers to send after the answer: far more than the server may take.
OFFERED = 256 * MiB


def _most_buffered(name: str) -> int:
    """The largest buffer the kernel gives a TCP socket (tcp_wmem or tcp_rmem's maximum)."""
    return int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])


#: What it may get into the connection before the server's reset stops it: what the
#: server drops while it lingers, plus the most both sockets' buffers can hold (4 and
#: 32 MiB here; 1 MiB was taken, in 1 MiB writes).
TAKEN_BOUND = LINGER_BYTES + _most_buffered("tcp_wmem") + _most_buffered("tcp_rmem") + MiB
#: Every wait for the server.
WAIT = 30.0


def head(path: str, framing: str, *, token: str | None = None, close: bool = False) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    connection = "Connection: close\r\n" if close else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
        f"{framing}\r\n{connection}\r\n"
    ).encode()


async def connect(daemon: Daemon) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", int(daemon.url.rsplit(":", 1)[1]))


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    """One whole response (its head and Content-Length body) from ``stream``; the bytes
    after it stay in ``buffer``."""
    with trio.fail_after(WAIT):
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed before a whole response: {bytes(buffer)!r}"
            buffer += chunk
        top, _, _ = bytes(buffer).partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in top.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(buffer) < len(top) + 4 + length:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed mid-response: {bytes(buffer)!r}"
            buffer += chunk
    end = len(top) + 4 + length
    response = bytes(buffer[:end])
    del buffer[:end]
    return response


async def assert_eof(stream: trio.SocketStream, buffer: bytearray) -> None:
    """The server closes its side after the response: nothing more, then EOF."""
    with trio.fail_after(WAIT):
        chunk = await stream.receive_some(65536)
    assert bytes(buffer) + chunk == b"", bytes(buffer) + chunk


async def offer_the_rest(stream: trio.SocketStream) -> int:
    """Send up to OFFERED bytes more, as a client that ignores the answer does: how many
    the connection took before the server stopped it."""
    block = b"\0" * MiB
    sent = 0
    with trio.fail_after(WAIT * 2):
        try:
            while sent < OFFERED:
                await stream.send_all(block)
                sent += len(block)
        except trio.BrokenResourceError:
            pass  # the server's reset: it closed the connection
    return sent


async def test_a_response_that_ends_the_connection_closes_it(
    tmp_path: Path, figures: Figures
) -> None:
    """A 401 for a whole request with ``Connection: close``, then the socket's EOF; a 401
    and a 413 (over the upload limit) answered while a body is still coming, with or
    without ``Connection: close``, fixed-length or chunked: the answer, EOF, and the rest
    of the body cut off after a bounded amount (the server resets the connection). A 401
    on a keep-alive connection whose request was whole keeps it: the next request on it
    is served."""
    assert OFFERED > 2 * TAKEN_BOUND, "this machine's socket buffers hide the bound"
    row = figures.row("responses that end the connection")
    async with trio.open_nursery() as nursery:
        daemon = await start_daemon(nursery, tmp_path / "data")
        token = (daemon.data_dir / "token").read_text().strip()
        call = "/api/modules/x/call/y"
        try:
            # Every connection closed before the watch ends: the daemon must have let go
            # of each (the bug was connections it held for good).
            async with watch_daemon(row, daemon.pid):
                # A whole request, Connection: close: the 401, then EOF.
                async with await connect(daemon) as stream:
                    buffer = bytearray()
                    await stream.send_all(head(call, "Content-Length: 2", close=True) + b"{}")
                    response = await read_response(stream, buffer)
                    assert response.startswith(b"HTTP/1.1 401 "), response
                    assert b"connection: close" in response.lower(), response
                    await assert_eof(stream, buffer)
                row.bad_inputs += 1
                row.answered += 1

                # A body still coming: the answer, EOF, and the rest refused.
                huge = f"Content-Length: {2 * OFFERED}"
                cases = {
                    "401, keep-alive": head(call, huge),
                    "401, Connection: close": head(call, huge, close=True),
                    # One chunk bigger than all that is offered.
                    "401, chunked": head(call, "Transfer-Encoding: chunked") + b"20000000\r\n",
                    "413": head(call, f"Content-Length: {MAX_UPLOAD_BYTES + 1}", token=token),
                }
                for case, request in cases.items():
                    async with await connect(daemon) as stream:
                        buffer = bytearray()
                        await stream.send_all(request + b"\0" * 1024)
                        response = await read_response(stream, buffer)
                        status = b"413" if case == "413" else b"401"
                        assert response.startswith(b"HTTP/1.1 " + status), (case, response)
                        await assert_eof(stream, buffer)
                        taken = await offer_the_rest(stream)
                    assert taken < TAKEN_BOUND, (
                        f"{case}: {taken / MiB:.0f} MiB taken after the answer"
                    )
                    row.bad_inputs += 1
                    row.answered += 1

                # A whole request on a keep-alive connection: the 401 keeps the connection.
                async with await connect(daemon) as stream:
                    buffer = bytearray()
                    await stream.send_all(head(call, "Content-Length: 2") + b"{}")
                    response = await read_response(stream, buffer)
                    assert response.startswith(b"HTTP/1.1 401 "), response
                    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    response = await read_response(stream, buffer)
                    assert response.startswith(b"HTTP/1.1 200 "), response
                row.bad_inputs += 1
                row.answered += 2
        finally:
            await stop_daemon(daemon)
