"""A child OS process as an actor: spawn, channel, heartbeat, output, stop escalation."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import trio

from ._channel import Channel, NotifyHandler, RequestHandler
from ._errors import ActorError, ProtocolError, SpawnError
from ._forkserver import ForkedProcess, ForkServer, ForkServerUnavailable
from ._heartbeat import wait_heartbeat_lost
from ._lines import LineSplitter
from ._util import collapse_single_exception

__all__ = [
    "CHANNEL_FDS_ENV",
    "LANE_FDS_ENV",
    "MAX_OUTPUT_LINE",
    "STOP_METHOD",
    "ChildProcess",
    "ExitInfo",
    "ProcessActor",
    "ProcessSpec",
    "open_process_actor",
]

logger = logging.getLogger("actors")

STOP_METHOD = "actors.stop"
"""The notification asking a child to finish its work and exit on its own."""

CHANNEL_FDS_ENV = "ACTORS_CHANNEL_FDS"
"""Environment variable telling the child its channel's ``"<read_fd>,<write_fd>"``."""

LANE_FDS_ENV = "ACTORS_LANE_FDS"
"""Environment variable telling the child its lanes' fds: ``"<read>,<write>;<read>,<write>"``."""

MAX_OUTPUT_LINE = 64 * 1024
"""Lines of child output longer than this many bytes are truncated."""

#: Most lanes one child can have (each is two fds passed to it).
MAX_LANES = 4
#: Seconds the channels of a child that has exited go on reading what it wrote before
#: (its last notifications), in case a grandchild holds the pipe open.
_EXIT_DRAIN = 1.0

# After SIGKILL only an uninterruptible sleep (a hung NFS read) delays the exit; do not
# let that hang our own shutdown forever.
_KILL_TIMEOUT = 5.0
# Output still in the pipes when the child exits is worth a moment to read.
_OUTPUT_GRACE = 0.5


@dataclass(frozen=True)
class ProcessSpec:
    """How to start and stop one child process.

    ``heartbeat_interval``/``heartbeat_timeout``: the child is pinged every interval and
    killed ("heartbeat timeout") when a ping goes unanswered that long. Pings start at
    once, so a child should open its parent channel before any slow initialisation.
    ``stop_timeout``: how long a child gets to exit after the stop notification before
    SIGTERM; ``term_timeout``: how long after SIGTERM before SIGKILL.
    ``on_output(stream, line)`` receives each line the child writes to its stdout or
    stderr (``stream`` is ``"stdout"`` or ``"stderr"``); by default lines are logged.
    ``title``: the child's name in ``ps``/``top`` when a fork server starts it (15 bytes
    are kept); defaults to ``name``.
    ``lanes``: how many extra channels ("lanes", see ``actors._lane``) to open beside the
    main one, each its own pair of pipes; :attr:`ProcessActor.lanes` on this side,
    :attr:`ParentLink.lanes` (blocking, for one thread each) in the child. Requests and
    notifications on a lane go to the same handlers as the main channel's.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    title: str | None = None
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    stop_timeout: float = 3.0
    term_timeout: float = 2.0
    on_output: Callable[[str, str], None] | None = None
    lanes: int = 0

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError(f"ProcessSpec {self.name!r}: argv must not be empty")
        if not 0 <= self.lanes <= MAX_LANES:
            raise ValueError(f"ProcessSpec {self.name!r}: lanes must be 0..{MAX_LANES}")
        for field in ("heartbeat_interval", "heartbeat_timeout", "stop_timeout", "term_timeout"):
            if not getattr(self, field) > 0:
                raise ValueError(f"ProcessSpec {self.name!r}: {field} must be > 0")


@dataclass(frozen=True)
class ExitInfo:
    """How a child process ended.

    Exactly one of ``returncode`` (it exited) and ``signal`` (a signal killed it) is set.
    ``reason`` is ours when we ended it ("stopped", "heartbeat timeout", the reason given
    to :meth:`ProcessActor.kill`), else a description ("exited with code 3",
    "killed by SIGSEGV").
    """

    returncode: int | None
    signal: int | None
    reason: str


def _describe_exit(status: int) -> tuple[int | None, int | None, str]:
    if status >= 0:
        return status, None, f"exited with code {status}"
    try:
        signal_name = signal.Signals(-status).name
    except ValueError:
        signal_name = f"signal {-status}"
    return None, -status, f"killed by {signal_name}"


class ChildProcess(Protocol):
    """What a process actor needs of its child: the part of ``trio.Process`` that
    :class:`actors.ForkedProcess` (a child of the fork server) also has."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def stdout(self) -> trio.abc.ReceiveStream | None: ...

    @property
    def stderr(self) -> trio.abc.ReceiveStream | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: signal.Signals | int) -> None: ...


