# vessel_sdk: a thin, typed layer over the componentize-py bindings of vessel:host@1.0.0.
#
# Layout:
#   _errors.py   HostError, CommandError (the two exceptions a module author meets)
#   _module.py   Module (the app object), Event, Reply, Socket, Storage, Log
#
# A module reads like a small app:
#
#     from vessel_sdk import Module
#
#     app = Module()
#
#     @app.command("hello")
#     def hello(params):
#         return {"hello": params.get("name", "world")}
#
#     Guest = app.guest()   # the export glue componentize-py looks for
#
# The build adds this folder to componentize-py's import path (vessel._toolchain), so
# every guest can `import vessel_sdk`. See docs/modules.md for the tutorial and reference.
"""Vessel guest SDK: write a Vessel module as a small Python app."""

from __future__ import annotations

from ._errors import CommandError as CommandError
from ._errors import HostError as HostError
from ._module import Event as Event
from ._module import Log as Log
from ._module import Module as Module
from ._module import Reply as Reply
from ._module import Socket as Socket
from ._module import Storage as Storage

__all__ = ["CommandError", "Event", "HostError", "Log", "Module", "Reply", "Socket", "Storage"]
