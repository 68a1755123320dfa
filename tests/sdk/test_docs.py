"""The tutorial in docs/modules.md builds, installs and does what the page says."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from vessel._toolchain import build_module

from ..runtime.harness import call, call_error, data, next_event, running_daemon

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "modules.md"
#: Built once and cached by the toolchain's key, like the suite's other guests.
BUILD = REPO / ".cache" / "guests" / "docs-hello" / "module.wasm"

_FILE_BLOCK = re.compile(r"<!-- file: (?P<path>[\w./-]+) -->\n```\w+\n(?P<body>.*?)\n```", re.S)


def tutorial_files() -> dict[str, str]:
    """The files the tutorial asks the reader to write, by path."""
    return {m["path"]: m["body"] + "\n" for m in _FILE_BLOCK.finditer(PAGE.read_text())}


async def test_tutorial_module_builds_installs_and_answers(tmp_path: Path) -> None:
    """The page's manifest.json and app.py, copied as a reader would, build into a
    module that a daemon discovers in <data-dir>/modules/hello and that answers the
    calls and publishes the events the page shows."""
    files = tutorial_files()
    assert set(files) == {"hello/manifest.json", "hello/app.py"}
    for path, text in files.items():
        (tmp_path / "src" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / path).write_text(text)
    built = build_module(tmp_path / "src" / "hello", out=BUILD)

    installed = tmp_path / "data" / "modules" / "hello"
    installed.mkdir(parents=True)
    shutil.copyfile(tmp_path / "src" / "hello" / "manifest.json", installed / "manifest.json")
    shutil.copyfile(built.wasm, installed / "module.wasm")
    async with running_daemon(tmp_path / "data") as daemon:
        answer = await call(daemon, "hello", "greet", {"name": "Ada"})
        assert answer == {"greeting": "Hello, Ada!"}
        error = await call_error(daemon, "hello", "greet", {})
        assert (error.code, error.message) == ("module_error", "greet needs a name")
        later = await call(daemon, "hello", "greet_later", {"name": "Bob", "ms": 10})
        assert later == {"greeting": "Hello, Bob!"}
        sub = daemon.bus.subscribe("hello.greeted", name="dashboard")
        assert data(await next_event(sub, lambda e: True)) == {"count": 1, "last": "Ada"}
        assert daemon.manager.config_get("hello", "greeted") == "1"
        logs = [line.message for line in daemon.manager.logs("hello")]
        assert "hello loaded; 0 greeted so far" in logs
    assert json.loads(files["hello/manifest.json"])["permissions"] == {
        "storage": True,
        "timers": True,
    }
