"""vessel._toolchain: building module folders into components, with a cache."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import wasmtime
from wasmtime import component as wc

from vessel._errors import VesselError
from vessel._toolchain import BuildError, build_module
from vessel.host._engine import GUEST_INTERFACE, REQUIRED_EXPORTS, make_engine

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "modules" / "example"
BROKEN = REPO / "tests" / "guests" / "broken"


def _guest_exports(engine: wasmtime.Engine, component: wc.Component) -> set[str]:
    guest = component.type.exports(engine)[GUEST_INTERFACE].ty
    assert isinstance(guest, wc.ComponentInstanceType)
    return set(guest.exports(engine))


def _is_component(wasm: Path) -> bool:
    """The binary header of a component (not a core module): magic, version 0xd, layer 1."""
    with wasm.open("rb") as f:
        return f.read(8) == b"\0asm\x0d\x00\x01\x00"


def _copy_source(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("build", "__pycache__"))
    return dest


def test_example_build_is_cached_and_exports_the_guest_interface(
    built_guests: Mapping[str, Path], guest_artifact: Callable[[str], Path]
) -> None:
    """An unchanged module is not rebuilt, and what was built is a component implementing
    the vessel-module world (every guest export the host calls)."""
    wasm = built_guests["example"]
    again = build_module(EXAMPLE, out=wasm)
    assert again.cached
    assert again.wasm == wasm
    assert again.seconds < 2.0
    # The session's precompiled artifact of this very wasm: no second ~6 s compile.
    engine = make_engine()
    component = wc.Component.deserialize_file(engine, str(guest_artifact("example")))
    assert _guest_exports(engine, component) >= REQUIRED_EXPORTS | {"on-websocket-closed"}


def test_changed_source_rebuilds(built_guests: Mapping[str, Path], tmp_path: Path) -> None:
    """The cache key covers the sources: the same sources elsewhere hit the cache, an edit
    to app.py rebuilds, and the rebuilt key is then current."""
    src = _copy_source(EXAMPLE, tmp_path / "example")
    out = src / "build" / "module.wasm"
    out.parent.mkdir()
    shutil.copyfile(built_guests["example"], out)
    shutil.copyfile(
        built_guests["example"].with_name("module.wasm.key"), out.with_name("module.wasm.key")
    )
    assert build_module(src).cached

    app = src / "app.py"
    app.write_text(app.read_text().replace("TICK_MS = 1000", "TICK_MS = 500"))
    before = out.read_bytes()
    rebuilt = build_module(src)
    assert not rebuilt.cached
    assert rebuilt.wasm == out
    assert _is_component(out)
    assert out.read_bytes() != before
    assert build_module(src).cached
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "module.wasm",
        "module.wasm.key",
        "module.wasm.lock",
    ]


def test_syntax_error_is_reported_with_file_and_line(tmp_path: Path) -> None:
    """A guest that does not parse fails the build with a BuildError that quotes the
    SyntaxError, its file and line, and leaves no output behind."""
    out = tmp_path / "module.wasm"
    with pytest.raises(BuildError) as info:
        build_module(BROKEN, out=out)
    message = str(info.value)
    assert isinstance(info.value, VesselError)
    assert str(BROKEN) in message
    assert f'File "{BROKEN / "app.py"}", line 7' in message
    assert "SyntaxError" in message
    assert "Stack backtrace" not in message
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["module.wasm.lock"]


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (None, "no manifest.json"),
        ("{not json", "not valid JSON"),
        ('{"name": "x"}', '"id"'),
    ],
)
def test_folder_that_is_not_a_module_is_refused_before_building(
    tmp_path: Path, manifest: str | None, expected: str
) -> None:
    """A folder without a usable manifest is refused at once, without running
    componentize-py, with a message that says what is missing."""
    src = tmp_path / "mod"
    src.mkdir()
    (src / "app.py").write_text("")
    if manifest is not None:
        (src / "manifest.json").write_text(manifest)
    with pytest.raises(BuildError, match=expected):
        build_module(src, out=tmp_path / "out.wasm")


def test_missing_app_is_refused(tmp_path: Path) -> None:
    """A manifest without app.py is not a module source folder."""
    src = _copy_source(EXAMPLE, tmp_path / "example")
    (src / "app.py").unlink()
    with pytest.raises(BuildError, match=r"no app\.py"):
        build_module(src)


def test_build_that_takes_too_long_is_killed(tmp_path: Path) -> None:
    """componentize-py runs under a timeout: a guest that never finishes importing fails
    the build with a BuildError instead of hanging it (and leaves no process behind)."""
    src = tmp_path / "hang"
    src.mkdir()
    (src / "manifest.json").write_text(
        json.dumps({"id": "hang", "name": "Hang", "version": "0.1.0", "api_version": 1})
    )
    (src / "app.py").write_text("while True:\n    pass\n")
    with pytest.raises(BuildError, match="did not finish within 2 s"):
        build_module(src, timeout=2.0)
    assert not (src / "build" / "module.wasm").exists()
