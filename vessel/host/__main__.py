"""Entry point of a module process: ``python -m vessel.host --module <id>``.

Started only by the daemon, which passes the channel's pipe fds in ACTORS_CHANNEL_FDS.
Normally the process is not a fresh interpreter: the daemon's fork server
(``actors.open_forkserver``, preloading ``vessel._wasm_module.HOST_PRELOAD``) forks and
runs this module with ``runpy`` as ``__main__``, so the imports below are already done
and must stay import-only (no thread, no wasmtime Engine at import time: the server
refuses to fork after an import that starts a thread). With ``vessel serve
--no-forkserver`` it is an ordinary ``python -m`` start; this code cannot tell the
difference and must not need to. The ``--module`` argument is there so ``ps`` shows which
module a process serves (the fork server also names the process ``vessel:<id>``).
"""

from __future__ import annotations

import argparse
import logging
import os
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
    # The daemon asked us to stop and everything is done: leave without interpreter
    # finalization. wasmtime keeps native threads (its tokio runtime) that may still call
    # into Python (e.g. while a trapped instance's WASI streams are dropped); a thread that
    # takes the GIL during finalization is ended with pthread_exit, whose forced unwind
    # through Rust frames aborts the process (SIGABRT, "panic in a function that cannot
    # unwind"). Found by tests/adversarial (loop in on-unload). Nothing here needs
    # finalizing: the daemon owns all state, and the channel was flushed by shutdown().
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
