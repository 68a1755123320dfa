"""The floor servers: bare Quart-Trio on Hypercorn's trio worker, doing only the transport.

``python -m bench._floor`` serves, on 127.0.0.1 and a free port (printed as
``listening <url>``):

* ``/echo``: a WebSocket that sends every message straight back (the call floor);
* ``/fanout``: a WebSocket that receives broadcasts; ``POST /burst`` with
  ``{"count", "size"}`` encodes ``count`` event frames shaped like Vessel's (once each, for
  every client) and hands them to each client's sender task (the fan-out floor).

It uses the same Hypercorn settings as the gateway (vessel/gateway/_serve.py), so the
ratio shows what Vessel adds on top of its own web stack, not a different stack.
"""

from __future__ import annotations

import json
import math
import sys
import time

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
    try:
        trio.run(main)
    except KeyboardInterrupt:
        sys.exit(0)
