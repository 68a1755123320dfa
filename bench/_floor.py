"""The floor servers: bare Quart-Trio on Hypercorn's trio worker, doing only the transport.

``python -m bench._floor`` serves, on 127.0.0.1 and a free port (printed as
``listening <url>``):

* ``/echo``: a WebSocket that sends every message straight back (the transport's share
  of the call floor);
* ``/guest`` (with ``--guest <module_dir>``): a WebSocket that hands every message to the
  guest's ``on-command("echo", message)``, called in-process on the loop's thread through
  Vessel's own GuestRuntime, and sends back what it answers. That is the call floor in
  one piece: the bare transport plus the same guest export called in-process, measured
  together, so the guest's share is paid under the same conditions as in the round trip
  it is compared with (a guest called once per round trip, after the CPU went idle, not
  thousands of times in a tight loop: see docs/performance.md);
* ``/fanout``: a WebSocket that receives broadcasts; ``POST /burst`` with
  ``{"count", "size"}`` encodes ``count`` event frames shaped like Vessel's (once each, for
  every client) and hands them to each client's sender task (the fan-out floor).

It uses the same Hypercorn settings as the gateway (vessel/gateway/_serve.py), so the
ratio shows what Vessel adds on top of its own web stack, not a different stack.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import request, websocket
from quart_trio import QuartTrio

app = QuartTrio(__name__)
_clients: set[trio.MemorySendChannel[str]] = set()


@app.websocket("/echo")
async def echo() -> None:
    while True:
        await websocket.send(await websocket.receive())


_guest: list[Any] = []  # the GuestRuntime, with --guest


@app.websocket("/guest")
async def guest() -> None:
    runtime = _guest[0]
    while True:
        message = await websocket.receive()
        text = message if isinstance(message, str) else message.decode()
        result = runtime.call("on-command", "echo", text)
        await websocket.send(result.payload)


def _load_guest(module_dir: Path) -> Any:
    from ._inproc import guest_runtime

    return guest_runtime(module_dir)


@app.websocket("/fanout")
async def fanout() -> None:
    # Accept at once: Quart would accept lazily on the first send, and a subscriber must
    # be connected before the burst it is waiting for.
    await websocket.accept()
    send, receive = trio.open_memory_channel[str](math.inf)
    _clients.add(send)
    try:
        async for frame in receive:
            await websocket.send(frame)
    finally:
        _clients.discard(send)


@app.post("/burst")
async def burst() -> dict[str, int]:
    body = await request.get_json()
    payload = json.dumps("x" * int(body["size"]))
    for _ in range(int(body["count"])):
        frame = (
            '{"type":"event","module":"bench-echo","name":"burst","version":1,'
            f'"timestamp":{int(time.time() * 1000)},"data":{payload}}}'
        )
        for client in list(_clients):
            client.send_nowait(frame)
    return {"clients": len(_clients)}


async def main() -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.websocket_max_message_size = 4 * 1024 * 1024
    config.accesslog = None
    config.include_server_header = False

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(app, config, shutdown_trigger=trio.sleep_forever, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        print(f"listening {binds[0]}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench._floor")
    parser.add_argument("--guest", type=Path, help="serve /guest with this module's guest")
    args = parser.parse_args()
    if args.guest is not None:
        _guest.append(_load_guest(args.guest))
    try:
        trio.run(main)
    except KeyboardInterrupt:
        sys.exit(0)
