"""The fork server process ("zygote"): ``python -m actors._forkserver_main``.

Started only by :func:`actors.open_forkserver`, which passes one end of an AF_UNIX
SOCK_SEQPACKET socket pair (``--fd``). The server imports the ``--preload`` modules once,
then forks a child per spawn request, so each child starts with those imports done
instead of paying for them again. The child then runs ``python -m <module>`` in-process
with :func:`runpy.run_module`, after making itself look like a freshly started
interpreter (see :func:`_become_child`).

Forking is only safe in a single-threaded process, so the server never starts a thread
or an event loop: it is one ``select()`` loop over the socket and a SIGCHLD wakeup pipe,
and it checks ``/proc/self/task`` after the preloads and refuses to serve if an import
started a thread.

No orphans: the server dies with its owner (``PR_SET_PDEATHSIG``, and end-of-file on the
socket makes it SIGKILL every child and exit), and every child dies with the server
(``PR_SET_PDEATHSIG`` again), so nothing outlives the process that started the server.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import fcntl
import gc
import importlib
import os
import runpy
import select
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Sequence
from typing import NoReturn

import msgspec

from ._forkserver_wire import (
    MAX_FDS,
    MAX_MESSAGE,
    Exited,
    Ready,
    Refused,
    Spawned,
    SpawnFailed,
    SpawnRequest,
    fds_from_ancillary,
    rights,
)

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
# What this interpreter found at its start: a signal its owner ignores (``nohup``, a
# background job of a script) stays ignored in a process the owner spawns with
# ``python -m``, and so in the ones forked here on its behalf.
_STARTING_DISPOSITIONS = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
#: The kernel keeps 15 bytes of a task's name (``comm``) plus the terminating NUL.
_COMM_LENGTH = 15
#: Exit status of a child whose server died before it could arm PR_SET_PDEATHSIG
#: (the value actors uses for a child that lost its parent, EX_SOFTWARE).
_PARENT_LOST = 70
#: How long the server waits for its SIGKILLed children when it shuts down; only a
#: child stuck in uninterruptible sleep takes any time at all.
_SHUTDOWN_REAP_SECONDS = 5.0

_libc = ctypes.CDLL(None, use_errno=True)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SpawnRequest)


def _say(level: str, message: str) -> None:
    """One line on stderr, which the owner logs at ``level``. Not the logging module: a
    root handler configured here would be inherited by every child and silently turn its
    own ``logging.basicConfig`` into a no-op."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{level}: {message}\n")
        sys.stderr.flush()


