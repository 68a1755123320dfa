"""``python -m vessel.host._compile MODULE_DIR --source-hash H --module-id ID``: compile
one module's component into its artifact, then exit.

Compiling is one-off heavy work: a componentize-py guest (~18 MiB) takes Cranelift about
15 s of CPU here, and the process that did it keeps ~300 MiB of heap afterwards, for
good. So no long-lived process compiles: the daemon runs this, a short-lived process,
and only ever loads what it wrote (``vessel._compiler``). It runs at a lower priority
than the daemon and the running modules (``nice`` 5 and ``SCHED_BATCH``: the kernel
treats it as a CPU hog and prefers the interactive work), writes the artifact and its
record atomically (``_engine.precompile``), and ends when its parent does.

Exit status 0: compiled. ``EXIT_REFUSED``: the component cannot be used (not a
component, not our world, tampered with; out of memory), with the reason as the last
line on stderr. ``EXIT_NOT_STORED``: compiled, but the artifact could not be written (a
full disk). Anything else is a failure of this machine (a signal, a crash).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from .._errors import VesselError
from ._engine import make_engine, precompile

#: The component was refused: the last line on stderr says why.
EXIT_REFUSED = 2
#: It compiled, but its compiled code could not be written (a full disk): the last line
#: on stderr says why.
EXIT_NOT_STORED = 3
#: Our parent (the daemon) went away: nobody wants the result any more.
EXIT_PARENT_LOST = 70
#: How much nicer than the daemon a compile runs: about a third of the CPU share of a
#: process at the daemon's priority. (At 10, a tenth: beside busy loops on both CPUs a
#: Python guest's compile took 100 s here, and an install as long.)
NICENESS = 5


def _exit_when_stdin_closes() -> None:
    """End this process when standard input reaches its end: the parent holds the other
    end of the pipe and never writes, so that is the parent gone (or no longer wanting
    the result). Not ``PR_SET_PDEATHSIG``: that fires when the parent's *thread* that
    started us ends, and trio starts processes from worker threads that end when idle."""

    def watch() -> None:
        while os.read(0, 4096):
            pass
        os._exit(EXIT_PARENT_LOST)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _lower_priority() -> None:
    """Best effort: a container may refuse a policy change, and compiling goes on."""
    try:
        os.nice(NICENESS)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vessel.host._compile")
    parser.add_argument("module_dir", type=Path)
    parser.add_argument("--source-hash", required=True)
    parser.add_argument("--module-id", required=True)
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when standard input is closed"
    )
    args = parser.parse_args(argv)
    if args.watch_stdin:
        _exit_when_stdin_closes()
    _lower_priority()
    try:
        precompile(
            make_engine(), args.module_dir, source_hash=args.source_hash, module_id=args.module_id
        )
    except VesselError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_REFUSED
    except MemoryError:
        print(f"module {args.module_id!r}: compiling ran out of memory", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(
            f"module {args.module_id!r}: cannot write its compiled code under "
            f"{args.module_dir}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_NOT_STORED
    return 0


if __name__ == "__main__":
    sys.exit(main())
