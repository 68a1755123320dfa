"""``vessel serve``: run the daemon in the foreground until SIGINT or SIGTERM.

Shutdown order: stop accepting connections and tell WebSocket clients (close 1001), then
stop every module (each finishes its current invocation and runs on-unload, bounded),
then exit. Every module process is reaped before the command returns.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from actors import ForkServerLaunch

from .._active_wait import DEFAULT_LIMIT
from .._ceilings import ENV_VAR as CEILINGS_ENV
from .._ceilings import Ceilings, parse_ceilings
from .._cpu_box import QUARANTINE
from .._daemon import (
    Daemon,
    DaemonConfig,
    forkserver_default,
    launch_host_forkserver,
    open_daemon,
)
from .._errors import VesselError
from .._open_files import raise_open_file_limit
from .._paths import default_data_dir
from .._systemd import Notifier

if TYPE_CHECKING:
    from ..gateway import GatewayConfig

#: Below this many open files, the start says how to raise the limit.
LOW_OPEN_FILE_LIMIT = 4096

log = logging.getLogger("vessel")


async def serve(
    config: DaemonConfig,
    gateway: GatewayConfig,
    forkserver: ForkServerLaunch | None = None,
    notifier: Notifier | None = None,
) -> None:
    """``notifier``: systemd's (vessel/_systemd.py): READY=1 once the gateway listens,
    then STATUS= lines and the watchdog's pings from this trio loop, STOPPING=1 at the
    stop (systemd watches a service only while it runs: not during its start or stop)."""
    # Not at the top of the file: main() starts the fork server before these imports.
    from ..gateway import serve_gateway

    if notifier is not None:
        notifier.send("STATUS=starting: opening the data dir")
    #: The tasks that end when the daemon stops (a stop does not wait for them).
    background = trio.CancelScope()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            open_daemon(config, forkserver=forkserver) as daemon,
            trio.open_nursery() as nursery,
        ):
            shutdown = trio.Event()
            _, binds = await nursery.start(
                lambda task_status: serve_gateway(
                    daemon, gateway, shutdown=shutdown, task_status=task_status
                )
            )
            tasks: list[Callable[[], Awaitable[None]]] = [
                functools.partial(_say_when_started, daemon)
            ]
            if notifier is not None:
                status = functools.partial(describe_status, daemon, binds)
                notifier.send("READY=1", f"STATUS={status()}")
                tasks += [notifier.serve_watchdog, functools.partial(notifier.serve_status, status)]
            ids = daemon.manager.ids()
            log.info(
                "vessel running on %s: data dir %s, %d module(s): %s",
                ", ".join(binds),
                config.data_dir,
                len(ids),
                ", ".join(ids) or "none",
            )
            nursery.start_soon(_run_until_cancelled, background, tasks)
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                break
            shutdown.set()
            background.cancel()
            if notifier is not None:
                notifier.send("STOPPING=1", "STATUS=stopping: unloading the modules")
        # Leaving open_daemon stopped every module (on-unload, then the process).
    log.info("vessel stopped")


async def _run_until_cancelled(
    scope: trio.CancelScope, tasks: list[Callable[[], Awaitable[None]]]
) -> None:
    """Run ``tasks`` until they end or ``scope`` is cancelled."""
    with scope:
        async with trio.open_nursery() as nursery:
            for task in tasks:
                nursery.start_soon(task)


def describe_status(daemon: Daemon, binds: list[str]) -> str:
    """What the daemon is doing, in one line for ``systemctl status`` (asked every second:
    from memory only, no database read)."""
    states: dict[str, int] = {}
    for module_id in daemon.manager.ids():
        state = daemon.manager.state(module_id).value
        states[state] = states.get(state, 0) + 1
    modules = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none"
    doing = f"; building {daemon.building} from source" if daemon.building else ""
    installing = [i for i in daemon.manager.installs.all() if i.under_way]
    if installing:
        doing += "; installing " + ", ".join(f"{i.module_id} ({i.state})" for i in installing)
    return f"serving on {', '.join(binds)}; modules: {modules}{doing}"


async def _say_when_started(daemon: Daemon) -> None:
    """One line once every module has started (or failed to): what a script waits for."""
    await daemon.modules_started.wait()
    states: dict[str, list[str]] = {}
    for info in daemon.manager.list_modules():
        states.setdefault(str(info["state"]), []).append(str(info["id"]))
    log.info(
        "modules started: %s",
        "; ".join(f"{len(ids)} {state} ({', '.join(ids)})" for state, ids in sorted(states.items()))
        or "none installed",
    )


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vessel", description="Vessel home-server daemon")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the daemon in the foreground")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=_env_path("VESSEL_DATA_DIR"),
        help="where modules, the database and the token live "
        "(env VESSEL_DATA_DIR; default ~/.local/share/vessel)",
    )
    p.add_argument(
        "--host",
        default=os.environ.get("VESSEL_HOST", "127.0.0.1"),
        help="address to listen on (env VESSEL_HOST; default 127.0.0.1). Anything but a "
        "loopback address exposes the daemon to the network: an explicit choice.",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("VESSEL_PORT", "8080")),
        help="port to listen on (env VESSEL_PORT; default 8080; 0 picks a free one)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[o for o in os.environ.get("VESSEL_ALLOWED_ORIGINS", "").split(",") if o],
        metavar="ORIGIN",
        help="a browser origin (https://dash.example:443) allowed to open /ws besides "
        "pages served by Vessel itself; repeatable (env VESSEL_ALLOWED_ORIGINS, comma-separated)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[h for h in os.environ.get("VESSEL_ALLOWED_HOSTS", "").split(",") if h],
        metavar="NAME",
        help="a host name clients use to reach this daemon (vessel.home.arpa), besides IP "
        "addresses, localhost and this machine's own name, which are always answered; "
        "repeatable (env VESSEL_ALLOWED_HOSTS, comma-separated)",
    )
    p.add_argument(
        "--metrics-open",
        action="store_true",
        default=os.environ.get("VESSEL_METRICS_OPEN", "") not in ("", "0"),
        help="answer GET /metrics (Prometheus) without the token: for a scraper that "
        "cannot send one; the figures name the installed modules (env "
        "VESSEL_METRICS_OPEN=1; default: the token is needed, as for /api)",
    )
    p.add_argument(
        "--no-bundled",
        action="store_true",
        help="do not install the bundled example modules into a fresh data dir",
    )
    p.add_argument(
        "--no-forkserver",
        dest="forkserver",
        action="store_false",
        default=forkserver_default(),
        help="start each module process as a fresh interpreter instead of forking it from "
        "the pre-imported fork server (slower; for debugging; env VESSEL_FORKSERVER=0)",
    )
    p.add_argument(
        "--active-wait-us",
        type=_microseconds,
        # A string default goes through type= too, so a bad env value is reported here.
        default=os.environ.get("VESSEL_ACTIVE_WAIT_US", ""),
        metavar="MICROSECONDS",
        help="wait actively (a busy core, no sleep) up to this long for a module that "
        "usually answers within it: a faster round trip for fast commands "
        f"(env VESSEL_ACTIVE_WAIT_US; default {DEFAULT_LIMIT * 1e6:.0f}; 0 turns it off)",
    )
    p.add_argument(
        "--quarantine-seconds",
        type=_seconds,
        default=os.environ.get("VESSEL_QUARANTINE_SECONDS", ""),
        metavar="SECONDS",
        help="how long a module that trapped or crashed stays quarantined to one CPU, "
        "with the rest of Vessel kept off that CPU (env VESSEL_QUARANTINE_SECONDS; "
        f"default {QUARANTINE:g}; 0: only while it runs away)",
    )
    p.add_argument(
        "--ca-file",
        dest="ca_files",
        type=Path,
        action="append",
        default=[Path(f) for f in os.environ.get("VESSEL_CA_FILES", "").split(os.pathsep) if f],
        metavar="PEM",
        help="trust the certificates in this PEM file (a CA's, or a server's own "
        "self-signed one, such as a Home Assistant's) for modules' https:// and wss://, "
        "besides the usual CAs; a private key in the file is ignored; repeatable "
        f"(env VESSEL_CA_FILES, {os.pathsep!r}-separated)",
    )
    p.add_argument(
        "--limit-ceiling",
        dest="limit_ceilings",
        action="append",
        # Checked in main(), the environment's entries with the flags' (argparse does not
        # pass a list default through type=).
        default=os.environ.get(CEILINGS_ENV, "").split(","),
        metavar="NAME=VALUE",
        help="the most a module's manifest may raise limits.NAME to (a module asking more "
        "is refused, naming the limit); repeatable (env "
        f"{CEILINGS_ENV}, comma-separated). Defaults: "
        + ", ".join(f"{k}={v}" for k, v in Ceilings().all().items()),
    )
    p.add_argument(
        "--reset-database",
        action="store_true",
        help="start with a new, empty database when vessel.db is missing or empty although "
        "modules are installed (otherwise refused: their settings, storage and disabled "
        "state would be lost); restore it from a backup instead if you can. No env "
        "variable, on purpose: use it once, by hand",
    )
    p.add_argument(
        "--compile-jobs",
        type=_jobs,
        default=os.environ.get("VESSEL_COMPILE_JOBS", ""),
        metavar="N",
        help="compile at most N modules at once, each in a short-lived process at a low "
        "priority (env VESSEL_COMPILE_JOBS; default one fewer than the CPUs, at least 1)",
    )
    return parser


def _jobs(text: str) -> int | None:
    """``--compile-jobs``: a whole number from 1 (empty: the default, None)."""
    if not text.strip():
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of jobs: {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be between 1 and 256 jobs, got {value}")
    return value


def _number_type(
    parse: Callable[[str], float], unit: str, high: float, default: float, scale: float = 1.0
) -> Callable[[str], float]:
    """An argparse ``type=`` for a number of ``unit`` from 0 to ``high`` (empty:
    ``default``), returned times ``scale``."""
    what = f"{'whole ' if parse is int else ''}number of {unit}"

    def convert(text: str) -> float:
        if not text.strip():
            return default
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None
        if not 0 <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be between 0 and {high:.15g} {unit}, got {value:.15g}"
            )
        return value * scale

    return convert


#: ``--quarantine-seconds``: seconds.
_seconds = _number_type(float, "seconds", 86_400, QUARANTINE)
#: ``--active-wait-us``: whole microseconds, as seconds.
_microseconds = _number_type(int, "microseconds", 1_000_000, DEFAULT_LIMIT, 1e-6)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ceilings = Ceilings(parse_ceilings(args.limit_ceilings))  # a later entry wins
    except ValueError as exc:
        parser.error(f"--limit-ceiling (or {CEILINGS_ENV}): {exc}")
    logging.basicConfig(
        level=os.environ.get("VESSEL_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # A fatal signal (the SIGABRT of systemd's watchdog, a crash) writes every thread's
    # Python stack to stderr (the journal): where the trio loop was stuck.
    faulthandler.enable()
    before, after = raise_open_file_limit()  # before the fork server: modules inherit it
    if after < LOW_OPEN_FILE_LIMIT:
        logging.getLogger("vessel").warning(
            "this process may open only %d files (sockets, module pipes): the gateway "
            "takes at most %d remote connections; raise the hard limit (LimitNOFILE= in "
            "the systemd unit, ulimit -Hn) for more",
            after, after // 4,
        )  # fmt: skip
    elif after != before:
        logging.getLogger("vessel").debug("open files: limit raised from %d to %d", before, after)
    config = DaemonConfig(
        data_dir=args.data_dir or default_data_dir(),
        install_bundled=not args.no_bundled,
        forkserver=args.forkserver,
        active_wait=args.active_wait_us,
        quarantine=args.quarantine_seconds,
        trusted_ca=tuple(args.ca_files),
        compile_jobs=args.compile_jobs,
        limit_ceilings=ceilings,
        reset_database=args.reset_database,
        # The gateway answers while the modules start (and compile): see serve().
        wait_for_modules=False,
    )
    # Read (and removed from the environment) before any child starts: module processes
    # must not speak for the daemon.
    notifier = Notifier.from_environ()
    # Started before the gateway's imports (Quart, Hypercorn: the bulk of this
    # command's start), so the fork server imports on another core meanwhile and is
    # ready when the first module starts.
    forkserver = launch_host_forkserver() if config.forkserver else None
    from ..gateway import GatewayConfig

    gateway = GatewayConfig(
        host=args.host,
        port=args.port,
        allowed_origins=frozenset(args.allow_origin),
        allowed_hosts=frozenset(args.allowed_host),
        metrics_open=args.metrics_open,
    )
    try:
        trio.run(serve, config, gateway, forkserver, notifier)
    except VesselError as exc:
        print(f"vessel: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        print(f"vessel: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
