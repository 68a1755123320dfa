"""``vessel-ctl``'s side of the REST API: settings, the token, requests and their errors.

Every failure a user can expect (no daemon, wrong token, unknown module, a module error)
becomes a ``CtlError`` with one line that says what is wrong and what to do; ``main``
prints it and exits 1. httpx and OS errors are translated here, at the boundary.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"

#: Seconds to wait for the daemon when --timeout is not given.
DEFAULT_TIMEOUT = 10.0

#: Installing compiles the component in the daemon (seconds for a Python guest).
INSTALL_TIMEOUT = 300.0


class CtlError(Exception):
    """An expected failure of a command. ``str(exc)`` is the one line shown to the user
    (after ``vessel-ctl: ``); the exit status is 1."""


class ApiError(CtlError):
    """The daemon answered with an error: ``{"code", "message"}`` and an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Settings:
    """The global options, resolved against the environment."""

    url: str
    data_dir: Path
    #: From --token or VESSEL_TOKEN; None means "read token_file, else <data_dir>/token,
    #: when needed".
    token: str | None = None
    #: From --token-file or VESSEL_TOKEN_FILE.
    token_file: Path | None = None
    json: bool = False
    #: --timeout; None means each command's default.
    timeout: float | None = None

    def timeout_or(self, default: float) -> float:
        return default if self.timeout is None else self.timeout

    @property
    def ws_url(self) -> str:
        scheme, _, rest = self.url.partition("://")
        return ("wss" if scheme == "https" else "ws") + "://" + rest + "/ws"


def normalize_url(url: str) -> str:
    """``host:8080`` -> ``http://host:8080``; no trailing slash. Raises CtlError."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CtlError(f"invalid --url {url!r}: expected http://HOST:PORT")
    if parts.path or parts.query:
        raise CtlError(f"invalid --url {url!r}: give the daemon's address only (no path)")
    try:
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise CtlError(f"invalid --url {url!r}: bad port") from None
    return url


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: What to do about a missing or refused token. Never --token: a command line is visible
#: to every local user (``ps``, /proc/<pid>/cmdline); the environment and a file are not.
TOKEN_HINT = "set VESSEL_TOKEN or pass --token-file"


def read_token(settings: Settings) -> str:
    """The admin token: --token or VESSEL_TOKEN, else the file --token-file or
    VESSEL_TOKEN_FILE names, else the daemon's ``<data-dir>/token``."""
    if settings.token:
        return settings.token
    if settings.token_file is not None:
        return _read_token_file(settings.token_file)
    path = settings.data_dir / "token"
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except PermissionError:
        raise CtlError(
            f"no token: cannot read {path} (permission denied); run as the daemon's user, "
            f"or {TOKEN_HINT}"
        ) from None
    except OSError as exc:
        raise CtlError(f"no token: cannot read {path}: {exc.strerror}") from None
    if not token:
        raise CtlError(f"no token: {TOKEN_HINT}, or run on the daemon's host (reads {path})")
    return token


def _read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise CtlError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CtlError(f"the token file {path} is not text") from None
    if not token:
        raise CtlError(f"the token file {path} is empty")
    return token


def module_path(module_id: str, *rest: str) -> str:
    """``/api/modules/<id>/...`` with every segment escaped."""
    segments = [quote(s, safe="") for s in (module_id, *rest)]
    return "/api/modules/" + "/".join(segments)


def _os_reason(exc: BaseException) -> str:
    """The OS-level cause inside an httpx error, in words (``connection refused``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, OSError) and current.errno is not None:
            return (current.strerror or errno.errorcode.get(current.errno, "error")).lower()
        current = current.__cause__ or current.__context__
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else (text or type(exc).__name__)


def not_running(url: str, reason: str) -> CtlError:
    if reason == "connection refused":
        return CtlError(
            f"daemon not running at {url} (connection refused); start it with `vessel serve`"
        )
    return CtlError(f"cannot reach the daemon at {url} ({reason})")


@contextlib.contextmanager
def translate_transport_errors(url: str, timeout: float) -> Iterator[None]:
    """httpx's transport errors -> CtlError with the daemon's address and a hint."""
    try:
        yield
    except httpx.ConnectError as exc:
        raise not_running(url, _os_reason(exc)) from None
    except httpx.TimeoutException:
        raise CtlError(
            f"the daemon at {url} did not answer within {timeout:g} s (raise --timeout)"
        ) from None
    except httpx.HTTPError as exc:
        raise CtlError(f"lost the connection to the daemon at {url}: {_os_reason(exc)}") from None


def error_from_response(response: httpx.Response, url: str) -> ApiError:
    """The ApiError for a non-2xx answer (the body is read already)."""
    status = response.status_code
    try:
        body = response.json()
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code = "http_error"
        text = response.text.strip().replace("\n", " ")[:200]
        message = f"unexpected answer from {url}: HTTP {status} {text}".rstrip()
    if status == 401:
        message = (
            f"wrong token: the daemon at {url} refused it (the token is in the daemon's "
            f"<data-dir>/token; {TOKEN_HINT})"
        )
    return ApiError(status, code, message)


class Client:
    """A connection to the daemon's REST API (one per command run)."""

    def __init__(self, settings: Settings, *, default_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.settings = settings
        self.url = settings.url
        self.timeout = settings.timeout_or(default_timeout)
        self._token: str | None = None
        # Proxies from the environment are for reaching the internet; a daemon on this
        # machine is always reached directly.
        self._http = httpx.Client(
            base_url=self.url, timeout=self.timeout, trust_env=not is_loopback_url(self.url)
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _headers(self, auth: bool) -> dict[str, str]:
        if not auth:
            return {}
        if self._token is None:
            self._token = read_token(self.settings)
        return {"Authorization": f"Bearer {self._token}"}

    def request(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request; a 2xx answer is returned, anything else raises CtlError."""
        headers = {**self._headers(auth), **kwargs.pop("headers", {})}
        limit = self.timeout if timeout is None else timeout
        with translate_transport_errors(self.url, limit):
            response = self._http.request(method, path, headers=headers, timeout=limit, **kwargs)
        if not response.is_success:
            raise error_from_response(response, self.url)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise CtlError(f"unexpected answer from {self.url}{path}: not JSON") from None

    @contextlib.contextmanager
    def stream_lines(self, path: str, **params: str) -> Iterator[Iterator[str]]:
        """A streamed GET (NDJSON) as an iterator of lines; no read timeout."""
        headers = self._headers(True)
        timeout = httpx.Timeout(self.timeout, read=None)
        with (
            translate_transport_errors(self.url, self.timeout),
            self._http.stream("GET", path, params=params, headers=headers, timeout=timeout) as r,
        ):
            if not r.is_success:
                r.read()
                raise error_from_response(r, self.url)
            yield _guarded(r.iter_lines(), self.url)


def _guarded(lines: Iterator[str], url: str) -> Iterator[str]:
    """Translate transport errors raised while a stream is being read."""
    with translate_transport_errors(url, 0):
        yield from lines
