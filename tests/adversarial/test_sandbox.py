"""The sandbox: what a guest cannot reach, with healthy modules watched beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.runtime.harness import call, next_event

from ._figures import Figures
from .test_hostile_guests import HOSTILE, scenario


async def test_no_files_env_or_sockets(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """No host file system (not even the daemon's database), no environment, no sockets
    except through the host functions."""
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    async with scenario(tmp_path, make_module_dir, figures, "sandbox: fs/env/net") as (d, row):
        for path in ("/etc/passwd", str(secret), str(tmp_path / "vessel.db"), "/proc/self/environ",
                     "../../vessel.db", "/"):  # fmt: skip
            got = await call(d, HOSTILE, "read_file", {"path": path})
            assert got["ok"] is False, (path, got)
            row.bad_inputs += 1
        env = await call(d, HOSTILE, "env")
        assert not any(k in env for k in ("PATH", "HOME", "VESSEL_DATA_DIR")), env
        got = await call(d, HOSTILE, "socket", {"host": "127.0.0.1", "port": 1})
        assert got["ok"] is False, got
        row.bad_inputs += 2


async def test_no_other_modules_storage_or_identity(
    tmp_path: Path, make_module_dir: Any, figures: Figures
) -> None:
    """Storage keys name only the caller's own namespace, whatever they look like; an
    event emitted with a forged module id is stamped with the emitter's id."""
    async with scenario(tmp_path, make_module_dir, figures, "sandbox: storage/identity") as (
        d,
        row,
    ):
        await call(d, "healthy-a", "storage_set", {"key": "token", "value": "s3cret"})
        for key in ("token", "healthy-a/token", "healthy-a.token", "../healthy-a/token",
                    "healthy-a\x00token", "%"):  # fmt: skip
            got = await call(d, HOSTILE, "storage_get", {"key": key})
            assert got == {"value": None}, (key, got)
            row.bad_inputs += 1
        await call(d, HOSTILE, "storage_set", {"key": "token", "value": "overwritten"})
        assert d.storage.get("healthy-a", "token") == "s3cret"
        with d.bus.subscribe("*.forged", name="t") as sub:
            for forged in ("healthy-a", "vessel", ""):
                await call(d, HOSTILE, "emit", {"module": forged, "name": "forged", "data": 1})
                event = await next_event(sub, lambda e: e.name == "forged")
                assert event.module == HOSTILE, event
                row.bad_inputs += 1
