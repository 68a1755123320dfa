"""Uploads that try to take the daemon's memory: a chunked body far over the limit (no
``Content-Length`` to refuse it by), and several large uploads at once, against a real
``vessel serve`` whose peak memory (``VmHWM``) is read from /proc.

Before uploads were streamed to disk, a chunked 300 MiB upload was read whole and
compiled (daemon peak 2.2 GB) and four parallel 60 MiB uploads peaked at 1.7 GB.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio

from tests.cli._support import Daemon, start_daemon, stop_daemon

from ._figures import Figures
from ._resources import watch_daemon

MiB = 2**20
REPO = Path(__file__).resolve().parents[2]
TESTKIT_MANIFEST = REPO / "tests" / "guests" / "testkit" / "manifest.json"
BOUNDARY = "hostile-upload"
#: What the uploads may add to the daemon's peak memory: generous (the chunk buffers,
#: the decoder, the page cache's share of a mapped file), and far below any one upload.
PEAK_GROWTH_BOUND = 48 * MiB


def peak_memory(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def manifest(module_id: str) -> bytes:
    doc = json.loads(TESTKIT_MANIFEST.read_bytes())
    doc["id"] = module_id
    return json.dumps(doc).encode()


def part_heads(module_id: str) -> bytes:
    """The manifest part and the head of the wasm part of a multipart body."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="manifest"; '
        'filename="manifest.json"\r\n\r\n'.encode()
        + manifest(module_id)
        + f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="wasm"; '
        'filename="module.wasm"\r\n\r\n'.encode()
    )


def request_head(daemon: Daemon, token: str, *, length: int | None) -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST /api/modules HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def leftovers(daemon: Daemon) -> list[str]:
    modules = daemon.data_dir / "modules"
    return sorted(p.name for p in modules.iterdir() if p.name.startswith("."))


async def connect(daemon: Daemon) -> trio.SocketStream:
    port = int(daemon.url.rsplit(":", 1)[1])
    return await trio.open_tcp_stream("127.0.0.1", port)


async def status_of_answer(stream: trio.SocketStream) -> int | None:
    """The status of the answer on ``stream``; None if the server reset the connection
    first (it closes a connection whose refused body is still arriving)."""
    raw = b""
    try:
        while b"\r\n" not in raw:
            data = await stream.receive_some(65536)
            if not data:
                return None
            raw += data
    except trio.BrokenResourceError:
        return None
    return int(raw.split(b" ", 2)[1])


async def test_uploads_stay_on_disk_and_out_of_the_daemons_memory(
    tmp_path: Path, figures: Figures
) -> None:
    """A chunked upload of 300 MiB is refused once 64 MiB have arrived, whatever its
    framing; four 60 MiB uploads at once are received on disk, and a fifth meanwhile is
    refused too_many_requests; the daemon's peak memory grows by less than one upload,
    nothing is left in the data dir, and the daemon answers throughout."""
    row = figures.row("uploads: chunked, parallel")
    async with trio.open_nursery() as nursery:
        daemon = await start_daemon(nursery, tmp_path / "data")
        token = (daemon.data_dir / "token").read_text().strip()
        client = httpx.AsyncClient(
            base_url=daemon.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        try:
            # Read before the watch resets the peak: this bound counts from the peak of
            # the daemon's start, as it always has (the table's figure counts from what
            # was resident when the uploads began, a few MiB lower).
            before = peak_memory(daemon.pid)
            # (The watch ends once the client is closed: its idle keep-alive connection
            # would hold a file in the daemon until the gateway's timer closes it.)
            async with watch_daemon(row, daemon.pid), client:
                # 1. Chunked, 300 MiB of it offered: refused at 64 MiB.
                with trio.fail_after(120):
                    stream = await connect(daemon)
                    async with stream:
                        sent = 0
                        block = chunk(b"\0" * MiB)
                        try:
                            await stream.send_all(request_head(daemon, token, length=None))
                            await stream.send_all(chunk(part_heads("chunked")))
                            while sent < 300 * MiB:
                                await stream.send_all(block)
                                sent += MiB
                        except trio.BrokenResourceError:
                            pass  # the server stopped reading: the refusal
                        status = await status_of_answer(stream)
                assert status in (413, None), status
                row.bad_inputs += 1
                row.answered += 1

                # 2. Four uploads of 60 MiB at once, each holding its slot mid-body.
                size = 60 * MiB
                with trio.fail_after(180):
                    streams = []
                    for n in range(4):
                        heads = part_heads(f"parallel-{n}")
                        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
                        stream = await connect(daemon)
                        streams.append(stream)
                        await stream.send_all(
                            request_head(daemon, token, length=len(heads) + size + len(tail))
                        )
                        await stream.send_all(heads + b"\0" * MiB)
                    # Each upload has its spool folder once the daemon is receiving it.
                    while len(leftovers(daemon)) < 4:
                        await trio.sleep(0.05)
                    fifth = await client.post(
                        "/api/modules",
                        files={"manifest": ("manifest.json", manifest("fifth")), "wasm": b"x"},
                    )
                    assert fifth.status_code == 429, fifth.text
                    assert fifth.json()["code"] == "too_many_requests"
                    assert "uploads are being received" in fifth.json()["message"]
                    row.bad_inputs += 1
                    row.answered += 1

                    async def finish(stream: trio.SocketStream) -> int | None:
                        async with stream:
                            block = b"\0" * MiB
                            for _ in range(size // MiB - 1):
                                await stream.send_all(block)
                            await stream.send_all(tail)
                            return await status_of_answer(stream)

                    statuses: list[int | None] = []

                    async def run(stream: trio.SocketStream) -> None:
                        statuses.append(await finish(stream))

                    async with trio.open_nursery() as uploads:
                        for stream in streams:
                            uploads.start_soon(run, stream)
                # Zeros are no component: each is refused once received, as a whole.
                assert statuses == [400] * 4, statuses
                row.bad_inputs += 4
                row.answered += 4

                growth = peak_memory(daemon.pid) - before
                assert growth < PEAK_GROWTH_BOUND, f"peak grew {growth / MiB:.0f} MiB"
                assert leftovers(daemon) == []
                assert (await client.get("/healthz")).status_code == 200
                listed = (await client.get("/api/modules")).json()
                assert listed["modules"] == []
                assert listed["installing"] == []
        finally:
            await stop_daemon(daemon)
