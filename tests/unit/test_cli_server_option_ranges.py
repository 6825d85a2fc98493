"""`devassign server`'s timings and pool are range-checked like its other options: a unit
file's typo (``--down-after -1``) kept every host flapping down, ``--agent-takeover-after 0``
switched off the one-agent-per-host fence, and ``--db-pool-size 0`` or ``--down-after nan``
ended in an "unexpected ... or a bug" line."""

from __future__ import annotations

from pathlib import Path

import pytest

from devassign.cli.main import run


@pytest.mark.parametrize(
    "args",
    [
        ["--down-after", "-1"],
        ["--down-after", "0"],
        ["--down-after", "nan"],
        ["--down-after", "inf"],
        ["--reservation-ttl", "0"],
        ["--reservation-ttl", "1e300"],
        ["--agent-takeover-after", "0"],
        ["--db-pool-size", "0"],
        ["--db-pool-size", "-3"],
        ["--db-pool-timeout", "inf"],
        ["--db-statement-timeout", "nan"],
    ],
)
def test_a_timing_or_pool_out_of_range_is_a_usage_error(
    tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    status = run(["server", "--db", f"sqlite:///{db}", "--port", "0", *args])
    said = capsys.readouterr().err
    assert status == 2, said
    assert args[0] in said and "unexpected" not in said and "Traceback" not in said
    assert not db.exists()  # refused before anything was opened
