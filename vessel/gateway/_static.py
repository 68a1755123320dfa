"""The dashboard: the files of ``web/`` served at ``/`` (reference: docs/dashboard.md).

Only ``/`` (``index.html``) and single-segment file names with a known extension are
routed (``/app.js``, ``/style.css``): the URL rule itself admits no ``/``, no ``..`` and
no hidden file, so no path can leave ``web/`` and there is nothing like a directory
listing. Every other path (``/api/...``, ``/ws``, ``/healthz``) keeps the routes and the
errors it had. The dashboard has no build step, so its files are not fingerprinted:
they are sent with ``Cache-Control: no-cache`` and an ETag, so a browser revalidates
(a cheap 304) and never runs a stale script after an upgrade.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Final

import trio
from quart import Blueprint, Response, request
from quart.blueprints import BlueprintSetupState
from werkzeug.exceptions import NotFound
from werkzeug.routing import BaseConverter

from .._paths import web_dir

#: Where the dashboard lives: ``$VESSEL_WEB_DIR``, else the ``web/`` this Vessel carries
#: (the installed package's, or the checkout's: vessel._paths).
WEB_DIR: Final = Path(os.environ.get("VESSEL_WEB_DIR") or web_dir())

#: The extensions served, with their content type (not the platform's mimetypes table:
#: browsers refuse ES modules that are not served as JavaScript).
CONTENT_TYPES: Final = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
    "ico": "image/x-icon",
    "json": "application/json",
    "webmanifest": "application/manifest+json",
}

#: The page talks to its own origin only (REST and /ws); no inline script, no framing.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class WebAssetConverter(BaseConverter):
    """One file name: letters, digits, ``-`` and ``_``, then a served extension."""

    regex = r"[A-Za-z0-9_-]+\.(?:" + "|".join(CONTENT_TYPES) + ")"


static = Blueprint("static", __name__)


@static.record_once
def _add_converter(state: BlueprintSetupState) -> None:
    # Before the routes below are added to the app's map: they use it.
    state.app.url_map.converters["webasset"] = WebAssetConverter


async def _send(name: str) -> Response:
    path = trio.Path(WEB_DIR / name)
    if not await path.is_file():
        raise NotFound(f"no file {name!r} in the dashboard")
    # The files are small: read whole, so a HEAD or a 304 leaves no file open.
    data = await path.read_bytes()
    extension = name.rsplit(".", 1)[1]
    response = Response(data)
    response.headers["Content-Type"] = CONTENT_TYPES[extension]
    response.set_etag(hashlib.sha256(data).hexdigest()[:32])
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if extension == "html":
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return await response.make_conditional(request)


@static.get("/")
async def index() -> Response:
    return await _send("index.html")


@static.get("/<webasset:name>")
async def asset(name: str) -> Response:
    return await _send(name)
