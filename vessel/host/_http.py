"""Outbound HTTP for a module (``http-fetch``), through one shared ``httpx.AsyncClient``.

The client is opened by ``HttpService.run`` (started in the module process's nursery like
the other services, with ``task_status``) and closed when ``run`` is cancelled, so every
fetch of the module reuses one connection pool.

What a fetch does
-----------------

* Only ``http`` and ``https`` URLs, and only the methods in ``ALLOWED_METHODS`` (case
  does not matter; the request goes out upper-cased).
* Redirects are followed, at most ``max_redirects`` (5) of them: integrations mostly talk
  to APIs that redirect for trailing slashes or http to https, and the guest cannot
  follow a redirect itself without a second capability-checked call anyway. The status
  and headers returned are the final response's.
* The response body is returned as text, decoded with the charset the response declares,
  else UTF-8; undecodable bytes become U+FFFD rather than an error. Header names come
  back lower-case.
* ``max_response_bytes`` bounds the (decompressed) body: a bigger one is refused with an
  error, never truncated silently. ``timeout`` bounds the whole fetch, redirects and body
  included, not just each network read, so a server that drips bytes cannot hold the
  guest forever.
* Environment proxies and ``.netrc`` are ignored (``trust_env=False``): a module must not
  be steerable through the daemon's environment.
"""

from __future__ import annotations

import codecs
import logging
import re

import httpx
import trio

from .._capabilities import Destinations
from .._errors import CapabilityDenied
from .._manifest import origin_of
from .._tls import client_context
from ._egress import EgressLedger, destination
from ._hosterrors import HostCallError, describe_failure

__all__ = ["ALLOWED_METHODS", "HttpService"]

log = logging.getLogger("vessel.host")

#: The request extension carrying a fetch's allowed destinations: httpx copies a
#: request's extensions onto the redirect it builds, so every hop is checked.
_ALLOW = "vessel.destinations"

ALLOWED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

#: RFC 9110 token: what a header name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Visible ASCII, space and tab: what a header value may be made of. Anything else is
#: either a way to smuggle a second header (CR, LF) or would not survive encoding.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
#: Framing headers are computed from the body by the host; a guest's value could only
#: disagree with it and desynchronise the connection.
_HOST_SET_HEADERS = frozenset({"content-length", "transfer-encoding"})


