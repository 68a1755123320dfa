"""Entry point of a module process: ``python -m vessel.host --module <id>``.

Started only by the daemon (it passes the channel's pipe fds in ACTORS_CHANNEL_FDS); the
``--module`` argument is there so ``ps`` shows which module a process serves.
"""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from ._process import serve_module_process


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m vessel.host")
    parser.add_argument("--module", default="?", help="module id (informational)")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(levelname)s [{args.module}] %(name)s: %(message)s",
    )
    trio.run(serve_module_process)


if __name__ == "__main__":
    main()
