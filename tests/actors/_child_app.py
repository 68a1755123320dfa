"""A child process for the actors tests, started by ``open_process_actor``.

It serves a few requests that make it misbehave on cue (see ``on_request``). Flags:
``--ignore-stop`` never honours the stop notification; ``--ignore-sigterm`` ignores
SIGTERM; ``--name NAME`` names its channel.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import msgspec
import trio

from actors import CHANNEL_FDS_ENV, ParentLink, open_parent_channel


async def main(args: argparse.Namespace) -> None:
    links: list[ParentLink] = []
    channel_write_fd = int(os.environ[CHANNEL_FDS_ENV].split(",")[1])

    async def on_request(method: str, body: msgspec.Raw) -> Any:
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
            case "close_channel":
                # Hang up on the parent but keep the process alive.
                await links[0].channel.aclose()
                return None
            case "call_parent":
                reply = await links[0].channel.request("hello", value)
                return msgspec.msgpack.decode(reply)
            case _:
                raise LookupError(f"no such method: {method}")

    async with open_parent_channel(name=args.name, on_request=on_request) as link:
        links.append(link)
        if args.ignore_stop:
            await trio.sleep_forever()
        await link.stop_requested.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="test-child")
    parser.add_argument("--ignore-stop", action="store_true")
    parser.add_argument("--ignore-sigterm", action="store_true")
    arguments = parser.parse_args()
    if arguments.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    trio.run(main, arguments)
