"""manifest.json: the strict schema, its error messages, the tamper hash, discovery."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vessel._errors import ManifestError, TamperError
from vessel._file_identity import FileIdentity
from vessel._manifest import (
    HOST_API_VERSION,
    Limits,
    Manifest,
    NetworkPermissions,
    Permissions,
    VerifiedFiles,
    compute_hash,
    discover_modules,
    hash_module_dir,
    load_module_dir,
    parse_manifest,
)

SOURCE = "manifest.json of 'x'"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "manifest.md"


def manifest_dict(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "x", "name": "X", "version": "1.0.0", "api_version": 1}
    base.update(overrides)
    return base


def parse(doc: dict[str, Any]) -> Manifest:
    return parse_manifest(json.dumps(doc).encode(), source=SOURCE)


def parse_error(doc: dict[str, Any] | bytes) -> str:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, source=SOURCE)
    return str(info.value)


def make_module(root: Path, module_id: str, wasm: bytes = b"\0asm-fake", **fields: Any) -> Path:
    folder = root / module_id
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest_dict(id=module_id, **fields)))
    (folder / "module.wasm").write_bytes(wasm)
    return folder


# ── schema ───────────────────────────────────────────────────────────────────


def test_minimal_manifest_denies_everything_and_uses_default_limits() -> None:
    """A manifest that declares no permissions gets none, and the documented limits."""
    m = parse(manifest_dict())
    assert m.permissions == Permissions()
    assert m.permissions.subscribe == []
    assert m.permissions.call == []
    assert m.permissions.network == NetworkPermissions(http=False, websocket=False, tcp=False)
    assert (m.permissions.storage, m.permissions.timers) == (False, False)
    assert m.limits == Limits(
        memory_mb=128,
        invocation_timeout_ms=5000,
        storage_quota_kb=1024,
        max_timers=64,
        max_websockets=8,
        max_event_rate=200,
    )
    assert (m.description, m.author) == ("", "")


def test_the_example_in_the_docs_parses() -> None:
    """Every JSON manifest shown in docs/manifest.md is accepted by the real parser."""
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert blocks, "docs/manifest.md shows no manifest"
    for block in blocks:
        m = parse_manifest(block.encode(), source="docs/manifest.md")
        assert m.api_version == HOST_API_VERSION


def test_seed_home_assistant_manifest_parses() -> None:
    """The original plan's Home Assistant manifest is valid as written."""
    doc = {
        "id": "home-assistant",
        "name": "Home Assistant",
        "version": "0.1.0",
        "api_version": 1,
        "description": "Home Assistant integration",
        "permissions": {
            "subscribe": ["system.window.*"],
            "call": [],
            "network": {"http": False, "websocket": True, "tcp": False},
            "storage": True,
            "timers": True,
        },
    }
    m = parse(doc)
    assert m.permissions.network.websocket
    assert m.permissions.subscribe == ["system.window.*"]


def test_unknown_top_level_field_is_named() -> None:
    """A typo is an error naming the field, not a permission silently left off."""
    assert parse_error(manifest_dict(permisions={})) == (
        "manifest.json of 'x': unknown field `permisions`"
    )


def test_unknown_nested_field_is_named_with_its_path() -> None:
    """Typos inside nested objects say where they are."""
    msg = parse_error(manifest_dict(permissions={"network": {"htp": True}}))
    assert msg == "manifest.json of 'x': unknown field `htp` in `$.permissions.network`"
    msg = parse_error(manifest_dict(limits={"memory": 64}))
    assert msg == "manifest.json of 'x': unknown field `memory` in `$.limits`"


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [
        ("memory_mb", 16, 4096),
        ("invocation_timeout_ms", 10, 600_000),
        ("storage_quota_kb", 1, 1_048_576),
        ("max_timers", 0, 4096),
        ("max_websockets", 0, 256),
        ("max_event_rate", 1, 100_000),
    ],
)
def test_limits_are_range_checked(field: str, low: int, high: int) -> None:
    """Each limit accepts its documented range and names the bound it broke."""
    assert getattr(parse(manifest_dict(limits={field: low})).limits, field) == low
    assert getattr(parse(manifest_dict(limits={field: high})).limits, field) == high
    assert parse_error(manifest_dict(limits={field: low - 1})) == (
        f"manifest.json of 'x': `$.limits.{field}` must be >= {low}"
    )
    assert parse_error(manifest_dict(limits={field: high + 1})) == (
        f"manifest.json of 'x': `$.limits.{field}` must be <= {high}"
    )


