"""``vessel serve --ca-file``: the certificates an admin adds to what module processes
trust for https:// and wss:// (vessel/_tls.py). Checked when the daemon starts; only
certificates are ever passed on."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from vessel._errors import TrustError
from vessel._tls import load_trusted_certificates


def test_certificates_are_read_from_every_file_and_nothing_else(tmp_path: Path) -> None:
    """A file may hold a server's key beside its certificate (as Home Assistant's own
    files often do): the key stays behind, the certificates of every file go on."""
    first, second = trustme.CA(), trustme.CA()
    leaf = first.issue_cert("homeassistant.local")
    combined = tmp_path / "ha.pem"
    combined.write_bytes(leaf.private_key_pem.bytes() + leaf.cert_chain_pems[0].bytes())
    other = tmp_path / "other-ca.pem"
    second.cert_pem.write_to_path(str(other))

    pem = load_trusted_certificates([combined, other])

    assert pem.count("-----BEGIN CERTIFICATE-----") == 2
    assert leaf.cert_chain_pems[0].bytes().decode() in pem
    assert second.cert_pem.bytes().decode() in pem
    assert "PRIVATE KEY" not in pem
    assert load_trusted_certificates([]) == ""


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        (b"", "no certificate"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no certificate"),
        (b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", "not a"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a"),
        (b"\xff\xfe binary", "no certificate"),
    ],
)
def test_a_file_that_is_not_usable_stops_the_start_and_says_why(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TrustError) as error:
        load_trusted_certificates([path])
    message = str(error.value)
    assert message.startswith(f"--ca-file {path}: "), message
    assert problem in message, message
