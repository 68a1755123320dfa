"""``vessel serve`` options checked at start, run as an operator runs it."""

from __future__ import annotations

from pathlib import Path

import trio

from ._support import SERVE, base_env


async def test_a_ca_file_that_cannot_be_used_stops_the_start_with_one_line(
    tmp_path: Path,
) -> None:
    """A missing or wrong ``--ca-file`` ends ``vessel serve`` at once, exit 1, with one
    line naming the file and the problem: before the data dir is touched, and before any
    module could run without the trust its admin asked for."""
    not_pem = tmp_path / "ha.crt"
    not_pem.write_bytes(b"\x30\x82\x01\x0a binary DER, not PEM")
    for ca_file, problem in ((tmp_path / "missing.pem", "cannot read it"),
                             (not_pem, "no certificate in it")):  # fmt: skip
        data = tmp_path / "data"
        serve = [*SERVE, "--data-dir", str(data), "--port", "0", "--no-bundled"]
        with trio.fail_after(30):
            done = await trio.run_process(
                [*serve, "--ca-file", str(ca_file)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=base_env(),
            )
        err = done.stderr.decode()
        assert done.returncode == 1, err
        assert err.strip().splitlines()[-1].startswith(f"vessel: --ca-file {ca_file}: {problem}")
        assert "Traceback" not in err, err
        assert not data.exists()
