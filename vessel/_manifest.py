"""What a module is: its manifest.json, parsed by a strict schema, and its tamper hash.

Every Struct forbids unknown fields, so a typo (``permisions``) is an error that names the
field instead of a permission silently left at its default. Structural rules (the id's
shape, the form of ``call`` entries) live in ``__post_init__`` so they hold for manifests
built in code too; policy about untrusted input (the reserved id, ``api_version``) lives
in ``parse_manifest``.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from ._atomic import write_atomic
from ._errors import ManifestError, TamperError
from ._file_identity import SETTLED_NS, FileIdentity
from ._json_check import depth_problem

#: The newest manifest ``api_version`` this host understands.
HOST_API_VERSION = 1

#: The built-in module's id; no installed module may take it.
RESERVED_IDS = frozenset({"vessel"})

MANIFEST_FILE = "manifest.json"
WASM_FILE = "module.wasm"
HASH_FILE = "manifest.hash"
#: The identities the files had when they last matched the hash (``load_module_dir``).
VERIFIED_FILE = "manifest.verified"

_log = logging.getLogger("vessel.manifest")

# Ids become folder names and URL path segments, so only a safe alphabet is allowed; this
# alone rules out traversal ("../x"), separators and hidden folders.
_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# module id "." dotted name "@" integer version
_CALL_RE = re.compile(
    r"([a-z0-9][a-z0-9-]{0,62})\.([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)@([0-9]{1,10})"
)
_HASH_RE = re.compile(r"[0-9a-f]{64}")
# Setting keys are config keys (REST path segments, storage keys), kept to a plain alphabet.
_SETTING_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,127}")
#: Settings a manifest may declare.
MAX_SETTINGS = 64
_MAX_PATTERN = 256
_U32_MAX = 2**32 - 1


def is_valid_module_id(module_id: str) -> bool:
    """True when ``module_id`` is a well-formed id (reserved ids included)."""
    return _ID_RE.fullmatch(module_id) is not None


def is_valid_setting_key(key: str) -> bool:
    """True when ``key`` may name a setting (and so a config key)."""
    return _SETTING_KEY_RE.fullmatch(key) is not None and not any(
        segment in (".", "..") for segment in key.split("/")
    )


#: Entries ``permissions.network.hosts`` may hold.
MAX_HOSTS = 64
#: ws and wss open the same kind of connection as http and https (an upgraded HTTP
#: request), so a destination names an origin whichever of the two a host function uses.
_SAME_ORIGIN = {"http": "http", "ws": "http", "https": "https", "wss": "https"}
_DEFAULT_PORT = {"http": 80, "https": 443}
_SETTING_REF_RE = re.compile(r"\{settings\.([^{}]*)\}")
_HOST_ENTRY_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)", re.DOTALL)
_AUTHORITY_RE = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>[^:]*))?")
_LABEL_RE = re.compile(r"\*|[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_HOSTS_EXAMPLE = '(for example "https://*.spotify.com", "ws://127.0.0.1:*" or "{settings.url}")'


@dataclass(frozen=True)
class HostPattern:
    """One allowed destination: a scheme (http or https, ws and wss folded in), a host
    (its labels, ``*`` for any one label, or one IP address) and a port (None: any)."""

    scheme: str
    host: tuple[str, ...]
    port: int | None

    def matches(self, scheme: str, host: str, port: int) -> bool:
        """True for a destination (scheme, host, port) as ``origin_of`` gives it."""
        if _SAME_ORIGIN.get(scheme) != self.scheme or self.port not in (None, port):
            return False
        labels = _host_labels(host)
        return len(labels) == len(self.host) and all(
            want in ("*", got) for want, got in zip(self.host, labels, strict=True)
        )

    def __str__(self) -> str:
        host = ".".join(self.host)
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{'*' if self.port is None else self.port}"


def _host_labels(host: str) -> tuple[str, ...]:
    """A host as compared: an IP address in its one canonical form, else lower-case DNS
    labels without the root's trailing dot (``Example.COM.`` is ``example.com``)."""
    try:
        return (str(ipaddress.ip_address(host.strip("[]"))),)
    except ValueError:
        return tuple(host.lower().removesuffix(".").split("."))


def origin_of(scheme: str, host: str, port: int | None) -> tuple[str, str, int]:
    """The destination a URL names: scheme, host as written, port (the scheme's default
    when the URL has none). An internationalised name is compared in its ASCII (punycode)
    form, the one the connection resolves; one that has none cannot match any entry."""
    scheme = scheme.lower()
    if not host.isascii():
        with contextlib.suppress(UnicodeError):
            host = host.encode("idna").decode("ascii")
    folded = _SAME_ORIGIN.get(scheme, scheme)
    return scheme, host, port if port is not None else _DEFAULT_PORT.get(folded, 0)