class ProcessActor:
    """A running child process and the channel to it. Made by :func:`open_process_actor`."""

    def __init__(
        self,
        spec: ProcessSpec,
        process: ChildProcess,
        channel: Channel,
        lanes: tuple[Channel, ...] = (),
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.pid: int = process.pid
        #: Started by a fork server (not a plain spawn).
        self.forked = isinstance(process, ForkedProcess)
        self.channel = channel
        #: The extra channels of ``spec.lanes``, in order; served and closed like
        #: ``channel``, but never pinged (the main channel's heartbeat speaks for the child).
        self.lanes = lanes
        self.exit_info: ExitInfo | None = None
        self._process = process
        self._exited = trio.Event()
        self._reason: str | None = None
        self._stopping = False
        self._stop_done = trio.Event()
        self._output_streams_open = 0
        self._output_done = trio.Event()
        self._background_scope = trio.CancelScope(shield=True)

    def __repr__(self) -> str:
        if self.exit_info is not None:
            state = f"exited: {self.exit_info.reason}"
        elif self._stopping:
            state = "stopping"
        else:
            state = "running"
        return f"<ProcessActor {self.name!r} pid={self.pid} {state}>"

    async def request(
        self,
        method: str,
        body: Any,
        *,
        timeout: float | None = None,
    ) -> msgspec.Raw:
        """Call ``method`` in the child; see :meth:`Channel.request`."""
        return await self.channel.request(method, body, timeout=timeout)

    async def notify(self, method: str, body: Any) -> None:
        """Send a one-way message to the child; see :meth:`Channel.notify`."""
        await self.channel.notify(method, body)

    async def wait(self) -> ExitInfo:
        """Wait until the child has exited and been reaped; return how it ended."""
        await self._exited.wait()
        assert self.exit_info is not None
        return self.exit_info

    def kill(self, reason: str) -> None:
        """SIGKILL the child now; ``reason`` becomes its exit reason. No-op once exited."""
        if self.exit_info is not None:
            return
        if self._reason is None:
            self._reason = reason
        self._signal(signal.SIGKILL)

    async def stop(self, reason: str = "stopped") -> ExitInfo:
        """Stop the child, escalating until it is gone; return how it ended.

        Sends the ``actors.stop`` notification and waits ``stop_timeout``, then SIGTERM
        and waits ``term_timeout``, then SIGKILL (with a warning). Shielded from
        cancellation and bounded by those timeouts; idempotent and safe to call from
        several tasks. If the child had already exited, returns that exit unchanged.
        """
        with trio.CancelScope(shield=True):
            if self.exit_info is not None:
                return self.exit_info
            if self._reason is None:
                self._reason = reason
            if self._stopping:
                await self._stop_done.wait()
                return self._stop_result()
            self._stopping = True
            try:
                await self._escalate()
            finally:
                self._stop_done.set()
            return self._stop_result()
        raise AssertionError("unreachable: the scope above is shielded and never cancelled")

    # ------------------------------------------------------------------ internals

    def _stop_result(self) -> ExitInfo:
        if self.exit_info is not None:
            return self.exit_info
        return ExitInfo(None, None, f"{self._reason}; still running after SIGKILL")

    async def _escalate(self) -> None:
        """Ask, then SIGTERM, then SIGKILL, each step bounded; the caller shields."""
        with trio.move_on_after(self.spec.stop_timeout):
            # If the channel is gone, so is the child, or soon: wait for it anyway.
            with contextlib.suppress(ActorError):
                await self.channel.notify(STOP_METHOD, None)
            await self._reap()
        if self.exit_info is None:
            self._signal(signal.SIGTERM)
            with trio.move_on_after(self.spec.term_timeout):
                await self._reap()
        if self.exit_info is None:
            logger.warning(
                "%r ignored the stop request and SIGTERM for %.1fs; sending SIGKILL",
                self,
                self.spec.stop_timeout + self.spec.term_timeout,
            )
            self._signal(signal.SIGKILL)
            with trio.move_on_after(_KILL_TIMEOUT):
                await self._reap()
        if self.exit_info is None:
            logger.error("%r is still running %.1fs after SIGKILL", self, _KILL_TIMEOUT)

    def _signal(self, signum: signal.Signals) -> None:
        if self._process.returncode is None:
            # It may exit between the check and the signal; the reaper records that.
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signum)

    async def _reap(self) -> None:
        status = await self._process.wait()
        if self.exit_info is None:
            returncode, signum, description = _describe_exit(status)
            if self._reason is None and self.channel.protocol_error is not None:
                # We hung up on a child that broke the protocol; its exit, by our kill
                # or by its own reaction to the hang-up, is down to that.
                self._reason = f"protocol error: {self.channel.protocol_error}"
            self.exit_info = ExitInfo(returncode, signum, self._reason or description)
            log = logger.info if self._reason is not None else logger.warning
            log("%r (%s)", self, description)
            # Fail in-flight requests now, even if a grandchild keeps the pipe open; what
            # the child wrote before it ended is still read and its notifications handled.
            for channel in (self.channel, *self.lanes):
                channel.abort(f"{self.name}: process {self.exit_info.reason}", drain=_EXIT_DRAIN)
            self._exited.set()

    async def _serve_background(self, *, task_status: trio.TaskStatus[None]) -> None:
        # Shielded: when the caller is cancelled these tasks must keep running while
        # stop() talks to the child; the context manager cancels them afterwards.
        with self._background_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reap)
                for kind, stream in (
                    ("stdout", self._process.stdout),
                    ("stderr", self._process.stderr),
                ):
                    assert stream is not None
                    self._output_streams_open += 1
                    nursery.start_soon(self._pump_output, kind, stream)
                await nursery.start(self._serve_channel)
                for lane in self.lanes:
                    await nursery.start(self._serve_lane, lane)
                nursery.start_soon(self._watch_heartbeat)
                task_status.started()

    async def _shutdown_background(self) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_OUTPUT_GRACE):
                await self._output_done.wait()
            # The channels hand on what the child sent before it ended (abort's drain,
            # then the notifications queued): bounded by the channels themselves.
            for channel in (self.channel, *self.lanes):
                await channel.finished()
            self._background_scope.cancel()

    async def _serve_channel(self, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            await self.channel.run(task_status=task_status)
        except ProtocolError as exc:
            logger.error("%r sent an undecodable frame, killing it: %s", self, exc)
            self.kill(f"protocol error: {exc}")
            return
        if self.exit_info is None and not self._stopping:
            # The child closed its end but lives on; it cannot be reached any more, so
            # give it the stop grace period to finish exiting, then make sure.
            with trio.move_on_after(self.spec.stop_timeout):
                await self._exited.wait()
            self.kill("channel closed by the child")

    async def _serve_lane(self, lane: Channel, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            await lane.run(task_status=task_status)
        except ProtocolError as exc:
            logger.error("%r sent an undecodable frame on %s, killing it: %s", self, lane.name, exc)
            self.kill(f"protocol error: {exc}")
        # A lane that ends on its own needs nothing more: when the child is gone, so is
        # the main channel, and that is what the owner watches.

    async def _watch_heartbeat(self) -> None:
        try:
            await wait_heartbeat_lost(
                self.channel,
                interval=self.spec.heartbeat_interval,
                ping_timeout=self.spec.heartbeat_timeout,
            )
        except ActorError:
            return  # The channel ended: the reaper or the channel task handles that.
        logger.warning(
            "%r did not answer a heartbeat within %.1fs; killing it",
            self,
            self.spec.heartbeat_timeout,
        )
        self.kill("heartbeat timeout")

    async def _pump_output(self, kind: str, stream: trio.abc.ReceiveStream) -> None:
        splitter = LineSplitter(MAX_OUTPUT_LINE)
        try:
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    break
                if not chunk:
                    break
                for line in splitter.feed(chunk):
                    self._emit_output(kind, line)
            for line in splitter.flush():
                self._emit_output(kind, line)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            self._output_streams_open -= 1
            if self._output_streams_open == 0:
                self._output_done.set()

    def _emit_output(self, kind: str, line: str) -> None:
        if self.spec.on_output is None:
            logger.info("%s[%d] %s: %s", self.name, self.pid, kind, line)
            return
        try:
            self.spec.on_output(kind, line)
        except Exception:
            # A broken log sink must not take the child's output pipe down with it (the
            # child would block writing to a full pipe).
            logger.exception("%r: on_output callback raised", self)


def _absolute_cwd(cwd: str | None) -> str:
    # The fork server's working directory is not ours: resolve against ours here.
    return os.path.abspath(cwd if cwd is not None else os.getcwd())


def _fd_env(child_fds: Sequence[int]) -> dict[str, str]:
    """The variables that tell the child which of its fds are which: the main channel's
    pair first, then one pair per lane."""
    pairs = [f"{child_fds[i]},{child_fds[i + 1]}" for i in range(0, len(child_fds), 2)]
    env = {CHANNEL_FDS_ENV: pairs[0]}
    if len(pairs) > 1:
        env[LANE_FDS_ENV] = ";".join(pairs[1:])
    return env


async def _fork(
    spec: ProcessSpec, forkserver: ForkServer, env: dict[str, str], fds: Sequence[int]
) -> ChildProcess | None:
    """Start the child from the fork server; None when a plain spawn must do it."""
    if not forkserver.accepts(spec.argv, env):
        logger.debug("%s: %s cannot be forked; spawning it", spec.name, list(spec.argv))
        return None
    # The fork server hands the fds to the child as 3, 4, 5, ... in order.
    forked_env = {**env, **_fd_env(range(3, 3 + len(fds)))}
    try:
        return await forkserver.spawn(
            spec.argv,
            env=forked_env,
            cwd=_absolute_cwd(spec.cwd),
            title=spec.title or spec.name,
            pass_fds=fds,
        )
    except ForkServerUnavailable as exc:
        # Never a reason not to start: the fork server only makes it faster.
        logger.info("%s: fork server unavailable (%s); spawning it", spec.name, exc)
        return None


def _pipe_pair() -> tuple[int, int, int, int]:
    """Two pipes for one channel: (parent read, parent write, child read, child write)."""
    up_read, up_write = os.pipe()
    try:
        down_read, down_write = os.pipe()
    except BaseException:
        os.close(up_read)
        os.close(up_write)
        raise
    return up_read, down_write, down_read, up_write


async def _spawn(
    spec: ProcessSpec,
    on_request: RequestHandler,
    on_notify: NotifyHandler | None,
    forkserver: ForkServer | None = None,
) -> tuple[ChildProcess, Channel, tuple[Channel, ...]]:
    # os.pipe() fds are close-on-exec, so only this child inherits its ends (via
    # pass_fds, or the fork server); any other process holding them would hide the EOF
    # that tells each side that the other one died.
    parent_fds: list[tuple[int, int]] = []  # (read, write) per channel, main first
    child_fds: list[int] = []  # read, write, read, write, ... in the same order
    try:
        for _ in range(1 + spec.lanes):
            parent_read, parent_write, child_read, child_write = _pipe_pair()
            parent_fds.append((parent_read, parent_write))
            child_fds += (child_read, child_write)
        env = dict(os.environ if spec.env is None else spec.env)
        process: ChildProcess | None = None
        if forkserver is not None:
            process = await _fork(spec, forkserver, env, child_fds)
        if process is None:
            env.update(_fd_env(child_fds))
            process = await trio.lowlevel.open_process(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=spec.cwd,
                pass_fds=child_fds,
                # Out of the terminal's process group: a Ctrl-C meant for the daemon must
                # not kill the children before the daemon can stop them in order.
                start_new_session=True,
            )
    except BaseException as exc:
        for pair in parent_fds:
            for fd in pair:
                os.close(fd)
        if isinstance(exc, OSError):
            raise SpawnError(f"cannot start {spec.name!r} ({spec.argv[0]!r}): {exc}") from exc
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
    channels = [
        Channel(
            trio.lowlevel.FdStream(parent_write),
            trio.lowlevel.FdStream(parent_read),
            name=spec.name if index == 0 else f"{spec.name}/lane{index}",
            on_request=on_request,
            on_notify=on_notify,
        )
        for index, (parent_read, parent_write) in enumerate(parent_fds)
    ]
    return process, channels[0], tuple(channels[1:])


@asynccontextmanager
async def open_process_actor(
    spec: ProcessSpec,
    *,
    on_request: RequestHandler,
    on_notify: NotifyHandler | None = None,
    forkserver: ForkServer | None = None,
) -> AsyncIterator[ProcessActor]:
    """Start ``spec`` as a child process and yield a :class:`ProcessActor` for it.

    The child finds its channel through the ``ACTORS_CHANNEL_FDS`` environment variable
    (see :func:`open_parent_channel`); ``on_request``/``on_notify`` handle what it sends
    us. Leaving the block, normally or by cancellation or error, stops the child with
    :meth:`ProcessActor.stop` and reaps it. Raises :class:`SpawnError` if it cannot start.

    With ``forkserver`` (see :func:`open_forkserver`) the child is forked from it when
    :meth:`ForkServer.accepts` the command, and spawned the plain way otherwise or when
    the fork server is unavailable.
    """
    process, channel, lanes = await _spawn(spec, on_request, on_notify, forkserver)
    actor = ProcessActor(spec, process, channel, lanes)
    logger.debug("started %r", actor)
    with collapse_single_exception():
        async with trio.open_nursery() as nursery:
            try:
                # Shielded while it starts (it starts its tasks and returns at once): a
                # task started into a nursery whose start() is cancelled is not moved
                # into ``nursery`` (trio leaves it to end on its own), and this one,
                # shielded, would never end: the start would wait for it for good (a
                # daemon stopped while a module restarted hung so). Once started, a
                # pending cancel lands at the next checkpoint and stop() runs below.
                with trio.CancelScope(shield=True):
                    await nursery.start(actor._serve_background)
                yield actor
            finally:
                await actor.stop()
                await actor._shutdown_background()
