"""One engine configuration for every place that compiles or loads a component.

A precompiled artifact only loads into an engine with the same wasmtime version and
settings, so the artifact key is derived from both, and the artifact itself is covered by
the module's tamper hash (see ``load_component``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import platform
from pathlib import Path

import msgspec
import wasmtime
from wasmtime import component as wc

from .._atomic import write_atomic
from .._errors import ComponentError, NotCompiled, TamperError
from .._file_identity import SETTLED_NS, FileIdentity

_log = logging.getLogger("vessel.host")

#: The WIT interfaces this host speaks (wit/vessel-host.wit).
GUEST_INTERFACE = "vessel:host/guest@1.0.0"
HOST_INTERFACE = "vessel:host/host@1.0.0"
TYPES_INTERFACE = "vessel:host/types@1.0.0"

#: Exports a component must have to be a Vessel module. ``on-websocket-closed`` is an
#: extension of 1.0.0 and optional, so components built against the original contract load.
REQUIRED_EXPORTS = frozenset(
    {"on-load", "on-unload", "on-event", "on-command", "on-timer", "on-websocket-message"}
)
OPTIONAL_EXPORTS = frozenset({"on-websocket-closed"})

#: How often the epoch advances; invocation deadlines are counted in these ticks.
EPOCH_TICK_SECONDS = 0.01

_WASMTIME_VERSION = importlib.metadata.version("wasmtime")


def make_engine() -> wasmtime.Engine:
    """The engine every module process uses: epoch interruption on, so each guest
    invocation can be given a deadline."""
    config = wasmtime.Config()
    config.epoch_interruption = True
    return wasmtime.Engine(config)


def artifact_key() -> str:
    """Names a precompiled artifact by everything that must match for it to load."""
    return f"wasmtime-{_WASMTIME_VERSION}-{platform.machine()}-epoch"


class ArtifactRecord(msgspec.Struct, forbid_unknown_fields=True):
    """Written beside a precompiled artifact: what it was compiled from and its own hash."""

    key: str
    source_hash: str
    sha256: str
    #: The artifact's identity when its sha256 was last found right: while it still has
    #: it, the bytes are the ones checked and a start need not read them all again.
    verified: FileIdentity | None = None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_paths(module_dir: Path) -> tuple[Path, Path]:
    """(artifact, record) paths for this host's artifact key inside ``module_dir``."""
    # Not with_suffix: the key contains dots ("wasmtime-50.0.1-...").
    folder, key = module_dir / "compiled", artifact_key()
    return folder / f"{key}.cwasm", folder / f"{key}.json"


def check_world(engine: wasmtime.Engine, component: wc.Component, *, module_id: str) -> None:
    """Refuse a component that does not export the guest interface this host calls."""
    exports = component.type.exports(engine)
    guest = exports.get(GUEST_INTERFACE)
    if guest is None:
        found = ", ".join(sorted(exports)) or "nothing"
        raise ComponentError(
            f"module {module_id!r}: component does not match the vessel-module world: "
            f"it does not export {GUEST_INTERFACE} (it exports {found})"
        )
    names = set(guest.ty.exports(engine))  # type: ignore[union-attr]
    missing = sorted(REQUIRED_EXPORTS - names)
    if missing:
        raise ComponentError(
            f"module {module_id!r}: component does not match the vessel-module world: "
            f"{GUEST_INTERFACE} lacks {', '.join(missing)}"
        )


def compile_component(engine: wasmtime.Engine, wasm_path: Path, *, module_id: str) -> wc.Component:
    """Compile ``wasm_path``, translating wasmtime's errors into one that names the module."""
    try:
        component = wc.Component.from_file(engine, str(wasm_path))
    except wasmtime.WasmtimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ComponentError(
            f"module {module_id!r}: module.wasm is not a valid WebAssembly component: {first}"
        ) from None
    check_world(engine, component, module_id=module_id)
    return component


