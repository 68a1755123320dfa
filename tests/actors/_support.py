"""Helpers shared by the actors tests: helper-process commands and /proc inspection.

Also imported by ``_intermediate_parent.py``, which runs as a script from this folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import msgspec
import trio

from actors import BlockingChannel, Channel, NotifyHandler, ProcessSpec, RequestHandler

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CHILD_APP = HERE / "_child_app.py"
INTERMEDIATE_PARENT = HERE / "_intermediate_parent.py"


def child_env() -> dict[str, str]:
    """Environment for helper scripts: they import ``actors`` from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def child_argv(*args: str) -> list[str]:
    """Command line running the test child app (see ``_child_app.py``)."""
    return [sys.executable, str(CHILD_APP), *args]


def kid_spec(argv: list[str], /, **overrides: Any) -> ProcessSpec:
    """The spec of a test child named ``kid`` running ``argv``: quick heartbeats and short
    stop escalation; ``overrides`` replace any field."""
    options: dict[str, Any] = {
        "name": "kid",
        "argv": argv,
        "env": child_env(),
        "heartbeat_interval": 0.2,
        # Generous: a child slow to start on a loaded machine must not be killed early.
        "heartbeat_timeout": 5.0,
        "stop_timeout": 2.0,
        "term_timeout": 2.0,
    }
    options.update(overrides)
    return ProcessSpec(**options)


async def parent_handler(method: str, body: msgspec.Raw) -> Any:
    """Answers a child's request with what it asked (method and decoded body)."""
    return {"method": method, "body": msgspec.msgpack.decode(body)}


def decode(raw: msgspec.Raw) -> Any:
    return msgspec.msgpack.decode(raw)


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name (field 2) may contain spaces and parentheses.
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def is_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie has already exited)."""
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def children_of(parent: int) -> set[int]:
    """PIDs whose parent is ``parent``, zombies included, read from /proc."""
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.add(int(entry.name))
    return found


def lane_pipes(name: str) -> tuple[BlockingChannel, int, int]:
    """A lane over two real pipes of this process: the child's blocking end, and the
    fds of the parent's end (read, write) for :func:`parent_channel`."""
    up_read, up_write = os.pipe()
    down_read, down_write = os.pipe()
    return BlockingChannel(down_read, up_write, name=name), up_read, down_write


def parent_channel(
    read_fd: int,
    write_fd: int,
    *,
    on_request: RequestHandler = parent_handler,
    on_notify: NotifyHandler | None = None,
    name: str = "parent",
) -> Channel:
    """The parent's end of a lane from :func:`lane_pipes` (it owns the two fds now)."""
    return Channel(
        trio.lowlevel.FdStream(write_fd),
        trio.lowlevel.FdStream(read_fd),
        name=name,
        on_request=on_request,
        on_notify=on_notify,
    )