@pytest.mark.parametrize(
    "bad_id", ["../x", "..", "X", "", "-a", "a/b", "a" * 64, "a.b", "a b", "é", "a\n", "a_b"]
)
def test_bad_module_id_is_refused(bad_id: str) -> None:
    """The id becomes a folder name and a URL segment: only [a-z0-9-], no traversal."""
    msg = parse_error(manifest_dict(id=bad_id))
    assert msg.startswith(f"manifest.json of 'x': `$.id` {bad_id!r} is not a valid module id")


@pytest.mark.parametrize("good_id", ["a", "0", "home-assistant", "a" * 63, "a-"])
def test_good_module_ids_are_accepted(good_id: str) -> None:
    """Lowercase letters, digits and '-' up to 63 characters make an id."""
    assert parse(manifest_dict(id=good_id)).id == good_id


def test_the_builtin_id_is_reserved() -> None:
    """No installed module can pose as the built-in `vessel` module."""
    assert parse_error(manifest_dict(id="vessel")) == (
        "manifest.json of 'x': `$.id` 'vessel' is reserved for the built-in module; "
        "choose another id"
    )


def test_builtin_manifest_can_still_be_built_in_code() -> None:
    """The reserved-id rule is for untrusted input; the daemon may describe itself."""
    assert Manifest(id="vessel", name="Vessel", version="1", api_version=1).id == "vessel"


def test_bad_id_in_code_is_also_refused() -> None:
    """The id's shape holds for manifests built in code, not only parsed ones."""
    with pytest.raises(ValueError, match="not a valid module id"):
        Manifest(id="../x", name="X", version="1", api_version=1)


@pytest.mark.parametrize(
    "entry",
    [
        "b.ping",
        "b@1",
        "b.ping@x",
        "B.ping@1",
        "b.ping@-1",
        "b..ping@1",
        "b.ping.@1",
        "b.ping@1.0",
        "b.ping@99999999999",
        "b.ping@4294967296",
        ".ping@1",
        "b.pi ng@1",
    ],
)
def test_malformed_call_entry_is_refused(entry: str) -> None:
    """Each `call` entry is `module.name@version` with an integer version."""
    msg = parse_error(manifest_dict(permissions={"call": ["a.ok@1", entry]}))
    assert msg == (
        f"manifest.json of 'x': `$.permissions.call[1]` {entry!r} is not "
        '`module.name@version` (for example "discord.voice.set_mute@1")'
    )


@pytest.mark.parametrize("entry", ["b.ping@1", "discord.voice.set_mute@1", "b.x@4294967295"])
def test_well_formed_call_entries_are_kept(entry: str) -> None:
    """Module id, dotted name, u32 version: the form the host checks calls against."""
    assert parse(manifest_dict(permissions={"call": [entry]})).permissions.call == [entry]


def test_empty_subscribe_glob_is_refused() -> None:
    """An empty subscription pattern is a mistake, named with its index."""
    msg = parse_error(manifest_dict(permissions={"subscribe": ["a.*", ""]}))
    assert msg.startswith("manifest.json of 'x': `$.permissions.subscribe[1]` must be a glob")


def test_newer_api_version_is_refused_with_upgrade_advice() -> None:
    """A module built for a newer host is told to upgrade Vessel, even if it also uses
    fields this host does not know yet."""
    doc = manifest_dict(api_version=2, new_feature={"x": 1})
    assert parse_error(doc) == (
        "module 'x' requires api_version 2 but this host supports 1; upgrade Vessel"
    )