def setting_reference(entry: str) -> str | None:
    """The setting key of a ``{settings.key}`` hosts entry, else None."""
    match = _SETTING_REF_RE.fullmatch(entry)
    return match[1] if match else None


def parse_host_pattern(entry: str) -> HostPattern:
    """Parse a ``scheme://host[:port]`` hosts entry; ValueError says what is wrong."""
    match = _HOST_ENTRY_RE.fullmatch(entry)
    if match is None:
        raise ValueError(f"is not `scheme://host[:port]` or `{{settings.key}}` {_HOSTS_EXAMPLE}")
    scheme = match["scheme"].lower()
    if scheme not in _SAME_ORIGIN:
        raise ValueError(f"has scheme {match['scheme']!r}: use http, https, ws or wss")
    rest = match["rest"]
    if any(c in rest for c in "/?#@"):
        raise ValueError(
            f"may only name scheme://host[:port], without a path, query or user {_HOSTS_EXAMPLE}"
        )
    authority = _AUTHORITY_RE.fullmatch(rest)
    if authority is None or not authority["host"]:
        raise ValueError(f"has no host {_HOSTS_EXAMPLE}")
    host, port_text = authority["host"], authority["port"]
    port: int | None
    if port_text is None:
        port = _DEFAULT_PORT[_SAME_ORIGIN[scheme]]
    elif port_text == "*":
        port = None
    elif port_text.isdigit() and 1 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ValueError(f"has port {port_text!r}: use 1 to 65535, or * for any port")
    if host.startswith("["):
        try:
            labels: tuple[str, ...] = (str(ipaddress.IPv6Address(host[1:-1])),)
        except ValueError:
            raise ValueError(f"has host {host!r}, which is not an IPv6 address") from None
    else:
        labels = _host_labels(host)
        is_ip = len(labels) == 1 and ":" not in host and "." in labels[0] and labels[0][0].isdigit()
        if not is_ip and not all(_LABEL_RE.fullmatch(label) for label in labels):
            raise ValueError(
                f"has host {host!r}: use a DNS name (letters, digits, '-', and * for one "
                "whole label), an IPv4 address or an [IPv6] address"
            )
    return HostPattern(_SAME_ORIGIN[scheme], labels, port)


def setting_destination(value: str | None) -> HostPattern | None:
    """The exact origin (scheme, host, port) of a setting's URL value, or None when the
    value is unset or not such a URL (then it allows nothing)."""
    if not value:
        return None
    try:
        parts = urllib.parse.urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _SAME_ORIGIN or not parts.hostname:
        return None
    _, host, port = origin_of(scheme, parts.hostname, port)
    return HostPattern(_SAME_ORIGIN[scheme], _host_labels(host), port)