def _prctl(option: int, value: int | bytes) -> None:
    arg = ctypes.c_char_p(value) if isinstance(value, bytes) else ctypes.c_ulong(value)
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _die_with_parent(parent: int) -> None:
    """SIGKILL us when ``parent`` dies, and exit now if it already has (the signal is
    only armed for a parent that is still there when we ask)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(_PARENT_LOST)


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


class _Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid = os.getpid()
        self.children: set[int] = set()
        # sys.path[0] of a `python -m` interpreter is its working directory; a child
        # gets its own (see _become_child), but only where ours is that entry.
        self.path0 = sys.path[0] if sys.path and not sys.flags.safe_path else None
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    # -- the loop ---------------------------------------------------------------------

    def serve(self) -> None:
        # A Python handler is what makes the C handler write to the wakeup fd; the
        # handler itself has nothing to do, the loop reaps.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w)
        try:
            sock_fd = self.sock.fileno()
            while True:
                readable, _, _ = select.select([sock_fd, self.wake_r], [], [])
                if self.wake_r in readable:
                    self._drain_wakeups()
                    if not self._reap():
                        return
                if sock_fd in readable and not self._handle_request():
                    return
        finally:
            self._kill_all()

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 4096):
                pass

    def _send(self, message: msgspec.Struct, fds: list[int] | None = None) -> bool:
        """Send to the owner; False once it is gone."""
        try:
            self.sock.sendmsg([_encoder.encode(message)], rights(fds or []))
        except OSError:
            return False
        return True

    def _reap(self) -> bool:
        """Report every child that has exited; False once the owner is gone."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return True
            self.children.discard(pid)
            if not self._send(Exited(pid=pid, status=os.waitstatus_to_exitcode(status))):
                return False

    def _handle_request(self) -> bool:
        """Serve one request; False at end of file (the owner closed or died)."""
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(
                MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
            )
        except OSError:
            return False
        fds = fds_from_ancillary(ancdata)
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ValueError("truncated request")
            request = _decoder.decode(data)
            if len(fds) != request.nfds or request.nfds < 2:
                raise ValueError(f"{len(fds)} fds attached, {request.nfds} announced")
        except (ValueError, msgspec.DecodeError) as exc:
            # Only a bug in the owner gets here; it cannot be answered without an id.
            _say("error", f"undecodable request, shutting down: {exc}")
            for fd in fds:
                os.close(fd)
            return False
        try:
            return self._fork(request, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _fork(self, request: SpawnRequest, fds: list[int]) -> bool:
        # Whatever sits in a stdio buffer now would be written twice, once per process.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            return self._send(SpawnFailed(id=request.id, error=f"fork: {exc}"))
        if pid == 0:
            _become_child(self, request, fds)
        self.children.add(pid)
        # Now, before the loop can reap it: a pidfd names this process and no other,
        # so the owner can signal it without racing pid reuse.
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            os.kill(pid, signal.SIGKILL)  # our unreaped child: the pid cannot be reused
            return self._send(SpawnFailed(id=request.id, error=f"pidfd_open: {exc}"))
        try:
            return self._send(Spawned(id=request.id, pid=pid), [pidfd])
        finally:
            os.close(pidfd)

    def _kill_all(self) -> None:
        """The owner is gone (or we are going): nothing we started may outlive us."""
        for pid in self.children:
            # Unreaped children of ours: these pids cannot name anyone else yet.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + _SHUTDOWN_REAP_SECONDS
        while self.children and time.monotonic() < deadline:
            for pid in list(self.children):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    self.children.discard(pid)
                    continue
                if done:
                    self.children.discard(pid)
                    # The owner may still be listening (an orderly close): tell it.
                    self._send(Exited(pid=pid, status=os.waitstatus_to_exitcode(status)))
            if self.children:
                select.select([], [], [], 0.01)


# -- the child ----------------------------------------------------------------------------


def _set_cmdline(argv: Sequence[str]) -> None:
    """Best effort: show ``argv`` in /proc/<pid>/cmdline (what ``ps`` and ``pgrep -f``
    read) instead of the server's command line, by overwriting the original argument
    strings in place, as setproctitle does. The interpreter keeps its own copies of
    them, so nothing reads that memory any more; a longer ``argv`` is cut to fit."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        # Fields 48 and 49 of proc(5), arg_start and arg_end; fields[0] is field 3.
        start, end = int(fields[45]), int(fields[46])
        if end <= start:
            return
        text = b"\0".join(os.fsencode(arg) for arg in argv)[: end - start - 1]
        fd = os.open("/proc/self/mem", os.O_WRONLY)
        try:
            os.pwrite(fd, text.ljust(end - start, b"\0"), start)
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        pass


def _place_fds(sources: list[int]) -> None:
    """Make ``sources[i]`` fd ``i`` (inheritable, like stdio after exec) and close the
    originals: afterwards the child holds exactly these and what the preloads opened."""
    count = len(sources)
    # Move every source out of the target range first, so no dup2 below overwrites a
    # source that is still to be placed.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, count) for fd in sources]
    for target, fd in enumerate(moved):
        os.dup2(fd, target, inheritable=True)
    for fd in {*moved, *(fd for fd in sources if fd >= count)}:
        os.close(fd)


def _become_child(server: _Server, request: SpawnRequest, fds: list[int]) -> NoReturn:
    """In the forked child: turn into ``python -m <module> <args...>`` and run it."""
    code = 1
    try:
        # The server's plumbing is not the child's: its socket would let the child
        # speak for the server, and its wakeup pipe would fill up unread.
        signal.set_wakeup_fd(-1)
        server.sock.close()
        os.close(server.wake_r)
        os.close(server.wake_w)
        # The dispositions a fresh interpreter has (it ignores SIGPIPE and SIGXFSZ, and
        # keeps ignoring what its spawner ignored).
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for sig, disposition in _STARTING_DISPOSITIONS.items():
            signal.signal(sig, disposition)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        # Like start_new_session: a signal for the server's group is not for us.
        os.setsid()
        _die_with_parent(server.pid)
        with contextlib.suppress(OSError):
            _prctl(_PR_SET_NAME, os.fsencode(request.title)[:_COMM_LENGTH])
        _set_cmdline(request.argv)
        stdout, stderr, *passed = fds
        devnull = os.open(os.devnull, os.O_RDWR)
        _place_fds([devnull, stdout, stderr, *passed])
        # The same environment as clear() + update(request.env), changing only what
        # differs (usually a handful of variables: the owner forwards its own, which are
        # the server's). Every entry replaced frees and allocates objects on pages the
        # child shares with the server, and each such page is copied: clearing and
        # refilling cost a Vessel module process about 0.2 MiB of private memory.
        for key in [key for key in os.environ if key not in request.env]:
            del os.environ[key]
        for key, value in request.env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        time.tzset()  # the time module read TZ when the server imported it
        os.chdir(request.cwd)
        if server.path0 is not None and sys.path and sys.path[0] == server.path0:
            sys.path[0] = request.cwd
        sys.orig_argv = list(request.argv)
        # What `python -m` shows while it looks for the module; run_module replaces it.
        sys.argv = ["-m", *request.args]
        runpy.run_module(request.module, run_name="__main__", alter_sys=True)
        code = _finalize(0)
    except SystemExit as exc:
        code = _finalize(_exit_code(exc))
    except KeyboardInterrupt as exc:
        with contextlib.suppress(BaseException):
            sys.excepthook(type(exc), exc, _without_our_frames(exc.__traceback__))
        _finalize(0)
        # As the interpreter does: die of the signal, so the parent sees SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            sys.excepthook(type(exc), exc, _without_our_frames(exc.__traceback__))
        code = _finalize(1)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        # Never return into the server's loop, whatever happened above.
        os._exit(code)


def _without_our_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback from runpy down, as `python -m` shows it: the server's frames above
    would only confuse whoever reads a module's crash."""
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def _exit_code(exc: SystemExit) -> int:
    """What the interpreter makes of SystemExit(code)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    with contextlib.suppress(BaseException):
        print(exc.code, file=sys.stderr)
    return 1


def _finalize(code: int) -> int:
    """The first steps of a normal interpreter exit (join non-daemon threads, run atexit
    callbacks); os._exit in the caller skips the rest, which only frees memory."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        with contextlib.suppress(BaseException):
            shutdown()
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    return code


# -- entry point --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="python -m actors._forkserver_main")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the owner")
    parser.add_argument("--parent", type=int, required=True, help="the owner's pid")
    parser.add_argument("--name", default="forkserver", help="shown by ps (informational)")
    parser.add_argument("--preload", default="", help="comma-separated modules to import")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    with contextlib.suppress(OSError):
        _prctl(_PR_SET_NAME, os.fsencode(args.name)[:_COMM_LENGTH])
    sock = socket.socket(fileno=args.fd)
    sock.set_inheritable(False)

    # No collection while importing: a collection frees cyclic garbage, and what a child
    # allocates later fills those holes, on pages it shares with the server, so each is
    # copied. The garbage stays, frozen with the rest, in pages every child shares.
    # (What the Python docs advise for fork without exec; a Vessel module process keeps
    # about 0.3 MiB less private memory than after gc.collect() + gc.freeze().)
    gc.disable()
    started = time.perf_counter()
    preloaded: list[str] = []
    failed: dict[str, str] = {}
    for name in filter(None, args.preload.split(",")):
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as exc:
            # Not fatal: a child imports what it needs itself, only slower.
            failed[name] = f"{type(exc).__name__}: {exc}"
            _say("warning", f"preload {name!r} failed: {failed[name]}")
        else:
            preloaded.append(name)
    seconds = time.perf_counter() - started

    threads = _thread_count()
    if threads != 1:
        # fork() copies only the calling thread: a lock another thread held at that
        # moment stays locked forever in the child. Serving would be a gamble.
        reason = f"{threads} threads after the preloads (an import started a thread)"
        _say("error", f"refusing to fork: {reason}")
        with contextlib.suppress(OSError):
            sock.sendmsg([_encoder.encode(Refused(reason=reason))])
        os._exit(1)

    # Objects that exist now are shared with every child; keep the collector from
    # touching them (and so copying their pages) in each one. The server itself collects
    # again from here on: what its loop allocates is not shared for long.
    gc.freeze()
    gc.enable()
    server = _Server(sock)
    if server._send(Ready(pid=server.pid, preloaded=preloaded, failed=failed, seconds=seconds)):
        server.serve()
    os._exit(0)


if __name__ == "__main__":
    main()
