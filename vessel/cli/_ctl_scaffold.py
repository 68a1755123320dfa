"""``vessel-ctl new NAME``: a new Python module folder, ready to build, install and call.

It writes three files into ``PARENT/NAME/`` (a folder that must not exist yet):

* ``manifest.json``: id NAME, version 0.1.0, api_version 1 and no permissions (the
  template uses none: logging and commands need none);
* ``app.py``: the guest on the SDK, one ``hello`` command and an ``on_load`` that logs;
* ``README.md``: how to build, install and call it, and how to add permissions.

The templates are strings here (no package data to install); ``$module_id`` and
``$name`` are filled in with ``string.Template``.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from string import Template

from .._manifest import HOST_API_VERSION, MANIFEST_FILE, RESERVED_IDS, is_valid_module_id
from ._ctl_build import APP_FILE
from ._ctl_client import CtlError, Settings
from ._ctl_commands import out
from ._ctl_format import pretty_json

README_FILE = "README.md"

#: The params of the ``hello`` call shown in the next steps.
EXAMPLE_PARAMS = '{"name": "Ada"}'

#: The rule of ``vessel._manifest.is_valid_module_id``, in words.
ID_RULE = "1 to 63 lowercase letters, digits and '-', starting with a letter or digit"

APP_TEMPLATE = Template('''\
"""$name: a Vessel module, written on the guest SDK (vessel_sdk).

Build it with `vessel-ctl build`, install it with `vessel-ctl install` (README.md).
The SDK, the rules of the guest and a longer tutorial are in Vessel's docs/modules.md.

Import everything at the top: componentize-py runs this file at build time and
snapshots the interpreter; a module not imported then cannot be imported later.
"""

from __future__ import annotations

from typing import Any

from vessel_sdk import CommandError, Module

app = Module()


@app.on_load
def load() -> None:
    # Runs when the module starts (and again after each restart). Logging needs no
    # permission: `vessel-ctl logs $module_id` shows this line.
    app.log.info("$module_id loaded")


@app.command("hello")
def hello(params: dict[str, Any]) -> Any:
    """`vessel-ctl call $module_id hello '{"name": "Ada"}'` -> {"greeting": "Hello, Ada!"}"""
    name = params.get("name", "world")
    if not isinstance(name, str) or not name:
        raise CommandError("hello: `name` must be a non-empty string")
    return {"greeting": f"Hello, {name}!"}


# More of the SDK (docs/modules.md, "SDK reference"), each with the permission it needs
# in manifest.json ("Which permission each feature needs"): a module is denied what its
# manifest does not grant.
#
#   app.storage.get/set(key, value)      "storage": true
#   app.set_timeout/set_interval(ms, f)  "timers": true
#   @app.on_event("other.*")             "subscribe": ["other.*"]
#   app.call("other", "cmd")             "call": ["other.cmd@1"]
#   app.websocket_connect(url, ...)      "network": {"websocket": true, "hosts": ["wss://x.example"]}
#   app.emit("name", data)               no permission needed

# The export componentize-py looks for: keep this line last.
Guest = app.guest()
''')

README_TEMPLATE = Template("""\
# $name

A Vessel module (id `$module_id`) written in Python on the guest SDK `vessel_sdk`.
The files:

* `manifest.json`: what the module is and what it may do (its permissions);
* `app.py`: the code: a `hello` command and an `on_load` that logs;
* `build/module.wasm`: the WebAssembly component built from them (do not edit).

## Build

From the folder that holds `$module_id/`:

```sh
vessel-ctl build $module_id
```

This checks `manifest.json`, then builds `build/module.wasm` with componentize-py (about
ten seconds; an unchanged module is not rebuilt: `up to date`). It needs no running
daemon (componentize-py comes with Vessel). A Python error in `app.py` fails the build
with its file and line.

## Install and call

With the daemon running (`vessel serve`):