class NetworkPermissions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Outbound network access, all through capability-checked host functions."""

    http: bool = False
    websocket: bool = False
    tcp: bool = False
    #: The destinations http-fetch and websockets may reach; None (absent): any host.
    hosts: list[Annotated[str, Meta(max_length=_MAX_PATTERN)]] | None = None

    def __post_init__(self) -> None:
        if self.hosts is None:
            return
        if len(self.hosts) > MAX_HOSTS:
            raise ValueError(f"`hosts`: at most {MAX_HOSTS} entries")
        for i, entry in enumerate(self.hosts):
            if entry.startswith("{"):
                if setting_reference(entry) is None:
                    raise ValueError(
                        f"`hosts[{i}]` {entry!r} is not `{{settings.key}}` {_HOSTS_EXAMPLE}"
                    )
                continue
            try:
                parse_host_pattern(entry)
            except ValueError as exc:
                raise ValueError(f"`hosts[{i}]` {entry!r} {exc}") from None


class Permissions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a module may do. Everything not granted here is denied."""

    subscribe: list[str] = []
    call: list[str] = []
    network: NetworkPermissions = msgspec.field(default_factory=NetworkPermissions)
    storage: bool = False
    timers: bool = False

    def __post_init__(self) -> None:
        for i, pattern in enumerate(self.subscribe):
            if not pattern or len(pattern) > _MAX_PATTERN:
                raise ValueError(
                    f"`subscribe[{i}]` must be a glob of 1 to {_MAX_PATTERN} characters "
                    f'such as "system.window.*"'
                )
        for i, entry in enumerate(self.call):
            match = _CALL_RE.fullmatch(entry)
            if match is None or int(match[3]) > _U32_MAX:
                raise ValueError(
                    f"`call[{i}]` {entry!r} is not `module.name@version` "
                    '(for example "discord.voice.set_mute@1")'
                )


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Resource limits the host enforces on the module; the defaults suit most modules."""

    memory_mb: Annotated[int, Meta(ge=16, le=4096)] = 128
    invocation_timeout_ms: Annotated[int, Meta(ge=10, le=600_000)] = 5000
    storage_quota_kb: Annotated[int, Meta(ge=1, le=1_048_576)] = 1024
    max_timers: Annotated[int, Meta(ge=0, le=4096)] = 64
    max_websockets: Annotated[int, Meta(ge=0, le=256)] = 8
    max_event_rate: Annotated[int, Meta(ge=1, le=100_000)] = 200
    #: How long a caller waits for a command answered with defer-reply / complete-reply.
    reply_timeout_ms: Annotated[int, Meta(ge=100, le=600_000)] = 30_000
    #: Keys of retained state (``emit-retained``) the module may hold, and their size
    #: (UTF-8 name and data); past either, its own least recently updated key is forgotten.
    #: At most half the daemon's total (``vessel._bus``), so no one module can fill it.
    max_retained: Annotated[int, Meta(ge=1, le=10_000)] = 1000
    retained_kb: Annotated[int, Meta(ge=1, le=32_768)] = 1024


class Setting(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A key of the module's configuration that an admin sets (``settings``): what the
    dashboard's form and ``vessel-ctl config`` show. The module reads it with
    ``storage-get``; until it is set, ``storage-get`` answers the ``default``."""

    #: A short name for a form field ("Home Assistant URL"); the key when empty.
    label: Annotated[str, Meta(max_length=128)] = ""
    description: Annotated[str, Meta(max_length=1000)] = ""
    #: The value is a credential: masked wherever it is shown, a password field in forms.
    secret: bool = False
    #: The module cannot work until it is set (it is listed as missing until then).
    required: bool = False
    default: Annotated[str, Meta(max_length=4096)] | None = None


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A module's manifest.json."""

    id: str
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    version: Annotated[str, Meta(min_length=1, max_length=64)]
    api_version: Annotated[int, Meta(ge=1)]
    description: str = ""
    author: str = ""
    permissions: Permissions = msgspec.field(default_factory=Permissions)
    limits: Limits = msgspec.field(default_factory=Limits)
    #: The configuration keys an admin sets, in the order a form shows them.
    settings: dict[str, Setting] = {}

    def __post_init__(self) -> None:
        # Runs on decode and on construction in code; msgspec reports the ValueError as a
        # ValidationError at this struct's path.
        if not is_valid_module_id(self.id):
            raise ValueError(
                f"`id` {self.id!r} is not a valid module id: use 1 to 63 lowercase letters, "
                "digits and '-', starting with a letter or digit"
            )
        if len(self.settings) > MAX_SETTINGS:
            raise ValueError(f"`settings`: at most {MAX_SETTINGS} settings")
        for key, setting in self.settings.items():
            if not is_valid_setting_key(key):
                raise ValueError(
                    f"`settings`: setting key {key!r} is not valid: use 1 to 128 letters, "
                    "digits and '_', '-', '.', '/', with no '.' or '..' between slashes"
                )
            if setting.required and setting.default is not None:
                # A default makes a setting never missing: which did the author mean?
                raise ValueError(
                    f"`settings`: setting {key!r} is required and has a default; drop one"
                )
        for i, entry in enumerate(self.permissions.network.hosts or ()):
            ref = setting_reference(entry)
            if ref is not None and ref not in self.settings:
                raise ValueError(
                    f"`permissions.network.hosts[{i}]` {entry!r} names setting {ref!r}, "
                    "which `settings` does not declare"
                )


class _Peek(msgspec.Struct):
    """The two fields read before strict parsing, so a manifest from a newer host is told
    to upgrade Vessel rather than about fields this host does not know yet."""

    id: object = None
    api_version: object = None


_decoder = msgspec.json.Decoder(Manifest)
_peek_decoder = msgspec.json.Decoder(_Peek)

_AT_RE = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)
_TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "bool": "true or false",
    "object": "an object",
    "array": "an array",
    "float": "a number",
    "null": "null",
}


