"""An owner for the owner-death test: it opens a fork server, starts two children from
it as process actors, prints ``<server pid> <child pid> <child pid>``, then waits to be
SIGKILLed (so none of its cleanup ever runs)."""

from __future__ import annotations

import sys

import msgspec
import trio
from _support import child_env  # type: ignore[import-not-found]  # Run as a script.

from actors import ProcessSpec, open_forkserver, open_process_actor


async def on_request(method: str, body: msgspec.Raw) -> None:
    return None


async def main() -> None:
    argv = [sys.executable, "-m", "tests.actors._child_app"]
    async with open_forkserver(name="owned-zygote", env=child_env()) as forkserver:
        spec = ProcessSpec(name="owned", argv=argv, env=child_env())
        async with (
            open_process_actor(spec, on_request=on_request, forkserver=forkserver) as one,
            open_process_actor(spec, on_request=on_request, forkserver=forkserver) as two,
        ):
            # Answers prove both channels are up before we report.
            await one.request("pid", None, timeout=10)
            await two.request("pid", None, timeout=10)
            assert one.forked
            assert two.forked
            print(forkserver.pid, one.pid, two.pid, flush=True)
            await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main)
