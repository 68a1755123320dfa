"""``python -m tests.actors._exits HOW [ARG]``: end in a chosen way, to compare how a
forked and a spawned child end (exit status, output, atexit callbacks).

``code N``: SystemExit(N); ``message TEXT``: SystemExit(TEXT); ``raise``: an uncaught
RuntimeError; ``interrupt``: an uncaught KeyboardInterrupt. It always registers an atexit
callback that prints ``atexit ran`` and leaves ``buffered`` unflushed in stdout.
"""

from __future__ import annotations

import atexit
import sys


def main() -> None:
    atexit.register(lambda: print("atexit ran", flush=True))
    # Not flushed here: the interpreter's exit must flush it.
    sys.stdout.write("buffered\n")
    how, *rest = sys.argv[1:]
    if how == "code":
        raise SystemExit(int(rest[0]))
    if how == "message":
        raise SystemExit(rest[0])
    if how == "raise":
        raise RuntimeError("boom")
    if how == "interrupt":
        raise KeyboardInterrupt
    raise SystemExit(f"unknown HOW {how!r}")


if __name__ == "__main__":
    main()