class HttpService:
    """The HTTP client of one module. Methods run on the trio thread."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        max_response_bytes: int = 8 << 20,
        max_redirects: int = 5,
        trusted_ca: str = "",
        egress: EgressLedger | None = None,
    ) -> None:
        self._egress = egress or EgressLedger()
        self._timeout = timeout
        self._trusted_ca = trusted_ca
        self._max_response_bytes = max_response_bytes
        self._max_redirects = max_redirects
        self._running = False
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<HttpService timeout={self._timeout:g}s {state}>"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve fetches until cancelled, then close the client.

        The client is made at the first fetch, not here: it loads the CA store, tens of
        milliseconds on every module start, and most modules never fetch.
        """
        self._running = True
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._running = False
            client, self._client = self._client, None
            if client is not None:
                # Shielded and bounded: the pool's sockets get closed even though we are
                # being cancelled, and a stuck close cannot hold up shutdown.
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await client.aclose()

    def _shared_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=client_context(self._trusted_ca),
                trust_env=False,
                follow_redirects=True,
                max_redirects=self._max_redirects,
                # Per-operation bounds; fetch adds the bound on the whole exchange.
                timeout=httpx.Timeout(self._timeout),
                event_hooks={"request": [self._check_hop]},
            )
        return self._client

    async def fetch(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: str | None,
        allow: Destinations | None = None,
    ) -> tuple[int, list[tuple[str, str]], str]:
        """Perform one request; (status, headers, body text) for any HTTP status.

        An HTTP error status (404, 500) is a response, not a failure. ``HostCallError``
        is raised for a refused request, a transport failure, a timeout or a body over
        ``max_response_bytes``. ``CapabilityDenied`` is raised when ``allow`` (None: any
        host) does not cover the URL or a redirect's.
        """
        verb = method.upper()
        if verb not in ALLOWED_METHODS:
            raise HostCallError(
                f"http-fetch: method {method!r} is not allowed ({', '.join(ALLOWED_METHODS)})"
            )
        target = _check_url(url)
        first = destination(target.scheme, _host(target), target.port)
        if allow is not None:
            try:
                allow.check("http-fetch to", *origin_of(target.scheme, _host(target), target.port))
            except CapabilityDenied:
                self._egress.denied(first)
                raise
        _check_headers(headers)
        if not self._running:
            raise HostCallError("http-fetch: http is stopped (the module is shutting down)")
        client = self._shared_client()
        where = f"http-fetch {verb} {url}"
        content = body.encode("utf-8") if body is not None else None
        try:
            with trio.fail_after(self._timeout):
                async with client.stream(
                    verb, target, headers=headers, content=content, extensions={_ALLOW: allow}
                ) as resp:
                    self._egress.used(first, sent=len(content or b""))
                    data = await self._read_body(where, resp)
                    last = resp.url
                    self._egress.used(
                        destination(last.scheme, _host(last), last.port), received=len(data)
                    )
        except trio.TooSlowError:
            raise HostCallError(f"{where}: timed out after {self._timeout:g} s") from None
        except httpx.TooManyRedirects:
            raise HostCallError(f"{where}: more than {self._max_redirects} redirects") from None
        except httpx.TimeoutException:
            raise HostCallError(f"{where}: timed out after {self._timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise HostCallError(f"{where}: {describe_failure(exc)}") from None
        return resp.status_code, resp.headers.multi_items(), data.decode(_charset(resp), "replace")

    async def _check_hop(self, request: httpx.Request) -> None:
        """Every request of a fetch, redirects included, goes where the module may go (the
        CapabilityDenied raised here ends the fetch), and is counted where it goes."""
        url = request.url
        dest = destination(url.scheme, _host(url), url.port)
        allow = request.extensions.get(_ALLOW)
        if isinstance(allow, Destinations):
            try:
                allow.check("http-fetch redirect to", *origin_of(url.scheme, _host(url), url.port))
            except CapabilityDenied:
                self._egress.denied(dest)
                raise
        self._egress.used(dest, requests=1)

    async def _read_body(self, where: str, resp: httpx.Response) -> bytes:
        limit = self._max_response_bytes
        too_big = f"{where}: response body is larger than the limit of {limit} bytes"
        declared = resp.headers.get("content-length", "")
        # Refuse early when the server says so up front; still count below, as the
        # header may be absent, wrong, or describe the compressed size.
        if declared.isdigit() and int(declared) > limit:
            raise HostCallError(too_big)
        data = bytearray()
        over = False
        with trio.CancelScope() as scope:
            async for chunk in resp.aiter_bytes():
                if over:
                    continue  # chunks already buffered; the cancel lands at the next read
                if len(data) + len(chunk) > limit:
                    # Cancel rather than break: the Cancelled unwinds httpx's and
                    # httpcore's chain of async generators so each one finishes (and the
                    # connection is closed). A break would leave them to the garbage
                    # collector, which trio reports as a ResourceWarning (httpx#3686).
                    over = True
                    scope.cancel()
                    continue
                data += chunk
        if over:
            raise HostCallError(too_big)
        return bytes(data)


def _host(url: httpx.URL) -> str:
    """The host httpx connects to, in ASCII: an internationalised name in punycode (the
    form network.hosts entries are written in); ``url.host`` would give it decoded."""
    return url.raw_host.decode("ascii", "replace")


def _check_url(url: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise HostCallError(f"http-fetch: invalid url {url!r}: {exc}") from None
    if target.scheme not in ("http", "https"):
        raise HostCallError(
            f"http-fetch: url scheme {target.scheme!r} is not allowed (http or https only)"
        )
    if not target.host:
        raise HostCallError(f"http-fetch: invalid url {url!r}: no host")
    return target


def _check_headers(headers: list[tuple[str, str]]) -> None:
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise HostCallError(f"http-fetch: invalid header name {name!r}")
        if name.lower() in _HOST_SET_HEADERS:
            raise HostCallError(
                f"http-fetch: header {name!r} is set by the host from the body; remove it"
            )
        if not _HEADER_VALUE.fullmatch(value):
            raise HostCallError(
                f"http-fetch: header {name!r} has a value that is not printable ASCII"
            )


def _charset(resp: httpx.Response) -> str:
    charset = resp.charset_encoding
    if charset:
        try:
            return codecs.lookup(charset).name
        except LookupError:
            log.debug("unknown response charset %r, decoding as utf-8", charset)
    return "utf-8"