def _translate(exc: msgspec.ValidationError, root: str = "$") -> str:
    """Rewrite msgspec's wording into one that puts the field first; ``root`` is the path
    of what was validated (``$.settings.url`` for one setting)."""
    parts = _AT_RE.match(str(exc))
    assert parts is not None  # the pattern matches any string
    msg, path = parts["msg"], root + (parts["path"] or "$")[1:]
    where = "" if path == "$" else f" in `{path}`"
    if m := re.fullmatch(r"Object contains unknown field `(.+)`", msg):
        return f"unknown field `{m[1]}`{where}"
    if m := re.fullmatch(r"Object missing required field `(.+)`", msg):
        return f"missing required field `{m[1]}`{where}"
    if m := re.fullmatch(r"Expected `(\w+)` (of length )?([<>]=?) (\d+)", msg):
        what = f"{_TYPE_NAMES.get(m[1], m[1])} of length " if m[2] else ""
        return f"`{path}` must be {what}{m[3]} {m[4]}"
    if m := re.fullmatch(r"Expected `(\w+)(?: \| null)?`, got `(\w+)`", msg):
        return f"`{path}` must be {_TYPE_NAMES.get(m[1], m[1])}, got {_TYPE_NAMES.get(m[2], m[2])}"
    if m := re.fullmatch(r"`([^`]+)` (.*)", msg, re.DOTALL):
        # Raised by a __post_init__: the field is relative to the struct at `path`.
        return f"`{path}.{m[1]}` {m[2]}"
    return f"{msg}{where}"


def _setting_problem(data: bytes) -> str | None:
    """What is wrong with the first bad setting, at a path that names its key (msgspec's
    own path for a dict value is ``$.settings[...]``)."""
    settings = msgspec.json.decode(data).get("settings")
    for key, value in settings.items() if isinstance(settings, dict) else ():
        try:
            msgspec.convert(value, Setting)
        except msgspec.ValidationError as exc:
            return _translate(exc, root=f"$.settings.{key}")
    return None


def _refuse_newer_api(data: bytes, source: str) -> None:
    try:
        peek = _peek_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return  # the strict parse that follows reports what is wrong
    wanted = peek.api_version
    if isinstance(wanted, int) and wanted > HOST_API_VERSION:
        valid_id = isinstance(peek.id, str) and is_valid_module_id(peek.id)
        who = f"module {peek.id!r}" if valid_id else source
        raise ManifestError(
            f"{who} requires api_version {wanted} but this host supports "
            f"{HOST_API_VERSION}; upgrade Vessel"
        )


def parse_manifest(data: bytes, *, source: str) -> Manifest:
    """Parse and validate manifest.json bytes. ``source`` names them in errors
    (``"manifest.json of 'x'"``).

    Raises ManifestError naming the source and the field at fault.
    """
    if problem := depth_problem(data):
        raise ManifestError(f"{source}: {problem}")
    _refuse_newer_api(data, source)
    try:
        manifest = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        problem = _setting_problem(data) if "`$.settings[...]" in str(exc) else None
        raise ManifestError(f"{source}: {problem or _translate(exc)}") from None
    except msgspec.DecodeError as exc:
        raise ManifestError(f"{source}: not valid JSON: {exc}") from None
    if manifest.id in RESERVED_IDS:
        raise ManifestError(
            f"{source}: `$.id` {manifest.id!r} is reserved for the built-in module; choose "
            "another id"
        )
    return manifest


def compute_hash(manifest_bytes: bytes, wasm_bytes: bytes) -> str:
    """The tamper hash: sha256 hex over the manifest bytes, then the wasm bytes."""
    digest = hashlib.sha256(manifest_bytes)
    digest.update(wasm_bytes)
    return digest.hexdigest()


def hash_files(manifest_path: Path, wasm_path: Path) -> str:
    digest = hashlib.sha256(manifest_path.read_bytes())
    # Components are tens of MB: stream rather than hold a second copy in memory.
    with wasm_path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def hash_module_dir(module_dir: Path) -> str:
    """``compute_hash`` of the manifest.json and module.wasm in ``module_dir``."""
    return hash_files(module_dir / MANIFEST_FILE, module_dir / WASM_FILE)


def write_hash_file(module_dir: Path, digest: str) -> None:
    """Write manifest.hash durably: temp file, fsync, rename."""
    write_atomic(module_dir / HASH_FILE, (digest + "\n").encode("ascii"))


@dataclass(frozen=True)
class ModuleSource:
    """An installed module folder whose manifest parsed and whose bytes match its hash."""

    id: str
    dir: Path
    manifest: Manifest
    hash: str


def _read(path: Path, folder: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"module folder {folder!r} has no {path.name}") from None
    except OSError as exc:
        raise ManifestError(f"module folder {folder!r}: cannot read {path.name}: {exc}") from None


