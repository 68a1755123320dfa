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
from .._errors import ComponentError, TamperError
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


def load_component(
    engine: wasmtime.Engine,
    module_dir: Path,
    *,
    source_hash: str,
    module_id: str,
    settled_ns: int = SETTLED_NS,
) -> wc.Component:
    """Load the module's component without recompiling when a valid artifact exists.

    Deserializing native code is only safe for bytes we produced, so the artifact is used
    only when its record names this module's current hash and the artifact's own sha256
    matches; otherwise the component is compiled from module.wasm and the artifact rewritten
    (best effort: a data dir that cannot take it, a full disk, costs a warning, not the
    module).

    Hashing the artifact (~36 MB for a componentize-py guest) took about 25 ms of a 56 ms
    start. So once it has matched, and the artifact has been left alone for
    ``settled_ns``, the record also keeps the artifact's identity
    (``vessel._file_identity``); a start that finds the same identity uses the artifact
    without reading it first.
    """
    artifact, record = artifact_paths(module_dir)
    try:
        rec = msgspec.json.decode(record.read_bytes(), type=ArtifactRecord)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        rec = None
    if rec is not None and rec.key == artifact_key() and rec.source_hash == source_hash:
        try:
            identity: FileIdentity | None = FileIdentity.of(artifact.stat())
        except OSError:
            identity = None
        if identity is not None and identity == rec.verified:
            trusted = True
        else:
            try:
                actual = _sha256_file(artifact)
            except OSError:
                actual = ""
            if actual and actual != rec.sha256:
                raise TamperError(
                    f"module {module_id!r}: precompiled artifact {artifact.name} does not "
                    "match its recorded hash; delete the 'compiled' folder or reinstall the "
                    "module"
                )
            trusted = bool(actual)
            if trusted and identity is not None and identity.settled(settled_ns):
                _remember_verified(record, rec, identity)
        if trusted:
            component = wc.Component.deserialize_file(engine, str(artifact))
            check_world(engine, component, module_id=module_id)
            return component
    component = compile_component(engine, module_dir / "module.wasm", module_id=module_id)
    try:
        _store_artifact(component, module_dir, source_hash=source_hash)
    except OSError as exc:
        # The artifact is only a cache: a module must still start when it cannot be
        # written (a full disk after a wasmtime upgrade used to keep every module down).
        _log.warning(
            "module %r: compiled, but its compiled code could not be cached (%s): it "
            "compiles again at its next start",
            module_id,
            exc.strerror or exc,
        )
    return component


def _remember_verified(record: Path, rec: ArtifactRecord, identity: FileIdentity) -> None:
    """Best effort: a record that cannot be rewritten only costs the next start a hash."""
    try:
        write_atomic(record, msgspec.json.encode(msgspec.structs.replace(rec, verified=identity)))
    except OSError as exc:
        _log.debug("could not note the verified artifact in %s: %s", record, exc)