def test_newer_api_version_with_a_bad_id_names_the_source() -> None:
    """The upgrade message never echoes an unvalidated id; it names the file instead."""
    doc = manifest_dict(id="../" + "x" * 500, api_version=7)
    assert parse_error(doc) == (
        "manifest.json of 'x' requires api_version 7 but this host supports 1; upgrade Vessel"
    )


def test_api_version_must_be_positive() -> None:
    """api_version counts from 1."""
    assert parse_error(manifest_dict(api_version=0)) == (
        "manifest.json of 'x': `$.api_version` must be >= 1"
    )


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (manifest_dict(id=5), "`$.id` must be a string, got an integer"),
        (manifest_dict(api_version="1"), "`$.api_version` must be an integer, got a string"),
        (
            manifest_dict(permissions={"storage": "yes"}),
            "`$.permissions.storage` must be true or false, got a string",
        ),
        (manifest_dict(permissions={"call": "b.ping@1"}), "`$.permissions.call` must be an array"),
        (manifest_dict(name=""), "`$.name` must be a string of length >= 1"),
        ({"id": "x"}, "missing required field `name`"),
    ],
)
def test_wrong_types_name_the_field(doc: dict[str, Any], expected: str) -> None:
    """Type errors say which field and what it should be."""
    assert expected in parse_error(doc)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1]", "`$` must be an object, got an array"),
    ],
)
def test_not_json_or_not_an_object(data: bytes, expected: str) -> None:
    """Garbage gives a ManifestError naming the source, not a decoder traceback."""
    msg = parse_error(data)
    assert msg.startswith(SOURCE)
    assert expected in msg


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_other_errors(data: bytes) -> None:
    """Whatever the bytes, the result is a Manifest or a ManifestError naming the source."""
    try:
        parse_manifest(data, source=SOURCE)
    except ManifestError as exc:
        message = str(exc)
    else:
        return
    assert message.startswith((SOURCE, "module "))


_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5000)
    | st.sampled_from(["", "x", "a.*", "b.c@1", "../x", "vessel"])
)
_json = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=2)
        | st.dictionaries(st.sampled_from(["http", "storage", "memory_mb", "call", "x"]), inner)
    ),
    max_leaves=4,
)
_fields = st.sampled_from(
    ["id", "name", "version", "api_version", "permissions", "limits", "description", "extra"]
)


@settings(deadline=None)
@given(st.dictionaries(_fields, _json, max_size=3))
def test_arbitrary_json_objects_give_manifest_or_manifest_error(
    overrides: dict[str, Any],
) -> None:
    """Structured junk in any field of a valid manifest yields a Manifest or a
    ManifestError, never another exception."""
    doc = manifest_dict(**overrides)
    try:
        m = parse(doc)
    except ManifestError as exc:
        message = str(exc)
    else:
        assert m.id == doc["id"]
        return
    assert message.startswith((SOURCE, "module "))


# ── hash ─────────────────────────────────────────────────────────────────────


def test_hash_is_sha256_of_manifest_then_wasm(tmp_path: Path) -> None:
    """The tamper hash covers exactly the manifest bytes followed by the wasm bytes."""
    manifest, wasm = b'{"a": 1}', b"\0asm" + bytes(range(256)) * 5000
    expected = hashlib.sha256(manifest + wasm).hexdigest()
    assert compute_hash(manifest, wasm) == expected
    (tmp_path / "manifest.json").write_bytes(manifest)
    (tmp_path / "module.wasm").write_bytes(wasm)
    assert hash_module_dir(tmp_path) == expected


