"""Vessel's exception tree.

Every error a user can see names the thing at fault (a module id, a manifest field, a
file) and, where there is one, the setting to change.
"""

from __future__ import annotations


class VesselError(Exception):
    """Base class of every error Vessel raises on purpose."""


class DataDirError(VesselError):
    """The data dir cannot be created, written or read: the daemon cannot start."""


class TrustError(VesselError):
    """A certificate file given to ``vessel serve --ca-file`` cannot be used: the daemon
    does not start (the message names the file and the problem)."""


class ManifestError(VesselError):
    """A module's manifest.json is missing, malformed, or asks for what the host cannot give.

    Raised at discovery and install. The module is refused; fix the manifest (the message
    names the field) and install again.
    """


class AlreadyInstalled(ManifestError):
    """An install named a module id that is installed already and did not ask to replace it."""


class LimitAboveCeiling(ManifestError):
    """A manifest asks for a limit above the daemon's ceiling for it (``vessel serve
    --limit-ceiling``; ``vessel._ceilings``): the module is refused at install and at
    start, and the message names the limit, the value asked, the ceiling and the flag."""


class TamperError(VesselError):
    """The bytes of an installed module no longer match the hash written at install.

    The module is refused. Reinstall it from a trusted source.
    """


class ComponentError(VesselError):
    """The module.wasm is not a WebAssembly component, or does not implement the
    ``vessel:host/vessel-module`` world this host speaks."""


class NotCompiled(ComponentError):
    """A module has no compiled code this host can load (never compiled, or compiled by
    another version of wasmtime or Vessel). The daemon compiles a module before it starts
    it (``vessel._compiler``); a module process that meets this only loads."""


class CapabilityDenied(VesselError):
    """A module used a host function its manifest does not grant.

    The message always starts with ``capability denied:`` and is returned to the guest as
    the error of the host call; the module keeps running.
    """


class UnknownSetting(VesselError):
    """A config key that the module's manifest does not declare among its ``settings``
    (a typo, most likely): refused, and the message lists the module's settings."""


class StorageError(VesselError):
    """A module's storage operation failed (quota exceeded, key too long, database error)."""


class QuotaExceeded(StorageError):
    """A ``storage-set`` would take the module's namespace past its quota."""


class DatabaseMissing(StorageError):
    """The database file is missing, or holds no Vessel data (zero bytes, no schema),
    where it was expected: ``Storage.open(..., create=False)``. ``reason`` is
    ``"missing"`` or ``"empty"``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class DiskWriteError(StorageError):
    """Writing to the data dir failed for a reason outside the request: its file system
    is full (or over quota), read-only or failing. The message names the cause (``No
    space left on device``, ``database or disk is full``). Nothing of that write was kept
    and everything acknowledged before is intact: free space and retry.
    """


class ArtifactNotStored(DiskWriteError):
    """A module was compiled, but its compiled code could not be written to the data dir
    (a full disk, most likely). An install is refused; an installed module still runs,
    compiling in its own process at each start, until there is room again."""


class UnknownModule(VesselError):
    """A call or admin request named a module id that is not installed."""


class ModuleUnavailable(VesselError):
    """The module is installed but not running (stopped, restarting, failed or disabled)."""


class CallError(VesselError):
    """A call to a module failed. ``code`` is one of the stable protocol error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidEvent(VesselError):
    """An event was refused at the bus: its ``data`` is not JSON text or its name is empty.

    Nothing was published. The emitter (a module's ``emit``, a client) gets this message.
    """
