"""A child process for the actors tests, started by ``open_process_actor``.

It serves a few requests that make it misbehave on cue (see ``on_request``), and
``introspect``, which describes how the process was started. Each lane it was given
(``ProcessSpec.lanes``) is served by a thread of its own (see ``serve_lane``).
Flags: ``--ignore-stop`` never honours the stop notification; ``--ignore-sigterm``
ignores SIGTERM; ``--name NAME`` names its channel. Runs as a script or, from a fork
server, as ``-m tests.actors._child_app``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import msgspec
import trio

from actors import (
    CHANNEL_FDS_ENV,
    BlockingChannel,
    ChannelBroken,
    Notify,
    ParentLink,
    RemoteError,
    open_parent_channel,
)
from actors._wire import encode_message


def serve_lane(lane: BlockingChannel) -> None:
    """One thread, blocking calls: the way a lane is meant to be served.

    ``echo`` answers its body; ``whoami`` the lane's name and thread; ``call_parent``
    asks the parent (over this lane) and answers what it said; ``notify_parent`` sends
    the body back as notifications ``note`` (a list: one each) and answers how many;
    ``raise`` answers an error; ``hold`` answers nothing until the next request, whose
    answer goes first (the parent sees replies out of order); a notification ``say`` is
    answered with a notification ``heard``.
    """
    held: list[int] = []
    try:
        while True:
            message = lane.receive()
            if isinstance(message, Notify):
                if message.method == "say":
                    lane.notify("heard", msgspec.msgpack.decode(message.body))
                continue
            assert message is not None
            value = msgspec.msgpack.decode(message.body)
            match message.method:
                case "echo":
                    lane.reply(message.id, value)
                case "whoami":
                    lane.reply(message.id, [lane.name, threading.current_thread().name])
                case "call_parent":
                    try:
                        answer = msgspec.msgpack.decode(lane.request("hello", value, timeout=5))
                    except RemoteError as exc:
                        answer = f"error: {exc.message}"
                    lane.reply(message.id, answer)
                case "notify_parent":
                    for item in value:
                        lane.notify("note", item)
                    lane.reply(message.id, len(value))
                case "raise":
                    lane.reply_error(message.id, ValueError(value))
                case "hold":
                    held.append(message.id)
                case _:
                    lane.reply_error(message.id, LookupError(f"no such method: {message.method}"))
            if message.method != "hold":
                for request_id in held:
                    lane.reply(request_id, "released")
                held.clear()
    except ChannelBroken:
        return  # the parent is gone or we are leaving


async def main(args: argparse.Namespace) -> None:
    links: list[ParentLink] = []
    linked = trio.Event()
    channel_write_fd = int(os.environ[CHANNEL_FDS_ENV].split(",")[1])

    async def on_request(method: str, body: msgspec.Raw) -> Any:
        # The channel serves requests as soon as it runs, which may be before the body
        # of `async with open_parent_channel` below has recorded the link.
        await linked.wait()
        value = msgspec.msgpack.decode(body)
        match method:
            case "echo":
                return value
            case "pid":
                return os.getpid()
            case "sleep":
                await trio.sleep(value)
                return "slept"
            case "raise":
                raise ValueError(value)
            case "exit":
                os._exit(value)
            case "block":
                # Blocks the whole trio loop on purpose, with no timer: models a guest
                # stuck on the loop's thread, which only the parent's heartbeat can
                # detect. Only a signal (the parent's SIGKILL) ends it.
                signal.pause()
                return "unblocked"
            case "print":
                for stream_name, text in value:
                    stream = sys.stdout if stream_name == "stdout" else sys.stderr
                    stream.write(text)
                    stream.flush()
                return None
            case "garbage":
                os.write(channel_write_fd, b"\x00\x00\x00\x01\xc1")
                return None
            case "notify_and_exit":
                # `value` notifications written straight to the pipe, then gone at once:
                # the parent may well notice the exit before it has read them.
                frames = b"".join(
                    encode_message(Notify("last", msgspec.Raw(msgspec.msgpack.encode(i))))
                    for i in range(value)
                )
                view = memoryview(frames)
                os.set_blocking(channel_write_fd, True)
                while view:
                    view = view[os.write(channel_write_fd, view) :]
                os._exit(0)
            case "close_channel":
                # Hang up on the parent but keep the process alive.
                await links[0].channel.aclose()
                return None
            case "call_parent":
                reply = await links[0].channel.request("hello", value)
                return msgspec.msgpack.decode(reply)
            case "introspect":
                return introspect()
            case _:
                raise LookupError(f"no such method: {method}")

    async with open_parent_channel(name=args.name, on_request=on_request) as link:
        links.append(link)
        linked.set()
        for lane in link.lanes:
            threading.Thread(target=serve_lane, args=(lane,), name=lane.name, daemon=True).start()
        if args.ignore_stop:
            await trio.sleep_forever()
        await link.stop_requested.wait()


def _fd_kind(fd: str) -> str:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "gone"  # the directory listing's own fd
    # "pipe:[123]" -> "pipe": what the fd is, not which one.
    return target.split(":[", 1)[0]


def _describe_handler(handler: Any) -> str:
    # A handler's repr has its address, which differs between processes.
    return str(getattr(handler, "__qualname__", handler))


def introspect() -> dict[str, Any]:
    """How this process was started, as seen from inside."""
    preloaded = sys.modules.get("tests.actors._preloaded")
    main = sys.modules["__main__"]
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "sid": os.getsid(0),
        "argv": sys.argv,
        "orig_argv": sys.orig_argv,
        "main_file": getattr(main, "__file__", None),
        "cwd": os.getcwd(),
        "path0": sys.path[0],
        "env": dict(os.environ),
        "comm": Path("/proc/self/comm").read_text().strip(),
        "cmdline": Path("/proc/self/cmdline").read_bytes().rstrip(b"\0").split(b"\0"),
        "signals": {
            name: _describe_handler(signal.getsignal(getattr(signal, name)))
            for name in ("SIGINT", "SIGTERM", "SIGCHLD", "SIGPIPE", "SIGXFSZ")
        },
        "stdin": os.readlink("/proc/self/fd/0"),
        "fds": sorted(_fd_kind(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2),
        "preloaded_in": None if preloaded is None else preloaded.IMPORTED_IN,
        "threads": len(os.listdir("/proc/self/task")),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="test-child")
    parser.add_argument("--ignore-stop", action="store_true")
    parser.add_argument("--ignore-sigterm", action="store_true")
    arguments = parser.parse_args()
    if arguments.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    trio.run(main, arguments)