def _store_artifact(component: wc.Component, module_dir: Path, *, source_hash: str) -> None:
    artifact, record = artifact_paths(module_dir)
    data = bytes(component.serialize())
    write_atomic(artifact, data)
    rec = ArtifactRecord(
        key=artifact_key(), source_hash=source_hash, sha256=hashlib.sha256(data).hexdigest()
    )
    write_atomic(record, msgspec.json.encode(rec))


def precompile(
    engine: wasmtime.Engine, module_dir: Path, *, source_hash: str, module_id: str
) -> wc.Component:
    """Compile module.wasm and store the artifact (with its record) for later starts."""
    component = compile_component(engine, module_dir / "module.wasm", module_id=module_id)
    _store_artifact(component, module_dir, source_hash=source_hash)
    return component


def _record(module_dir: Path, source_hash: str) -> ArtifactRecord | None:
    """The artifact record, if it is this host's and names ``source_hash``."""
    _artifact, record = artifact_paths(module_dir)
    try:
        rec = msgspec.json.decode(record.read_bytes(), type=ArtifactRecord)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if rec.key != artifact_key() or rec.source_hash != source_hash:
        return None  # made by another wasmtime or Vessel, or for other bytes: stale
    return rec


def artifact_is_current(module_dir: Path, source_hash: str) -> bool:
    """Whether the module has compiled code this host can load for ``source_hash``
    (whether its bytes are still right is checked when it is loaded)."""
    artifact, _ = artifact_paths(module_dir)
    return _record(module_dir, source_hash) is not None and artifact.is_file()


def load_component(
    engine: wasmtime.Engine,
    module_dir: Path,
    *,
    source_hash: str,
    module_id: str,
    settled_ns: int = SETTLED_NS,
    compile_if_missing: bool = False,
) -> wc.Component:
    """Load the module's compiled component; never compile (``vessel.host._compile``
    does, in a short-lived process, before the module starts), unless
    ``compile_if_missing``: the daemon could not store the artifact (a full disk), and a
    module that runs with a compiler's memory is better than none.

    Deserializing native code is only safe for bytes we produced, so the artifact is used
    only when its record names this module's current hash and the artifact's own sha256
    matches (TamperError otherwise); without a current artifact the module cannot start
    (NotCompiled).

    Hashing the artifact (~36 MB for a componentize-py guest) took about 25 ms of a 56 ms
    start. So once it has matched, and the artifact has been left alone for
    ``settled_ns``, the record also keeps the artifact's identity
    (``vessel._file_identity``); a start that finds the same identity uses the artifact
    without reading it first.
    """
    artifact, record = artifact_paths(module_dir)
    rec = _record(module_dir, source_hash)
    try:
        identity: FileIdentity | None = FileIdentity.of(artifact.stat())
    except OSError:
        identity = None
    if (rec is None or identity is None) and compile_if_missing:
        return compile_component(engine, module_dir / "module.wasm", module_id=module_id)
    if rec is None or identity is None:
        raise NotCompiled(
            f"module {module_id!r} has no compiled code for this version of Vessel "
            f"({artifact_key()}); it is compiled before it starts: restart it"
        )
    if identity != rec.verified:
        try:
            actual = _sha256_file(artifact)
        except OSError as exc:
            raise NotCompiled(
                f"module {module_id!r}: its compiled code cannot be read: {exc.strerror or exc}"
            ) from None
        if actual != rec.sha256:
            raise TamperError(
                f"module {module_id!r}: precompiled artifact {artifact.name} does not "
                "match its recorded hash; delete the 'compiled' folder or reinstall the "
                "module"
            )
        if identity.settled(settled_ns):
            _remember_verified(record, rec, identity)
    component = wc.Component.deserialize_file(engine, str(artifact))
    check_world(engine, component, module_id=module_id)
    return component


def _remember_verified(record: Path, rec: ArtifactRecord, identity: FileIdentity) -> None:
    """Best effort: a record that cannot be rewritten only costs the next start a hash."""
    try:
        write_atomic(record, msgspec.json.encode(msgspec.structs.replace(rec, verified=identity)))
    except OSError as exc:
        _log.debug("could not note the verified artifact in %s: %s", record, exc)
