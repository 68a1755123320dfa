"""Receiving a module upload (``POST /api/modules``): streamed, checked early, and kept
out of the daemon's heap.

The body is ``multipart/form-data`` with a ``manifest`` and a ``wasm`` part (each a file
or a plain field), decoded as it arrives by werkzeug's sans-IO multipart decoder. The
manifest (small, bounded by :data:`MAX_MANIFEST_BYTES`) is kept in memory and handed to
``check_manifest`` the moment its part is complete: when a client sends it first (as
``vessel-ctl`` and the dashboard do), a bad manifest or an id that is installed already
is refused before any of the component is stored (the rest of the body is read and
dropped, then answered: an answer mid-body makes the server close the connection under
a client still sending, which then sees a reset instead). Clients that know the id ask
first (``GET /api/modules/<id>``), so a duplicate is refused before it is uploaded.
The component (~18 MB for a Python guest) goes straight to a file in the data dir's
``modules/.staging-*`` folder — the installer moves it into the module from there — so a
daemon that installs modules for years does not keep the high-water mark of an upload in
its heap. Other parts are read and dropped.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from .._errors import DiskWriteError
from .._install import STAGING_PREFIX
from ._rest_support import ApiError

#: The largest manifest part taken (manifests are a few KiB).
MAX_MANIFEST_BYTES = 256 * 1024
#: At most this many parts in one upload (two are used).
MAX_PARTS = 16
#: Bytes of an upload held unread at most (gateway/_app.py _Body): past this, the
#: gateway stops reading the socket until the disk has taken what it holds.
UPLOAD_HELD = 1024 * 1024


@dataclass
class Upload:
    """A received upload: the manifest's bytes, and the component in a file of ``folder``
    (delete it with :meth:`discard` once the installer is done with it)."""

    manifest: bytes
    wasm: Path
    folder: Path

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _boundary(content_type: str) -> bytes:
    mimetype, options = parse_options_header(content_type)
    boundary = options.get("boundary", "")
    if mimetype != "multipart/form-data" or not boundary:
        raise ApiError(
            "invalid_request",
            "the body must be multipart/form-data with the fields 'manifest' (manifest.json) "
            "and 'wasm' (module.wasm)",
        )
    return boundary.encode("latin-1")


async def drain(chunks: AsyncIterable[bytes], budget: int, idle_timeout: float) -> None:
    """Read and drop the rest of a refused body (at most ``budget`` bytes, no pause
    longer than ``idle_timeout``)."""
    iterator = aiter(chunks)
    while budget > 0:
        with trio.move_on_after(idle_timeout):
            chunk = await anext(iterator, None)
            if chunk is None:
                return
            budget -= len(chunk)
            continue
        return


async def receive_upload(
    chunks: AsyncIterable[bytes],
    content_type: str,
    *,
    modules_dir: Path,
    max_bytes: int,
    idle_timeout: float,
    check_manifest: Callable[[bytes], None],
) -> Upload:
    """Decode an upload from ``chunks`` (the request body); raises ApiError naming what
    is wrong (a missing field, a body cut short, over ``max_bytes``) and whatever
    ``check_manifest`` raises. Nothing is left on disk when it raises."""
    decoder = MultipartDecoder(_boundary(content_type), max_parts=MAX_PARTS)
    folder = modules_dir / f"{STAGING_PREFIX}upload-{secrets.token_hex(6)}"
    wasm_path = folder / "upload.wasm"
    manifest: bytearray | None = None
    manifest_done = False
    wasm_file: trio.abc.AsyncResource | None = None
    wasm_done = False
    part: str | None = None  # the field being received: "manifest", "wasm" or another
    received = 0
    iterator = aiter(chunks)
    try:
        await trio.to_thread.run_sync(lambda: modules_dir.mkdir(parents=True, exist_ok=True))
        await trio.to_thread.run_sync(folder.mkdir)
        complete = False
        while not complete:
            with trio.move_on_after(idle_timeout) as idle:
                chunk: bytes | None = await anext(iterator, None)
            if idle.cancelled_caught:
                raise ApiError(
                    "request_timeout",
                    f"the upload stalled: nothing arrived for {idle_timeout:.0f} s",
                )
            if chunk is not None:
                received += len(chunk)
                if received > max_bytes:
                    raise RequestEntityTooLarge()
            decoder.receive_data(chunk)
            while True:
                event = decoder.next_event()
                if isinstance(event, NeedData):
                    break
                if isinstance(event, Epilogue):
                    complete = True
                    break
                if isinstance(event, (Field, File)):
                    part = event.name
                    if part == "manifest":
                        manifest = bytearray()
                    elif part == "wasm":
                        wasm_file = await trio.open_file(wasm_path, "xb")
                elif isinstance(event, Data):
                    if part == "manifest" and manifest is not None:
                        manifest += event.data
                        if len(manifest) > MAX_MANIFEST_BYTES:
                            raise ApiError(
                                "invalid_module",
                                f"the manifest is over {MAX_MANIFEST_BYTES // 1024} KiB",
                            )
                        if not event.more_data:
                            manifest_done = True
                            check_manifest(bytes(manifest))
                    elif part == "wasm" and wasm_file is not None:
                        await wasm_file.write(event.data)  # type: ignore[attr-defined]
                        if not event.more_data:
                            await wasm_file.aclose()
                            wasm_file = None
                            wasm_done = True
            if chunk is None and not complete:
                raise ApiError("invalid_request", "the upload ended before its last part did")
        missing = [n for n, done in (("manifest", manifest_done), ("wasm", wasm_done)) if not done]
        if missing:
            raise ApiError(
                "invalid_request",
                f"missing multipart field {' and '.join(repr(n) for n in missing)} (send "
                "manifest.json as 'manifest' and module.wasm as 'wasm')",
            )
        assert manifest is not None
        return Upload(bytes(manifest), wasm_path, folder)
    except ValueError as exc:  # the decoder: not multipart after all, too many parts
        await _cleanup(wasm_file, folder)
        raise ApiError("invalid_request", f"the upload is not valid multipart: {exc}") from None
    except ApiError as exc:
        await _cleanup(wasm_file, folder)
        if exc.code != "request_timeout":
            # Read the rest and drop it before answering: answered mid-body, the server
            # closes the connection under a client still sending, which then sees a reset
            # instead of the answer (httpx does).
            await drain(iterator, max_bytes - received, idle_timeout)
        raise
    except OSError as exc:  # the data dir's file system: a full disk
        await _cleanup(wasm_file, folder)
        raise DiskWriteError(
            f"the upload was not stored: cannot write under {modules_dir}: "
            f"{exc.strerror or exc}; nothing was changed: free space in the data dir and retry"
        ) from exc
    except BaseException:
        await _cleanup(wasm_file, folder)
        raise


async def _cleanup(wasm_file: trio.abc.AsyncResource | None, folder: Path) -> None:
    with trio.CancelScope(shield=True):
        if wasm_file is not None:
            await wasm_file.aclose()
        await trio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))


__all__ = ["MAX_MANIFEST_BYTES", "UPLOAD_HELD", "Upload", "drain", "receive_upload"]