```sh
vessel-ctl install $module_id          # builds if needed, uploads, starts it
vessel-ctl call $module_id hello '{"name": "Ada"}'
vessel-ctl logs $module_id             # "$module_id loaded"
```

After a change: `vessel-ctl install --replace $module_id`.

## Permissions

A module may do only what its manifest grants; this one asks for nothing (logging,
commands and emitting events need no permission). To use storage, timers, other
modules' events or commands, or the network, add a `permissions` object to
`manifest.json`, for example:

```json
"permissions": {
  "storage": true,
  "timers": true,
  "subscribe": ["vessel.module.*"],
  "call": ["other-module.some_command@1"],
  "network": {"websocket": true, "hosts": ["wss://api.example.com"]}
}
```

`network.hosts` names where the module may connect (`scheme://host[:port]`, `*` for one
DNS label or any port, `"{settings.url}"` for the address an admin sets); without it the
module may connect anywhere, and `vessel-ctl info` warns about it.

Ask for exactly what the code uses. Which SDK call needs which permission is in Vessel's
docs/modules.md ("Which permission each feature needs"); every manifest field is in
docs/manifest.md. Then `vessel-ctl install --replace $module_id`.

Configuration the user sets with `vessel-ctl config $module_id key=value` lands in the
module's storage (`app.storage.get("key")`, permission `"storage": true`).
""")


def display_name(module_id: str) -> str:
    """``my-module`` -> ``My module``: the manifest's ``name`` until the author picks one."""
    return module_id.replace("-", " ").strip().capitalize() or module_id


def check_module_id(module_id: str) -> None:
    """Raises CtlError, saying the rule, for an id the daemon would refuse."""
    if not is_valid_module_id(module_id):
        raise CtlError(f"invalid module id {module_id!r}: use {ID_RULE}")
    if module_id in RESERVED_IDS:
        raise CtlError(f"module id {module_id!r} is reserved for the built-in module")


def scaffold_files(module_id: str) -> dict[str, str]:
    """The new module's files by name: manifest.json, app.py, README.md."""
    name = display_name(module_id)
    manifest = {
        "id": module_id,
        "name": name,
        "version": "0.1.0",
        "api_version": HOST_API_VERSION,
        "description": f"{name}: a Vessel module.",
    }
    fields = {"module_id": module_id, "name": name}
    return {
        MANIFEST_FILE: json.dumps(manifest, indent=2) + "\n",
        APP_FILE: APP_TEMPLATE.substitute(fields),
        README_FILE: README_TEMPLATE.substitute(fields),
    }


def create_module(parent: Path, module_id: str) -> Path:
    """Write the new module's folder ``parent/module_id``; refuses an existing one."""
    check_module_id(module_id)
    folder = parent / module_id
    if folder.exists() or folder.is_symlink():
        raise CtlError(f"{folder} already exists; choose another name or --dir, or remove it")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir()
    except FileExistsError:
        raise CtlError(f"{folder} already exists; choose another name or --dir") from None
    except OSError as exc:
        raise CtlError(f"cannot create {folder}: {exc.strerror}") from None
    try:
        for filename, text in scaffold_files(module_id).items():
            (folder / filename).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CtlError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return folder


def cmd_new(settings: Settings, args: argparse.Namespace) -> int:
    parent: Path = args.dir.expanduser() if args.dir is not None else Path()
    folder = create_module(parent, args.name)
    files = [MANIFEST_FILE, APP_FILE, README_FILE]
    if settings.json:
        out(pretty_json({"id": args.name, "path": str(folder), "files": files}))
        return 0
    where = shlex.quote(str(folder))
    out(f"created {folder}/ with {', '.join(files)}")
    out("next steps:")
    out(f"  vessel-ctl build {where}")
    out(f"  vessel-ctl install {where}      # with the daemon running (vessel serve)")
    out(f"  vessel-ctl call {args.name} hello {shlex.quote(EXAMPLE_PARAMS)}")
    out(f"edit {folder / APP_FILE}, then `vessel-ctl install --replace {where}`")
    return 0
