"""The toolchain builds every module with the SDK on its import path, cached over it."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from vessel._toolchain import build_module, default_sdk_dir

REPO = Path(__file__).resolve().parents[2]


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("build", "__pycache__"))
    return dest


def test_sdk_sources_are_part_of_the_cache_key(
    built_guests: Mapping[str, Path], tmp_path: Path
) -> None:
    """A module built against an unchanged SDK is up to date; editing any SDK file makes
    it out of date (and the rebuild, which imports the edited SDK, succeeds)."""
    assert default_sdk_dir() == REPO / "modules" / "sdk"
    src = _copy(REPO / "tests" / "sdk" / "guest", tmp_path / "sdkkit")
    sdk = _copy(default_sdk_dir(), tmp_path / "sdk")
    out = src / "build" / "module.wasm"
    out.parent.mkdir()
    shutil.copyfile(built_guests["sdkkit"], out)
    key = built_guests["sdkkit"].with_name("module.wasm.key")
    shutil.copyfile(key, out.with_name("module.wasm.key"))
    assert build_module(src, sdk_dir=sdk).cached

    errors = sdk / "vessel_sdk" / "_errors.py"
    errors.write_text(errors.read_text() + "\nEDITED = True\n")
    rebuilt = build_module(src, sdk_dir=sdk)
    assert not rebuilt.cached
    assert build_module(src, sdk_dir=sdk).cached
