"""Types of the suite's shared fixtures, for the tests' annotations (conftest.py defines
the fixtures themselves; pytest does not let a test import them)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class MakeModuleDir(Protocol):
    """The ``make_module_dir`` fixture: installs a built test guest into a data dir."""

    def __call__(
        self,
        data_dir: Path,
        name: str,
        *,
        module_id: str | None = None,
        permissions: Mapping[str, Any] | None = None,
        limits: Mapping[str, Any] | None = None,
        manifest: Mapping[str, Any] | None = None,
    ) -> Path: ...
