"""A benchmark WebSocket client, run as its own process: ``python -m bench._client SPEC``.

SPEC is JSON: ``{"mode": ..., "url": ..., "token": ... | null, ...}``. The process prints
one JSON line with its result on stdout and exits. The same code drives Vessel and the
floor servers, so both sides of every ratio pay the same client costs.

Modes:

``"cpus": [...]`` (any mode) keeps the client on those CPUs.

* ``rtt``: ``n`` sequential round trips of ``frame`` (after ``warmup`` more), latencies.
  With ``"gate": true`` it prints ``warm`` after the warm-up and waits for a line on
  stdin before it measures (the isolation figure starts its neighbour then).
* ``stamped``: round trips of ``frame`` one after the other (after ``warmup`` more),
  from a ``go`` line on stdin to a ``stop`` line, each with the ``time.monotonic`` it
  started at and how long it took (``bench/timeline.py``). Prints ``warm`` when ready.
* ``pipelined``: ``n`` frames with ``window`` in flight at once; messages per second.
* ``load``: ordinary load, one call at a time at ``rate`` calls per second for
  ``seconds``, taking ``frames`` in turn (after ``warmup`` calls); prints ``warm`` and
  waits for a line on stdin before it starts. Reports the calls made, the seconds they
  took, their latencies, and the calls that failed (their count and the first answer).
* ``fanout``: ``connections`` sockets, each subscribed; prints ``ready`` once all are, then
  counts ``expect`` messages per socket; reports when the last one arrived
  (``time.monotonic``, which all processes of the machine share).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from ._stats import latency_summary

MAX_MESSAGE = 8 * 1024 * 1024


def _headers(spec: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    token = spec.get("token")
    return [(b"authorization", f"Bearer {token}".encode())] if token else []


async def _handshake(ws: WebSocketConnection, spec: dict[str, Any]) -> None:
    """Vessel greets with ``ready``; a floor server says nothing."""
    if spec.get("token"):
        ready = json.loads(await ws.get_message())
        if ready.get("type") != "ready":
            raise RuntimeError(f"expected ready, got {ready}")


def _call_frame(spec: dict[str, Any], request_id: str) -> str:
    frame = dict(spec["frame"])
    if "request_id" in frame:
        frame["request_id"] = request_id
    return json.dumps(frame)


async def _rtt(ws: WebSocketConnection, spec: dict[str, Any]) -> dict[str, Any]:
    samples: list[float] = []
    for i in range(spec["warmup"] + spec["n"]):
        if i == spec["warmup"] and spec.get("gate"):
            print("warm", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
        frame = _call_frame(spec, str(i))
        start = time.perf_counter()
        await ws.send_message(frame)
        reply = await ws.get_message()
        elapsed = time.perf_counter() - start
        if i == 0:
            _check_reply(reply)
        if i >= spec["warmup"]:
            samples.append(elapsed)
    return latency_summary(samples)


async def _stamped(ws: WebSocketConnection, spec: dict[str, Any]) -> dict[str, Any]:
    for i in range(spec["warmup"]):
        await ws.send_message(_call_frame(spec, str(i)))
        reply = await ws.get_message()
        if i == 0:
            _check_reply(reply)
    print("warm", flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)  # go
    stop = trio.Event()
    calls: list[tuple[float, float]] = []

    async def stop_on_line() -> None:
        await trio.to_thread.run_sync(sys.stdin.readline)  # stop (or EOF)
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_line)
        i = spec["warmup"]
        while not stop.is_set():
            frame = _call_frame(spec, str(i))
            i += 1
            at, start = time.monotonic(), time.perf_counter()
            await ws.send_message(frame)
            await ws.get_message()
            calls.append((at, time.perf_counter() - start))
    return {"calls": calls}


def _check_reply(reply: str | bytes) -> None:
    doc = json.loads(reply)
    if doc.get("type") == "response" and not doc.get("success"):
        raise RuntimeError(f"call failed: {doc}")


async def _load(ws: WebSocketConnection, spec: dict[str, Any]) -> dict[str, Any]:
    frames = spec["frames"]

    async def call(i: int) -> str | bytes:
        await ws.send_message(json.dumps({**frames[i % len(frames)], "request_id": str(i)}))
        return await ws.get_message()

    for i in range(spec["warmup"]):
        _check_reply(await call(i))
    print("warm", flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)  # go
    interval = 1 / spec["rate"]
    samples: list[float] = []
    errors = 0
    first_error: str | None = None
    start = trio.current_time()
    end = start + spec["seconds"]
    next_at = start
    i = spec["warmup"]
    while next_at < end:
        # Paced, not caught up: a slow answer delays the calls after it, never bunches them.
        await trio.sleep_until(next_at)
        began = time.perf_counter()
        reply = await call(i)
        samples.append(time.perf_counter() - began)
        if not json.loads(reply).get("success"):
            errors += 1
            first_error = first_error or str(reply)
        i += 1
        next_at = max(next_at + interval, trio.current_time())
    return {
        **latency_summary(samples),
        "calls": len(samples),
        "seconds": trio.current_time() - start,
        "errors": errors,
        "first_error": first_error,
    }


async def _pipelined(ws: WebSocketConnection, spec: dict[str, Any]) -> dict[str, Any]:
    n, window = spec["n"], spec["window"]
    frames = [_call_frame(spec, str(i)) for i in range(n)]
    slots = trio.Semaphore(window)
    done = trio.Event()
    received = 0

    async def reader() -> None:
        nonlocal received
        while received < n:
            reply = await ws.get_message()
            if received == 0:
                _check_reply(reply)
            received += 1
            slots.release()
        done.set()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for frame in frames:
            await slots.acquire()
            await ws.send_message(frame)
        await done.wait()
    elapsed = time.perf_counter() - start
    return {"msgs_per_s": n / elapsed, "n": n, "window": window}


async def _fanout(spec: dict[str, Any]) -> dict[str, Any]:
    expect = spec["expect"]
    last: list[float] = []
    ready = 0
    all_ready = trio.Event()

    async def one(index: int) -> None:
        nonlocal ready
        async with open_websocket_url(
            spec["url"], extra_headers=_headers(spec), max_message_size=MAX_MESSAGE
        ) as ws:
            await _handshake(ws, spec)
            if spec.get("subscribe") is not None:
                await ws.send_message(json.dumps(spec["subscribe"]))
                while json.loads(await ws.get_message()).get("type") != "response":
                    pass
            ready += 1
            if ready == spec["connections"]:
                all_ready.set()
            count = 0
            while count < expect:
                message = await ws.get_message()
                if '"response"' in message[:40]:
                    continue
                count += 1
            last.append(time.monotonic())

    async with trio.open_nursery() as nursery:
        for index in range(spec["connections"]):
            nursery.start_soon(one, index)
        await all_ready.wait()
        print("ready", flush=True)
    return {"last": max(last), "connections": spec["connections"], "expect": expect}


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["mode"] == "fanout":
        return await _fanout(spec)
    async with open_websocket_url(
        spec["url"], extra_headers=_headers(spec), max_message_size=MAX_MESSAGE
    ) as ws:
        await _handshake(ws, spec)
        if spec["mode"] == "rtt":
            return await _rtt(ws, spec)
        if spec["mode"] == "pipelined":
            return await _pipelined(ws, spec)
        if spec["mode"] == "stamped":
            return await _stamped(ws, spec)
        if spec["mode"] == "load":
            return await _load(ws, spec)
    raise ValueError(f"unknown mode {spec['mode']!r}")


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    if spec.get("cpus"):
        # Before trio starts any thread: each inherits the main thread's CPUs.
        os.sched_setaffinity(0, spec["cpus"])
    result = trio.run(main, spec)
    print(json.dumps(result), flush=True)