def test_hand_dropped_module_is_trusted_on_first_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder without manifest.hash gets one written, with an INFO log saying so."""
    folder = make_module(tmp_path, "x")
    with caplog.at_level(logging.INFO, logger="vessel.manifest"):
        src = load_module_dir(folder)
    assert (folder / "manifest.hash").read_text().strip() == src.hash == hash_module_dir(folder)
    assert any("trusting it on first use" in r.getMessage() for r in caplog.records)
    assert (src.id, src.dir, src.manifest.id) == ("x", folder, "x")
    assert load_module_dir(folder).hash == src.hash


@pytest.mark.parametrize("changed", ["module.wasm", "manifest.json"])
def test_modified_module_is_refused_as_tampered(tmp_path: Path, changed: str) -> None:
    """Changing either file after the hash was written is detected at load."""
    folder = make_module(tmp_path, "x")
    old = load_module_dir(folder).hash
    with (folder / changed).open("ab") as f:
        f.write(b" ")
    new = hash_module_dir(folder)
    with pytest.raises(TamperError) as info:
        load_module_dir(folder)
    assert str(info.value) == (
        f"module 'x' was modified after install: hash mismatch (expected {old}, found {new}); "
        "reinstall it"
    )


@pytest.mark.parametrize("changed", ["module.wasm", "manifest.json"])
def test_checked_files_are_remembered_until_they_change(tmp_path: Path, changed: str) -> None:
    """Once the files matched their hash and were left alone, their identities are kept
    in manifest.verified and later loads trust them; a write to either file changes its
    identity, so the change is still found, with the same message as without."""
    folder = make_module(tmp_path, "x")
    first = load_module_dir(folder, settled_ns=0)  # trust on first use writes the hash
    verified = msgspec.json.decode((folder / "manifest.verified").read_bytes(), type=VerifiedFiles)
    assert verified.hash == first.hash
    assert verified.wasm == FileIdentity.of((folder / "module.wasm").stat())
    assert load_module_dir(folder, settled_ns=0).hash == first.hash
    with (folder / changed).open("r+b") as f:  # same size, other bytes
        data = f.read()
        f.seek(0)
        f.write(data[:-1] + bytes([data[-1] ^ 0x01]))
    new = hash_module_dir(folder)
    with pytest.raises(TamperError) as info:
        load_module_dir(folder, settled_ns=0)
    assert str(info.value) == (
        f"module 'x' was modified after install: hash mismatch (expected {first.hash}, "
        f"found {new}); reinstall it"
    )


def test_freshly_written_files_are_not_remembered(tmp_path: Path) -> None:
    """Files written moments ago are hashed at every load: their times may not yet tell a
    write in the same tick of the file system's clock apart."""
    folder = make_module(tmp_path, "x")
    load_module_dir(folder)
    load_module_dir(folder)
    assert not (folder / "manifest.verified").exists()


def test_a_stale_verified_record_only_costs_a_hash(tmp_path: Path) -> None:
    """A manifest.verified that no longer fits (another hash, garbage) is ignored: the
    files are hashed, and if they match the record is written afresh."""
    folder = make_module(tmp_path, "x")
    src = load_module_dir(folder, settled_ns=0)
    (folder / "manifest.verified").write_text("garbage")
    assert load_module_dir(folder, settled_ns=0).hash == src.hash
    verified = msgspec.json.decode((folder / "manifest.verified").read_bytes(), type=VerifiedFiles)
    assert verified.hash == src.hash


def test_garbage_hash_file_is_tampering(tmp_path: Path) -> None:
    """An unreadable manifest.hash is not trusted and not silently rewritten."""
    folder = make_module(tmp_path, "x")
    (folder / "manifest.hash").write_text("not a hash")
    with pytest.raises(TamperError, match="expected an unreadable value"):
        load_module_dir(folder)
    assert (folder / "manifest.hash").read_text() == "not a hash"


@pytest.mark.parametrize("missing", ["manifest.json", "module.wasm"])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    """A module folder lacking a file says which one."""
    folder = make_module(tmp_path, "x")
    (folder / missing).unlink()
    with pytest.raises(ManifestError) as info:
        load_module_dir(folder)
    assert str(info.value) == f"module folder 'x' has no {missing}"


def test_folder_name_must_equal_id(tmp_path: Path) -> None:
    """The id in the manifest and the folder it lives in agree (paths derive from the id)."""
    folder = make_module(tmp_path, "x")
    renamed = folder.rename(tmp_path / "y")
    with pytest.raises(ManifestError, match="folder 'y' holds a manifest with id 'x'"):
        load_module_dir(renamed)


