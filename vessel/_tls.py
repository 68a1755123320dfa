"""Certificates the admin trusts for modules' https:// and wss:// (``vessel serve
--ca-file``), beside the system's.

A Home Assistant on the local network often has a self-signed certificate, which no
system trusts: its admin saves that certificate (or the CA that signed it) and gives
the file to the daemon. The daemon reads the files once, at start, and hands every
module process the certificates alone, as PEM text: a private key kept in the same
file (as Home Assistant keeps its own) never leaves the daemon. Only the admin decides
this; a module cannot ask to trust anything, nor to skip verification. Host names are
still checked.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable
from pathlib import Path

import certifi

from ._errors import TrustError

_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL
)


def load_trusted_certificates(paths: Iterable[Path]) -> str:
    """The certificates in ``paths`` as one PEM text ("" for none); raises TrustError
    naming the file and the problem."""
    found: list[str] = []
    # Bare: checking a certificate needs no CA store loaded (tens of ms at each start).
    checker = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for path in paths:
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise TrustError(f"--ca-file {path}: cannot read it: {exc.strerror or exc}") from None
        blocks = [block.decode("ascii", "replace") for block in _CERTIFICATE.findall(content)]
        if not blocks:
            raise TrustError(
                f"--ca-file {path}: no certificate in it (expected PEM text with "
                "'-----BEGIN CERTIFICATE-----' blocks)"
            )
        for number, block in enumerate(blocks, start=1):
            try:
                ssl.PEM_cert_to_DER_cert(block)
                checker.load_verify_locations(cadata=block)
            except (ValueError, ssl.SSLError) as exc:
                raise TrustError(
                    f"--ca-file {path}: certificate {number} is not a valid X.509 "
                    f"certificate: {exc}"
                ) from None
            found.append(block + "\n")
    return "".join(found)


def client_context(trusted: str = "") -> ssl.SSLContext:
    """A client context that verifies servers against the system's CAs, the Mozilla
    bundle (certifi: a machine without a CA store still reaches public services) and
    ``trusted`` (PEM text from :func:`load_trusted_certificates`)."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    if trusted:
        context.load_verify_locations(cadata=trusted)
        # A server's self-signed certificate, trusted as it is, is a chain of one: not
        # the kind of CA certificate OpenSSL would otherwise ask the chain to end in.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


__all__ = ["client_context", "load_trusted_certificates"]
