"""A fork server ("zygote") for process actors: children that start pre-imported.

Starting ``python -m something`` costs the interpreter's start plus every import the
program makes, again for every child. A fork server pays for the imports once: it is a
child process (``python -m actors._forkserver_main``) that imports the ``preload``
modules and then forks a copy of itself per spawn, which runs ``python -m <module>``
in-process. The daemon side, here, asks it over an AF_UNIX SOCK_SEQPACKET socket pair and
gets back a :class:`ForkedProcess`, which :func:`actors.open_process_actor` drives like a
``trio.Process``.

Guarantees:

* Only commands that a fork can reproduce are forked: ``[python, "-m", module, ...]``
  with the server's interpreter and the same interpreter-start environment (``PYTHON*``,
  locale, ``HOME``); anything else is a plain spawn (:meth:`ForkServer.accepts`).
* Signals go through a pidfd, so a reaped pid that the kernel reuses is never hit.
* No orphans: the server dies with this process (``PR_SET_PDEATHSIG``, and end-of-file on
  its socket, after which it SIGKILLs every child), and every child dies with the server.
* The server is never load-bearing: if it dies, its children are reported killed (their
  process actors see a SIGKILL, as after an OOM kill) and it is restarted, at most
  ``max_restarts`` times per ``restart_period``; while it is down, starting or given up
  on, :meth:`ForkServer.spawn` raises :class:`ForkServerUnavailable` and the caller falls
  back to a plain spawn.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec
import trio

from ._errors import ActorError
from ._forkserver_wire import (
    MAX_FDS,
    MAX_MESSAGE,
    Exited,
    Ready,
    Refused,
    ServerMessage,
    Spawned,
    SpawnFailed,
    SpawnRequest,
    fds_from_ancillary,
    rights,
)
from ._lines import LineSplitter
from ._util import collapse_single_exception

__all__ = [
    "ForkServer",
    "ForkServerLaunch",
    "ForkServerUnavailable",
    "ForkedProcess",
    "launch_forkserver",
    "open_forkserver",
]

logger = logging.getLogger("actors.forkserver")

#: How long the server may take to import its preloads (a spawn waits for it that long).
READY_TIMEOUT = 30.0
#: A fork takes milliseconds; a server that does not answer within this is hung.
SPAWN_TIMEOUT = 10.0
#: Variables the interpreter reads when it starts (search path, flags, I/O encoding,
#: user site-packages): a forked child has the server's, so they must match to fork.
_STARTUP_ENV = frozenset({"HOME", "LANG", "LC_ALL", "LC_CTYPE"})
# After the server dies its children have been sent SIGKILL (PR_SET_PDEATHSIG); only an
# uninterruptible sleep delays their end. Also bounds waiting for the server itself.
_DEATH_TIMEOUT = 5.0
_MAX_LOG_LINE = 8192
#: Replies and exit reports are a few dozen bytes.
_REPLY_SIZE = 65536
_SERVER_LEVELS = {"warning": logging.WARNING, "error": logging.ERROR}

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[ServerMessage] = msgspec.msgpack.Decoder(ServerMessage)


class ForkServerUnavailable(ActorError):
    """The fork server cannot spawn this child now (down, restarting, given up on, or
    the request failed); start it with a plain spawn instead."""


def _startup_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PYTHON") or k in _STARTUP_ENV}


class ForkedProcess:
    """A child forked by the fork server: the part of ``trio.Process`` that
    :class:`actors.ProcessActor` uses.

    ``wait()`` returns the status in ``returncode`` form (exit code, or minus the
    signal). ``stdout``/``stderr`` are the read ends of the child's output pipes; the
    child's stdin is ``/dev/null``.
    """

    def __init__(self, pid: int, pidfd: int, stdout_fd: int, stderr_fd: int) -> None:
        self.pid = pid
        self.stdout: trio.lowlevel.FdStream = trio.lowlevel.FdStream(stdout_fd)
        self.stderr: trio.lowlevel.FdStream = trio.lowlevel.FdStream(stderr_fd)
        self._pidfd = pidfd
        self._returncode: int | None = None
        self._exited = trio.Event()

    def __repr__(self) -> str:
        state = "running" if self._returncode is None else f"returncode={self._returncode}"
        return f"<ForkedProcess pid={self.pid} {state}>"

    @property
    def returncode(self) -> int | None:
        """None while it runs; then its exit code, or minus the signal that killed it."""
        return self._returncode

    async def wait(self) -> int:
        """Wait until the child has exited and been reaped; return :attr:`returncode`.
        Safe to call from several tasks at once."""
        await self._exited.wait()
        assert self._returncode is not None
        return self._returncode

    def send_signal(self, sig: signal.Signals | int) -> None:
        """Send ``sig`` through the pidfd. A no-op once the exit is known; raises
        ProcessLookupError if the child has exited but its exit is not reported yet."""
        if self._returncode is not None:
            return
        signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _record_exit(self, status: int) -> None:
        if self._returncode is not None:
            return
        self._returncode = status
        trio.lowlevel.notify_closing(self._pidfd)
        os.close(self._pidfd)
        self._exited.set()

    async def _confirm_death(self) -> None:
        """The server died without reporting this child's exit: PR_SET_PDEATHSIG has
        SIGKILLed it. Wait (bounded) until the pidfd says it is gone, then record it."""
        if self._returncode is not None:
            return
        for _ in range(2):
            with trio.move_on_after(_DEATH_TIMEOUT):
                await trio.lowlevel.wait_readable(self._pidfd)
                break
            logger.error("%r outlived its fork server by %.0fs; killing it", self, _DEATH_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        self._record_exit(self._orphan_status())

    def _orphan_status(self) -> int:
        # If we are a child subreaper the orphan was re-parented to us: reap it, which
        # also gives its real status. Otherwise init reaps it and the status is lost;
        # SIGKILL is what PR_SET_PDEATHSIG sent it.
        try:
            result = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except OSError:
            return -signal.SIGKILL
        if result is None:
            return -signal.SIGKILL
        if result.si_code == os.CLD_EXITED:
            return result.si_status
        return -result.si_status


class _Pending:
    """One spawn request waiting for its reply. Owns the output pipes' read ends until
    they are handed to the ForkedProcess."""

    def __init__(self, stdout_r: int, stderr_r: int) -> None:
        self.fds: list[int] | None = [stdout_r, stderr_r]
        self.done = trio.Event()
        self.process: ForkedProcess | None = None
        self.error: str | None = None
        #: The spawner gave up waiting: a child forked now has no owner.
        self.abandoned = False

    def take_fds(self) -> list[int]:
        assert self.fds is not None
        fds, self.fds = self.fds, None
        return fds

    def fail(self, error: str) -> None:
        """Resolve with an error (idempotent): close the read ends and wake the spawner."""
        if self.done.is_set():
            return
        self.error = error
        for fd in self.fds or ():
            os.close(fd)
        self.fds = None
        self.done.set()


class _Server:
    """One fork server process, as seen from here."""

    def __init__(self, popen: subprocess.Popen[bytes], sock: socket.socket, pidfd: int) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.pidfd = pidfd
        self.ready = False
        self.dead = False
        #: We closed it on purpose: its end is not a failure.
        self.closing = False
        self.failure: str | None = None
        #: Set once it is ready or dead, whichever comes first.
        self.settled = trio.Event()
        #: Set when it has been reaped and its orphans accounted for.
        self.finished = trio.Event()
        self.children: dict[int, ForkedProcess] = {}
        self.pending: dict[int, _Pending] = {}
        # Two tasks waiting to write on one socket at once is an error in trio.
        self.send_lock = trio.Lock()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    async def receive(self) -> tuple[ServerMessage | None, list[int]]:
        """The next message and the fds beside it; (None, []) at end of file."""
        data, ancdata, flags, _ = await self.sock.recvmsg(
            _REPLY_SIZE, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
        )
        fds = fds_from_ancillary(ancdata)
        if not data or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            if data:
                raise ValueError("truncated message")
            return None, []
        try:
            return _decoder.decode(data), fds
        except msgspec.DecodeError:
            for fd in fds:
                os.close(fd)
            raise


@dataclass(frozen=True, eq=False)
class _Launched:
    """A started server process, not yet watched by a ForkServer."""

    popen: subprocess.Popen[bytes]
    sock: socket.socket
    pidfd: int
    log_fd: int


def _launch(
    preload: Sequence[str],
    name: str,
    python: str,
    env: Mapping[str, str],
    cwd: str | None,
) -> _Launched | str:
    """Start a server process: what came of it, or why it could not start."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    log_r, log_w = os.pipe()
    argv = [
        python,
        "-m",
        "actors._forkserver_main",
        "--name",
        name,
        "--fd",
        str(child_sock.fileno()),
        "--parent",
        str(os.getpid()),
        "--preload",
        ",".join(preload),
    ]
    try:
        # A plain Popen on the calling thread (the one that runs trio), not
        # trio.lowlevel.open_process: that forks from a worker thread, and the server's
        # PR_SET_PDEATHSIG fires when the *thread* that forked it exits, which trio's
        # idle workers do. The blocking part is a vfork + exec: about a millisecond.
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_w,
            stderr=log_w,
            env=env,
            cwd=cwd,
            pass_fds=(child_sock.fileno(),),
            # Out of our process group: a Ctrl-C meant for us must not reach it.
            start_new_session=True,
        )
    except OSError as exc:
        parent_sock.close()
        os.close(log_r)
        return f"cannot start: {exc}"
    finally:
        child_sock.close()
        os.close(log_w)
    try:
        pidfd = os.pidfd_open(popen.pid)
    except OSError as exc:  # pragma: no cover - pidfds exist since Linux 5.3
        popen.kill()
        popen.wait()
        parent_sock.close()
        os.close(log_r)
        return f"no pidfd for the server: {exc}"
    return _Launched(popen, parent_sock, pidfd, log_r)


