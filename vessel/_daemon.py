"""The daemon: storage, event bus, supervisor and module manager in one trio run."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from actors import ForkServer, ForkServerLaunch, Supervisor, launch_forkserver, open_forkserver

from ._active_wait import DEFAULT_LIMIT
from ._bundled import install_from_source, install_prebuilt
from ._bus import EventBus
from ._ceilings import Ceilings
from ._compiler import Compiler
from ._cpu_box import QUARANTINE, CpuBox
from ._errors import DatabaseMissing, DataDirError
from ._logbook import logs_dir, open_logbook
from ._manager import ModuleManager, SupervisionPolicy
from ._memory import keep_trimmed
from ._paths import bundled_modules_dir, database_path, modules_dir
from ._storage import Storage
from ._tls import load_trusted_certificates
from ._wasm_module import HOST_PRELOAD, START_TIMEOUT

log = logging.getLogger("vessel.daemon")

#: The fork server's name: its process name in ps/top and its log lines.
FORKSERVER_NAME = "vessel-zygote"


def forkserver_default() -> bool:
    """On unless ``VESSEL_FORKSERVER`` is ``0``, ``no``, ``off`` or ``false``."""
    value = os.environ.get("VESSEL_FORKSERVER", "").strip().lower()
    return value not in ("0", "no", "off", "false")


@dataclass(frozen=True)
class DaemonConfig:
    data_dir: Path
    #: Install the example modules shipped with Vessel when the data dir is new
    #: (vessel/_bundled.py).
    install_bundled: bool = True
    bundled_dir: Path = field(default_factory=bundled_modules_dir)
    policy: SupervisionPolicy = field(default_factory=SupervisionPolicy)
    #: Start module processes from a pre-imported fork server (much faster, less
    #: memory); off, each is a fresh ``python -m vessel.host``. For debugging.
    forkserver: bool = field(default_factory=forkserver_default)
    #: Longest active wait for a module's answer, seconds (``vessel._active_wait``); 0: off.
    active_wait: float = DEFAULT_LIMIT
    #: Seconds a module stays quarantined to the box CPU after a trap or a crash
    #: (``vessel._cpu_box``).
    quarantine: float = QUARANTINE
    #: PEM files of certificates module processes trust for https:// and wss:// beside
    #: the usual CAs (``vessel serve --ca-file``; vessel/_tls.py).
    trusted_ca: tuple[Path, ...] = ()
    #: Compiles at once at most (``vessel._compiler``; None: one fewer than the CPUs).
    compile_jobs: int | None = None
    #: Seconds a module process may take to load, instantiate and run on-load.
    start_timeout: float = START_TIMEOUT
    #: ``open_daemon`` returns once every enabled module has started (or failed to);
    #: off, it returns at once and the modules start (and compile) in the background,
    #: as ``vessel serve`` does so that its gateway answers meanwhile.
    wait_for_modules: bool = True
    #: The most a manifest may raise each of its limits to (``vessel serve
    #: --limit-ceiling``; ``vessel._ceilings``); a module asking more is refused.
    limit_ceilings: Ceilings = field(default_factory=Ceilings)
    #: Start with a new, empty database when ``vessel.db`` is missing or empty in a data
    #: dir with installed modules (``vessel serve --reset-database``); otherwise that is
    #: refused, since their settings, storage and disabled state would be lost unsaid.
    reset_database: bool = False


@dataclass
class Daemon:
    config: DaemonConfig
    storage: Storage
    bus: EventBus
    supervisor: Supervisor
    manager: ModuleManager
    token: str
    forkserver: ForkServer | None = None
    #: Keeps Vessel's threads off the CPU where long guest work runs (vessel/_cpu_box.py).
    cpu_box: CpuBox | None = None
    #: Set once every enabled module has started, failed or been refused.
    modules_started: trio.Event = field(default_factory=trio.Event)
    #: The bundled module being built from source, if one is (vessel/_bundled.py).
    building: str | None = None


def token_path(data_dir: Path) -> Path:
    return data_dir / "token"


def ensure_token(data_dir: Path) -> str:
    """The admin token, created (mode 0600) on first start."""
    path = token_path(data_dir)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("created admin token in %s", path)
    return token


def installed_module_folders(modules: Path) -> list[str]:
    """The names of the module folders under ``modules`` (as discovery sees them: not
    the ``.staging-*``-style leftovers of installs), sorted."""
    try:
        return sorted(p.name for p in modules.iterdir() if p.is_dir() and p.name[0] != ".")
    except FileNotFoundError:
        return []


def _open_storage(config: DaemonConfig, *, ran_before: bool, installed: list[str]) -> Storage:
    """Open the database, refusing to start with a new, empty one where one was lost.

    A data dir a daemon has run in (it has a token) and that has installed modules keeps
    their settings, storage and which of them are disabled in ``vessel.db``; without it
    they would all start enabled and unconfigured, without a word. That is refused unless
    the admin says ``--reset-database``. A data dir the daemon has not run in (folders
    dropped into ``modules/`` by hand) starts with a new database, as does one with no
    module: nothing installed depends on it (docs/operations.md)."""
    path = database_path(config.data_dir)
    needed = ran_before and bool(installed) and not config.reset_database
    try:
        storage = Storage.open(path, create=not needed)
    except DatabaseMissing as exc:
        names = ", ".join(installed[:5]) + (", ..." if len(installed) > 5 else "")
        raise DataDirError(
            f"{exc}, but data dir {config.data_dir} has {len(installed)} installed "
            f"module(s) ({names}) whose settings, storage and enabled/disabled state were "
            f"kept in it; not starting without them. Restore {path.name} from a backup "
            '(docs/operations.md, "Backup and restore"), or, to start over with an empty '
            "database (no settings, no storage, every module enabled), run vessel serve "
            "once with --reset-database"
        ) from None
    if storage.created and ran_before and installed:
        log.warning(
            "started with a new, empty database %s (--reset-database): modules %s have "
            "no settings or storage, and every one of them is enabled (disable again "
            "those that were disabled: vessel-ctl disable ID)",
            path, ", ".join(installed),
        )  # fmt: skip
    elif storage.created and ran_before:
        log.warning(
            "database %s was missing or empty: started with a new one (no module is "
            "installed, so none lost its settings or state; storage kept for modules "
            "removed with vessel-ctl remove --keep-storage, if any, is gone)",
            path,
        )
    elif config.reset_database and not storage.created:
        log.warning(
            "--reset-database given, but database %s is intact: it was kept; drop the "
            "option (it only allows starting over when the database is missing or empty)",
            path,
        )
    return storage


def _check_writable(data_dir: Path) -> None:
    """Fail at start, with the data dir named, if it cannot take a write (read-only
    mount, wrong owner): otherwise the first symptom is some later write failing."""
    probe = data_dir / f".write-test-{os.getpid()}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    probe.unlink()


def launch_host_forkserver() -> ForkServerLaunch:
    """Start the module processes' fork server now, before trio runs, so that it imports
    while the caller still imports the rest of the daemon; pass it to ``open_daemon``."""
    return launch_forkserver(HOST_PRELOAD, name=FORKSERVER_NAME)


@asynccontextmanager
async def _open_forkserver(
    config: DaemonConfig, launched: ForkServerLaunch | None
) -> AsyncIterator[ForkServer | None]:
    if not config.forkserver:
        log.info("fork server disabled: each module process is a fresh interpreter")
        yield None
        return
    async with open_forkserver(HOST_PRELOAD, name=FORKSERVER_NAME, launched=launched) as forkserver:
        yield forkserver


@asynccontextmanager
async def open_daemon(
    config: DaemonConfig, *, forkserver: ForkServerLaunch | None = None
) -> AsyncIterator[Daemon]:
    """Start every enabled module; on exit stop them all (in reverse start order).

    ``forkserver``: the fork server started early with :func:`launch_host_forkserver`
    (otherwise, if ``config.forkserver``, one is started here).
    """
    data_dir = config.data_dir
    # First: a certificate file that cannot be used stops the start before anything runs.
    trusted_ca = load_trusted_certificates(config.trusted_ca)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_writable(data_dir)
        fresh = not modules_dir(data_dir).exists()
        # The database comes first, the token after it: a token is the sign that a
        # daemon has run here, and so that this data dir had a database.
        ran_before = token_path(data_dir).exists()
        installed = [] if fresh else installed_module_folders(modules_dir(data_dir))
        storage = _open_storage(config, ran_before=ran_before, installed=installed)
        #: Bundled modules carried as source only: built and installed once modules start.
        unbuilt: list[Path] = []
        try:
            token = ensure_token(data_dir)
            if fresh and config.install_bundled:
                modules_dir(data_dir).mkdir(parents=True)
                unbuilt = await trio.to_thread.run_sync(
                    install_prebuilt, data_dir, config.bundled_dir
                )
        except BaseException:
            storage.close()
            raise
    except OSError as exc:
        # Not "cannot listen on ...": the caller must learn it is the data dir.
        raise DataDirError(
            f"data dir {data_dir} is not usable: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename else "")
            + "; check that it exists, is writable by this user and is not on a read-only "
            "file system, or choose another with --data-dir / VESSEL_DATA_DIR"
        ) from None
    try:
        bus = EventBus()
        manager: ModuleManager | None = None

        def on_event(event: object) -> None:
            if manager is not None:
                manager.on_supervisor_event(event)  # type: ignore[arg-type]

        supervisor = Supervisor("modules", on_event=on_event)
        # Outside the supervisor's nursery: it outlives every module process, and it
        # preloads while the modules are discovered.
        # The logbook first: it outlives everything that logs, and writes the last lines.
        async with (
            open_logbook(logs_dir(data_dir)) as logbook,
            _open_forkserver(config, forkserver) as forkserver_in_use,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(supervisor.run)
            fs = forkserver_in_use
            box = CpuBox(
                lambda: manager.processes() if manager is not None else {},
                helpers=lambda: [fs.pid] if fs is not None and fs.pid is not None else [],
                quarantine=config.quarantine,
            )
            await nursery.start(box.run)
            nursery.start_soon(keep_trimmed)
            manager = ModuleManager(
                data_dir=data_dir,
                storage=storage,
                bus=bus,
                supervisor=supervisor,
                logbook=logbook,
                policy=config.policy,
                forkserver=forkserver_in_use,
                active_wait=config.active_wait,
                box=box,
                trusted_ca=trusted_ca,
                compiler=Compiler(config.compile_jobs),
                start_timeout=config.start_timeout,
                ceilings=config.limit_ceilings,
            )
            await nursery.start(manager.run)
            daemon = Daemon(
                config, storage, bus, supervisor, manager, token, forkserver_in_use, box
            )

            await manager.discover()

            def building(module_id: str | None) -> None:
                daemon.building = module_id

            async def start_all() -> None:
                async with trio.open_nursery() as starting:
                    starting.start_soon(manager.start_all)
                    if unbuilt:
                        starting.start_soon(
                            lambda: install_from_source(manager, unbuilt, building=building)
                        )
                daemon.modules_started.set()

            if config.wait_for_modules:
                await start_all()
            else:
                nursery.start_soon(start_all)
            yield daemon
            nursery.cancel_scope.cancel()
    finally:
        storage.close()