def test_invalid_manifest_in_folder_names_the_folder_and_field(tmp_path: Path) -> None:
    """Errors from a module folder say which module's manifest.json is wrong."""
    folder = make_module(tmp_path, "x", limits={"memory_mb": 1})
    with pytest.raises(ManifestError) as info:
        load_module_dir(folder)
    assert str(info.value) == "manifest.json of 'x': `$.limits.memory_mb` must be >= 16"


# ── discovery ────────────────────────────────────────────────────────────────


def test_discovery_loads_good_modules_and_refuses_broken_ones(tmp_path: Path) -> None:
    """One broken module does not stop the others; each refusal says why; hidden
    folders (install staging) and plain files are skipped; order is by name."""
    modules = tmp_path / "modules"
    make_module(modules, "c")
    make_module(modules, "a")
    make_module(modules, "b", api_version=2)
    tampered = make_module(modules, "d")
    load_module_dir(tampered)
    (tampered / "module.wasm").write_bytes(b"evil")
    (modules / "e").mkdir()
    make_module(modules, ".staging-123")
    (modules / "notes.txt").write_text("hi")
    sources, refusals = discover_modules(modules)
    assert [s.id for s in sources] == ["a", "c"]
    assert [(r.module_id, r.dir) for r in refusals] == [
        ("b", modules / "b"),
        ("d", modules / "d"),
        ("e", modules / "e"),
    ]
    reasons = [r.reason for r in refusals]
    assert "requires api_version 2" in reasons[0]
    assert "was modified after install" in reasons[1]
    assert reasons[2] == "module folder 'e' has no manifest.json"


def test_discovery_of_missing_folder_is_empty(tmp_path: Path) -> None:
    """A fresh data dir without a modules folder simply has no modules."""
    assert discover_modules(tmp_path / "nope") == ([], [])


def test_manifest_round_trips_through_msgspec() -> None:
    """The parsed manifest encodes back to JSON that parses to the same value (the REST
    API serves it)."""
    m = parse(manifest_dict(permissions={"subscribe": ["a.*"], "call": ["b.c@2"]}))
    assert parse_manifest(msgspec.json.encode(m), source=SOURCE) == m


# ── settings ─────────────────────────────────────────────────────────────────


def test_settings_describe_what_an_admin_configures() -> None:
    """``settings`` names the keys an admin sets (the UI's form, ``vessel-ctl config``):
    a label, a description, whether it is secret or required, and a default."""
    m = parse(
        manifest_dict(
            settings={
                "url": {"label": "Server URL", "description": "Where it lives.",
                        "default": "ws://server.local/ws"},
                "token": {"label": "Access token", "secret": True, "required": True},
                "ha/interval_ms": {},
            }
        )
    )  # fmt: skip
    url, token, interval = m.settings["url"], m.settings["token"], m.settings["ha/interval_ms"]
    assert (url.label, url.description, url.default) == ("Server URL", "Where it lives.",
                                                         "ws://server.local/ws")  # fmt: skip
    assert (url.secret, url.required) == (False, False)
    assert (token.secret, token.required, token.default) == (True, True, None)
    assert (interval.label, interval.description) == ("", "")
    assert list(m.settings) == ["url", "token", "ha/interval_ms"]  # the order given
    assert parse(manifest_dict()).settings == {}


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"": {}}, "setting key '' is not valid"),
        ({"a b": {}}, "setting key 'a b' is not valid"),
        ({"../x": {}}, "setting key '../x' is not valid"),
        ({"x" * 129: {}}, "is not valid"),
        ({"url": {"lable": "URL"}}, "unknown field `lable` in `$.settings.url`"),
        ({"url": {"secret": "yes"}}, "`$.settings.url.secret` must be true or false"),
        ({"url": {"label": "x" * 129}}, "`$.settings.url.label` must be a string of length"),
        ({"url": "ws://x"}, "`$.settings.url` must be an object, got a string"),
        ({"token": {"required": True, "default": "t"}}, "setting 'token' is required and has "
                                                        "a default"),
        ({f"k{i}": {} for i in range(65)}, "at most 64 settings"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_naming_the_problem(
    settings: dict[str, Any], expected: str
) -> None:
    assert expected in parse_error(manifest_dict(settings=settings))
