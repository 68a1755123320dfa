"""The messages between the daemon and a module process (bodies of ``actors`` requests).

The daemon drives the guest (``guest.*``); the module process asks the daemon for what
only the daemon may do (``bus.*``, ``module.call``, ``storage.*``) and streams its log.
Everything crossing into the daemon is re-checked there: the child is not trusted.

Schema evolution: new fields get defaults; an existing field never changes type.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec

from ._manifest import Manifest

# daemon -> module process (requests)
GUEST_START = "guest.start"
#: On the lane (the module process's second channel, read by the guest's own thread).
GUEST_COMMAND = "guest.command"
GUEST_STATS = "guest.stats"
#: The module process's egress audit: a list of ``vessel.host._egress.EgressEntry``.
GUEST_EGRESS = "guest.egress"
# daemon -> module process (notifications)
GUEST_EVENT = "guest.event"
# module process -> daemon (requests; the guest's host calls come over the lane)
BUS_SUBSCRIBE = "bus.subscribe"
BUS_RESET = "bus.reset"
MODULE_CALL = "module.call"
STORAGE_GET = "storage.get"
STORAGE_SET = "storage.set"
STORAGE_DELETE = "storage.delete"
#: The current value of a setting named by a ``{settings.key}`` hosts entry (StorageKey).
SETTING_GET = "setting.get"
#: Answered with nothing, on the lane: when the answer is back, the daemon has read every
#: frame the guest thread sent before it (its last log lines, before the process exits).
LANE_SYNC = "lane.sync"
# module process -> daemon (notifications)
#: An event, already checked by the module process (vessel/_emit_rules.py): one-way, so
#: emitting costs no round trip; the order of one module's events is the pipe's order.
BUS_EMIT = "bus.emit"
#: An emit the module process refused (its guest got the reason): counted by the daemon.
BUS_REFUSED = "bus.refused"
LOG = "log"
#: Log lines the module process dropped (over vessel/_log_rules.py's rate): their count,
#: after the invocation that logged them, or once a second while one logs on.
LOG_DROPPED = "log.dropped"
INSTANCE_REPLACED = "instance.replaced"
#: Whether the module process has guest work confined to the box CPU now (the daemon
#: keeps its other threads off that CPU meanwhile: vessel/_cpu_box.py).
GUEST_BOX = "guest.box"


class StartParams(msgspec.Struct, forbid_unknown_fields=True):
    """Everything the module process needs to load its component and run on-load."""

    module_dir: str
    source_hash: str
    manifest: Manifest
    #: Start up on the box CPU (vessel/host/_confine.py): a restart after a crash.
    boxed: bool = False
    #: The module misbehaved lately (vessel/_cpu_box.py): its long work is reported as a
    #: runaway as soon as it is confined, not a quarter of its deadline in.
    suspect: bool = False
    #: Its compiled code could not be stored (a full disk): compile it in memory.
    compile_in_process: bool = False
    #: Certificates the admin trusts for https:// and wss:// beside the usual CAs, PEM
    #: (``vessel serve --ca-file``; vessel/_tls.py).
    trusted_ca: str = ""


class StartResult(msgspec.Struct):
    pid: int
    load_seconds: float


class CommandRequest(msgspec.Struct, forbid_unknown_fields=True):
    action: str
    params: str
    #: Module ids this call passed through (for cycle detection), outermost first.
    chain: list[str] = []
    #: ``time.monotonic()`` at which the daemon stops waiting for the answer. Module
    #: processes run on the daemon's host, where CLOCK_MONOTONIC is one clock for every
    #: process, so the module can skip a command nobody waits for any more.
    deadline: float | None = None


class CommandResult(msgspec.Struct):
    ok: bool
    value: str
    #: Set when the guest trapped or missed its deadline (the instance was replaced).
    trapped: bool = False
    #: Set when the module process did not start the command before its deadline.
    timed_out: bool = False


class GuestStats(msgspec.Struct):
    pid: int
    memory_rss_anon: int
    invocations: int
    traps: int
    instance_replacements: int
    timers: int
    websockets: int
    queued: int
    dropped_events: int
    #: USS: Private_Clean + Private_Dirty, what this process alone holds (RssAnon also
    #: counts pages a forked module process shares with the fork server).
    memory_private: int = 0
    #: Invocations that ran long enough to be confined to one CPU (vessel.host._confine).
    confined_invocations: int = 0
    #: Times long guest work gave way to other tasks at a slice's end (vessel.host._slicing).
    guest_yields: int = 0


class Subscribe(msgspec.Struct, forbid_unknown_fields=True):
    pattern: str


class Refused(msgspec.Struct, forbid_unknown_fields=True):
    #: Why the last of them was refused.
    reason: str
    #: Emits refused during one invocation, reported together (a flooding guest must
    #: not cost the daemon a message per refused event).
    count: Annotated[int, msgspec.Meta(ge=1)] = 1


class Emit(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    data: str
    version: int = 1
    retained: bool = False


class Call(msgspec.Struct, forbid_unknown_fields=True):
    module: str
    name: str
    version: int
    params: str
    chain: list[str] = []


class StorageKey(msgspec.Struct, forbid_unknown_fields=True):
    key: str


class StorageSet(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    value: str


class Log(msgspec.Struct, forbid_unknown_fields=True):
    level: str
    message: str
    #: "host" for the log host function, "stdout"/"stderr" for captured guest output.
    source: str = "host"


class LogDropped(msgspec.Struct, forbid_unknown_fields=True):
    count: Annotated[int, msgspec.Meta(ge=1)]


class InstanceReplaced(msgspec.Struct, forbid_unknown_fields=True):
    reason: str


class Boxed(msgspec.Struct, forbid_unknown_fields=True):
    occupied: bool
    #: Why (``vessel.host._confine.BoxReason``): "runaway", "flood" or "restart".
    why: str = "runaway"


T = TypeVar("T")


def decode(raw: msgspec.Raw | bytes, type: type[T]) -> T:
    """Decode a request body into its Struct (the layer below keeps bodies raw)."""
    try:
        return msgspec.msgpack.decode(raw, type=type)
    except RecursionError:  # only a subverted module process nests a request this deep
        raise msgspec.DecodeError("the request is nested too deeply") from None
