"""A parent process for the parent-death test: it starts the child app as a process
actor, prints the child's pid, then waits to be SIGKILLed (so it never cleans up)."""

from __future__ import annotations

import sys

import msgspec
import trio
from _support import child_argv  # type: ignore[import-not-found]  # Run as a script.

from actors import ProcessSpec, open_process_actor


async def on_request(method: str, body: msgspec.Raw) -> None:
    return None


async def main() -> None:
    spec = ProcessSpec(name="grandchild", argv=child_argv("--name", "grandchild"))
    async with open_process_actor(spec, on_request=on_request) as actor:
        # Answering a request proves the grandchild's channel is up before we report.
        await actor.request("pid", None, timeout=10)
        print(actor.pid, flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    sys.exit(trio.run(main))