class VerifiedFiles(msgspec.Struct, forbid_unknown_fields=True):
    """manifest.verified: the identities manifest.json and module.wasm had when they last
    matched ``hash`` (see ``vessel._file_identity``)."""

    hash: str
    manifest: FileIdentity
    wasm: FileIdentity


def load_module_dir(module_dir: Path, *, settled_ns: int = SETTLED_NS) -> ModuleSource:
    """Load one installed module folder.

    Verifies manifest.hash when present (TamperError on mismatch). A folder without one
    was dropped in by hand: its hash is computed and written now (trust on first use).

    Hashing a ~19 MB component took ~14 ms per module at every daemon start and restart,
    so once the files have matched and been left alone for ``settled_ns``, their
    identities are kept in manifest.verified; a load that finds the same identities and
    the same manifest.hash skips the hash. Any write to either file changes its identity.
    """
    folder = module_dir.name
    manifest_path, wasm_path, hash_path = (
        module_dir / MANIFEST_FILE,
        module_dir / WASM_FILE,
        module_dir / HASH_FILE,
    )
    manifest_bytes = _read(manifest_path, folder)
    if not wasm_path.is_file():
        raise ManifestError(f"module folder {folder!r} has no {WASM_FILE}")
    try:
        expected: str | None = hash_path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        expected = None
    except (OSError, UnicodeDecodeError) as exc:
        raise TamperError(
            f"module {folder!r}: cannot read {HASH_FILE}: {exc}; reinstall it"
        ) from None
    identities = _identities(manifest_path, wasm_path)
    if (
        expected is not None
        and identities is not None
        and _remembered(module_dir) == (VerifiedFiles(expected, *identities))
    ):
        digest = expected
    else:
        # Checked before parsing, so an edited manifest reports tampering, not a typo.
        digest = hash_files(manifest_path, wasm_path)
        if expected is not None and expected != digest:
            shown = expected if _HASH_RE.fullmatch(expected) else "an unreadable value"
            raise TamperError(
                f"module {folder!r} was modified after install: hash mismatch (expected "
                f"{shown}, found {digest}); reinstall it"
            )
        if identities is not None and all(i.settled(settled_ns) for i in identities):
            _remember(module_dir, VerifiedFiles(digest, *identities))
    manifest = parse_manifest(manifest_bytes, source=f"{MANIFEST_FILE} of {folder!r}")
    if manifest.id != folder:
        raise ManifestError(
            f"module folder {folder!r} holds a manifest with id {manifest.id!r}; the folder "
            "name must equal the id: rename the folder or fix `$.id`"
        )
    if expected is None:
        write_hash_file(module_dir, digest)
        _log.info("module %r had no %s: trusting it on first use (%s)", folder, HASH_FILE, digest)
    return ModuleSource(id=manifest.id, dir=module_dir, manifest=manifest, hash=digest)


def _identities(*paths: Path) -> tuple[FileIdentity, ...] | None:
    try:
        return tuple(FileIdentity.of(path.stat()) for path in paths)
    except OSError:
        return None


def _remembered(module_dir: Path) -> VerifiedFiles | None:
    try:
        return msgspec.json.decode((module_dir / VERIFIED_FILE).read_bytes(), type=VerifiedFiles)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def _remember(module_dir: Path, verified: VerifiedFiles) -> None:
    """Best effort: a folder that cannot take it only costs the next load a hash."""
    try:
        write_atomic(module_dir / VERIFIED_FILE, msgspec.json.encode(verified))
    except OSError as exc:
        _log.debug("could not note the verified files of %s: %s", module_dir.name, exc)


@dataclass(frozen=True)
class Refusal:
    """A module folder discovery could not load, and why."""

    dir: Path
    module_id: str
    reason: str


def discover_modules(modules_dir: Path) -> tuple[list[ModuleSource], list[Refusal]]:
    """Load every module folder under ``modules_dir`` (sorted by name).

    Folders starting with "." (install staging, trash) and plain files are skipped. A
    broken module becomes a Refusal and does not stop the others.
    """
    try:
        entries = sorted(modules_dir.iterdir())
    except FileNotFoundError:
        return [], []
    sources: list[ModuleSource] = []
    refusals: list[Refusal] = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            sources.append(load_module_dir(entry))
        except (ManifestError, TamperError) as exc:
            refusals.append(Refusal(entry, entry.name, str(exc)))
        except OSError as exc:
            refusals.append(Refusal(entry, entry.name, f"module {entry.name!r}: {exc}"))
    return sources, refusals