class ForkServerLaunch:
    """A fork server process started early by :func:`launch_forkserver`, waiting to be
    handed to :func:`open_forkserver` (``launched=``)."""

    def __init__(
        self,
        *,
        preload: Sequence[str],
        name: str,
        python: str,
        env: Mapping[str, str],
        cwd: str | None,
    ) -> None:
        self.preload = tuple(preload)
        self.name = name
        self.python = python
        self.env = dict(env)
        self.cwd = cwd
        self._launched: _Launched | str | None = _launch(self.preload, name, python, self.env, cwd)

    def __repr__(self) -> str:
        launched = self._launched
        state = (
            launched
            if isinstance(launched, str)
            else "taken"
            if launched is None
            else (f"pid {launched.popen.pid}")
        )
        return f"<ForkServerLaunch {self.name!r} {state}>"

    def _take(self) -> _Launched | str:
        if self._launched is None:
            raise RuntimeError(f"{self!r} was already handed to open_forkserver")
        launched, self._launched = self._launched, None
        return launched


def launch_forkserver(
    preload: Iterable[str] = (),
    *,
    name: str = "forkserver",
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> ForkServerLaunch:
    """Start a fork server process now, before trio runs, and return it for
    :func:`open_forkserver` (``launched=``).

    The server imports its preloads while this process is still busy with its own
    start (its imports), instead of after it: on a machine with more than one core the
    first children can then be forked as soon as they are asked for. Arguments are those
    of :func:`open_forkserver`. Call it on the thread that will run trio (the server
    dies with that thread). If it is never handed over, the server exits when this
    process does (end of file on its socket, or its parent-death signal).
    """
    return ForkServerLaunch(
        preload=list(preload),
        name=name,
        python=python or sys.executable,
        env=os.environ if env is None else env,
        cwd=cwd,
    )


class ForkServer:
    """Spawns children from a pre-imported fork server. Made by :func:`open_forkserver`."""

    def __init__(
        self,
        *,
        preload: Sequence[str],
        name: str,
        python: str,
        env: Mapping[str, str],
        cwd: str | None,
        max_restarts: int,
        restart_period: float,
    ) -> None:
        self.name = name
        self.preload = tuple(preload)
        self.python = python
        self.max_restarts = max_restarts
        self.restart_period = restart_period
        #: Children forked so far, and times the server was restarted after dying.
        self.spawned = 0
        self.restarts = 0
        self._env = dict(env)
        self._startup_env = _startup_env(self._env)
        self._cwd = cwd
        self._server: _Server | None = None
        #: Every server started and not yet buried, for close to wait on.
        self._unburied: set[_Server] = set()
        self._disabled: str | None = None
        self._last_failure: str | None = None
        self._restart_times: collections.deque[float] = collections.deque()
        self._ids = itertools.count(1)
        self._closing = False
        self._nursery: trio.Nursery | None = None
        self._background_scope = trio.CancelScope(shield=True)

    def __repr__(self) -> str:
        return f"<ForkServer {self.name!r} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        """The pid of the running server (None while it is down)."""
        server = self._server
        return None if server is None or server.dead else server.pid

    def accepts(self, argv: Sequence[str], env: Mapping[str, str]) -> bool:
        """Whether a child with this command line and environment can be forked: it must
        be ``[<our python>, "-m", <module>, ...]`` (no interpreter options) and agree
        with the server on every variable the interpreter reads when it starts."""
        return (
            len(argv) >= 3
            and argv[0] == self.python
            and argv[1] == "-m"
            and bool(argv[2])
            and not argv[2].startswith("-")
            and _startup_env(env) == self._startup_env
        )

    async def wait_ready(self) -> bool:
        """Wait until the server has imported its preloads; False if it is unavailable."""
        try:
            await self._ready_server()
        except ForkServerUnavailable:
            return False
        return True

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        title: str,
        pass_fds: Sequence[int] = (),
    ) -> ForkedProcess:
        """Fork a child that runs ``argv`` (``[python, "-m", module, *args]``).

        ``env`` is its whole environment and ``cwd`` its working directory; ``title``
        becomes its name in ``ps``/``top`` (``/proc/<pid>/comm``, 15 bytes), and its
        ``/proc/<pid>/cmdline`` shows ``argv``. ``pass_fds[i]`` becomes fd ``3 + i`` in
        the child (the caller's copies stay open). Raises :class:`ForkServerUnavailable`
        when the server cannot do it now: the caller should spawn the plain way.
        """
        if not self.accepts(argv, env):
            raise ValueError(f"{self.name}: cannot fork {list(argv)!r} with this environment")
        if len(pass_fds) + 2 > MAX_FDS:
            raise ValueError(f"{self.name}: at most {MAX_FDS - 2} pass_fds")
        server = await self._ready_server()
        request_id = next(self._ids)
        data = _encoder.encode(
            SpawnRequest(
                id=request_id,
                module=argv[2],
                args=list(argv[3:]),
                argv=list(argv),
                env=dict(env),
                cwd=cwd,
                title=title,
                nfds=2 + len(pass_fds),
            )
        )
        if len(data) > MAX_MESSAGE:
            raise ForkServerUnavailable(f"spawn request of {len(data)} bytes is too large")
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        pending = _Pending(stdout_r, stderr_r)
        server.pending[request_id] = pending
        try:
            async with server.send_lock:
                if server.dead:
                    raise ForkServerUnavailable(server.failure or "ended")
                await server.sock.sendmsg([data], rights([stdout_w, stderr_w, *pass_fds]))
        except (OSError, trio.ClosedResourceError) as exc:
            pending.fail(str(exc))
            server.pending.pop(request_id, None)
            raise ForkServerUnavailable(f"spawn request not sent: {exc}") from exc
        except BaseException:
            pending.fail("not sent")
            server.pending.pop(request_id, None)
            raise
        finally:
            # The server has its own copies now (or never will): the write ends must
            # live in the child alone, or its exit would never show as end-of-file.
            os.close(stdout_w)
            os.close(stderr_w)
        # The request is out: the child may exist already. Give up on the reply only
        # by timeout, never by cancellation, so no child is left without an owner.
        with trio.CancelScope(shield=True), trio.move_on_after(SPAWN_TIMEOUT):
            await pending.done.wait()
        if not pending.done.is_set():
            pending.abandoned = True
            logger.error(
                "%s (pid %d) did not answer a spawn request within %.0fs; killing it",
                self.name,
                server.pid,
                SPAWN_TIMEOUT,
            )
            server.kill()
            raise ForkServerUnavailable(f"no answer within {SPAWN_TIMEOUT:g}s")
        if pending.process is None:
            raise ForkServerUnavailable(pending.error or "no child")
        self.spawned += 1
        return pending.process

    # -- the server process ------------------------------------------------------------

    async def _ready_server(self) -> _Server:
        if self._closing:
            raise ForkServerUnavailable("closing")
        if self._disabled is not None:
            raise ForkServerUnavailable(self._disabled)
        if self._server is None:
            # Down, and the restart after its death could not start it: try again,
            # within the restart budget.
            self._restart(self._last_failure or "not running")
        server = self._server
        if server is None:
            raise ForkServerUnavailable(self._disabled or self._last_failure or "not running")
        with trio.move_on_after(READY_TIMEOUT):
            await server.settled.wait()
        if not server.ready or server.dead:
            raise ForkServerUnavailable(server.failure or "not ready")
        return server

    def _start(self) -> None:
        """Start a server process; it becomes ready in the background."""
        self._adopt(_launch(self.preload, self.name, self.python, self._env, self._cwd))

    def _adopt(self, launched: _Launched | str) -> None:
        """Take charge of a launched server process (or record why none could be)."""
        assert self._nursery is not None
        if isinstance(launched, str):
            self._last_failure = launched
            logger.error("%s: %s; children are spawned without it", self.name, launched)
            return
        server = _Server(launched.popen, launched.sock, launched.pidfd)
        self._server = server
        self._unburied.add(server)
        logger.debug("%s starting (pid %d), preloading %s", self.name, server.pid, self.preload)
        self._nursery.start_soon(self._run_server, server)
        self._nursery.start_soon(self._pump_log, launched.log_fd, server.pid)

    def _restart(self, why: str) -> None:
        if self._closing or self._disabled is not None:
            return
        now = trio.current_time()
        while self._restart_times and now - self._restart_times[0] > self.restart_period:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.max_restarts:
            self._disabled = (
                f"gave up after {len(self._restart_times) + 1} failures within "
                f"{self.restart_period:g}s (last: {why})"
            )
            logger.error("%s %s; children are spawned without it", self.name, self._disabled)
            return
        self._restart_times.append(now)
        self.restarts += 1
        logger.warning("%s restarting (%s)", self.name, why)
        self._start()

    async def _run_server(self, server: _Server) -> None:
        failure = "end of file on its socket"
        # Anything but end-of-file may leave the server running: kill it then.
        eof = False
        try:
            with trio.move_on_after(READY_TIMEOUT) as ready_scope:
                first, fds = await server.receive()
            if ready_scope.cancelled_caught:
                failure = f"not ready within {READY_TIMEOUT:g}s"
            elif first is None:
                eof = True
            elif isinstance(first, Ready):
                self._on_ready(server, first)
                while True:
                    message, fds = await server.receive()
                    if message is None:
                        eof = True
                        break
                    self._dispatch(server, message, fds)
            elif isinstance(first, Refused):
                failure = f"refused to serve: {first.reason}"
                # Deterministic (an import starts a thread): restarting cannot help.
                self._disabled = failure
            else:
                for fd in fds:
                    os.close(fd)
                failure = f"protocol error: {type(first).__name__} before ready"
        except (OSError, ValueError, msgspec.DecodeError, trio.ClosedResourceError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
        finally:
            if not eof:
                server.kill()
            with trio.CancelScope(shield=True):
                await self._bury(server, failure)

    def _on_ready(self, server: _Server, ready: Ready) -> None:
        server.ready = True
        server.settled.set()
        logger.info(
            "%s ready (pid %d): preloaded %d module(s) in %.0f ms",
            self.name,
            server.pid,
            len(ready.preloaded),
            ready.seconds * 1000,
        )
        for module, error in ready.failed.items():
            logger.warning("%s: preload %r failed: %s", self.name, module, error)

    def _dispatch(self, server: _Server, message: ServerMessage, fds: list[int]) -> None:
        if isinstance(message, Exited):
            child = server.children.pop(message.pid, None)
            if child is not None:
                child._record_exit(message.status)
            return
        if isinstance(message, Spawned) and len(fds) == 1:
            pidfd = fds[0]
            pending = server.pending.pop(message.id, None)
            if pending is None or pending.done.is_set():
                # Not ours to own: make sure it does not run unsupervised.
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.close(pidfd)
                return
            child = ForkedProcess(message.pid, pidfd, *pending.take_fds())
            server.children[message.pid] = child
            if pending.abandoned:
                child.kill()
                child.stdout.close()
                child.stderr.close()
            pending.process = child
            pending.done.set()
            return
        if isinstance(message, SpawnFailed):
            pending = server.pending.pop(message.id, None)
            if pending is not None:
                pending.fail(message.error)
            for fd in fds:
                os.close(fd)
            return
        for fd in fds:
            os.close(fd)
        raise ValueError(f"unexpected {type(message).__name__} with {len(fds)} fd(s)")

    async def _bury(self, server: _Server, failure: str) -> None:
        """The server's socket ended: reap it, account for its children, restart it."""
        server.dead = True
        server.failure = failure
        server.settled.set()
        for pending in server.pending.values():
            pending.fail(f"the fork server ended: {failure}")
        server.pending.clear()
        orphans = list(server.children.values())
        server.children.clear()
        if self._server is server:
            self._server = None
        if server.popen.poll() is None:
            with trio.move_on_after(_DEATH_TIMEOUT):
                await trio.lowlevel.wait_readable(server.pidfd)
            if server.popen.poll() is None:
                server.kill()
                with trio.move_on_after(_DEATH_TIMEOUT):
                    await trio.lowlevel.wait_readable(server.pidfd)
        trio.lowlevel.notify_closing(server.pidfd)
        os.close(server.pidfd)
        server.sock.close()
        status = server.popen.poll()
        if server.closing:
            logger.debug("%s (pid %d) stopped (status %s)", self.name, server.pid, status)
        else:
            why = f"{failure}; exit status {status}"
            self._last_failure = why
            logger.warning(
                "%s (pid %d) ended (%s); %d child(ren) died with it",
                self.name,
                server.pid,
                why,
                len(orphans),
            )
            self._restart(why)
        async with trio.open_nursery() as nursery:
            for child in orphans:
                nursery.start_soon(child._confirm_death)
        self._unburied.discard(server)
        server.finished.set()

    async def _pump_log(self, fd: int, pid: int) -> None:
        splitter = LineSplitter(_MAX_LOG_LINE)
        async with trio.lowlevel.FdStream(fd) as stream:
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    chunk = b""
                lines = splitter.feed(chunk) if chunk else splitter.flush()
                for line in lines:
                    level, _, text = line.partition(": ")
                    if level in _SERVER_LEVELS:
                        logger.log(_SERVER_LEVELS[level], "%s[%d]: %s", self.name, pid, text)
                    else:
                        logger.info("%s[%d]: %s", self.name, pid, line)
                if not chunk:
                    return

    # -- lifetime ----------------------------------------------------------------------

    async def _serve_background(self, *, task_status: trio.TaskStatus[None]) -> None:
        # Shielded: when the owner is cancelled, process actors still stopping their
        # children need exit reports; open_forkserver cancels this scope at the very end.
        with self._background_scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()

    async def _close(self) -> None:
        """Stop the server: it SIGKILLs whatever children it still has, reports them and
        exits. Shielded and bounded."""
        with trio.CancelScope(shield=True):
            self._closing = True
            server = self._server
            if server is not None and not server.dead:
                server.closing = True
                if server.ready:
                    # End of file tells it to stop; it reports its last children first.
                    with contextlib.suppress(OSError):
                        server.sock.shutdown(socket.SHUT_WR)
                else:
                    server.kill()  # still importing: nothing to report
            # Also a server that died just before, whose children are being accounted for.
            for server in list(self._unburied):
                with trio.move_on_after(_DEATH_TIMEOUT):
                    await server.finished.wait()
                if not server.finished.is_set():
                    server.kill()
                    with trio.move_on_after(2 * _DEATH_TIMEOUT):
                        await server.finished.wait()


@asynccontextmanager
async def open_forkserver(
    preload: Iterable[str] = (),
    *,
    name: str = "forkserver",
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    max_restarts: int = 3,
    restart_period: float = 60.0,
    launched: ForkServerLaunch | None = None,
) -> AsyncIterator[ForkServer]:
    """Start a fork server that imports ``preload``, and yield a :class:`ForkServer`.

    Pass it to :func:`actors.open_process_actor` (``forkserver=``) to start children
    from it. ``python`` (default ``sys.executable``) is the interpreter it runs and the
    only one it forks for; ``env`` (default ``os.environ``) is its environment, whose
    interpreter-start variables a child's must match. Preload what the children import,
    not the ``-m`` module itself (``runpy`` would warn that it is already imported), and
    nothing that starts a thread at import: the server refuses to fork then.

    The block is entered at once; the server imports in the background and the first
    spawn waits for it. Must be entered from the thread that runs trio (the server dies
    with the thread that started it). Leaving the block stops the server, which SIGKILLs
    any child still running: leave every process actor using it first.

    ``launched``: a server already started by :func:`launch_forkserver`, whose
    ``preload``, ``name``, ``python``, ``env`` and ``cwd`` then replace those given here
    (restarts use them too).
    """
    if launched is not None:
        preload, name, python = launched.preload, launched.name, launched.python
        env, cwd = launched.env, launched.cwd
    server = ForkServer(
        preload=list(preload),
        name=name,
        python=python or sys.executable,
        env=os.environ if env is None else env,
        cwd=cwd,
        max_restarts=max_restarts,
        restart_period=restart_period,
    )
    with collapse_single_exception():
        async with trio.open_nursery() as nursery:
            # Shielded while it starts, as open_process_actor's: a cancelled start would
            # leave this shielded task outside the nursery, waited for for good.
            with trio.CancelScope(shield=True):
                await nursery.start(server._serve_background)
            try:
                if launched is None:
                    server._start()
                else:
                    server._adopt(launched._take())
                yield server
            finally:
                await server._close()
                server._background_scope.cancel()
