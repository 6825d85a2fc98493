"""A request file the CLI cannot read is a usage error naming the file, never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from devassign.cli.claims import build_body
from devassign.cli.client import CliError, ExitCode


def test_a_request_file_nested_past_the_decoder_is_a_usage_error(tmp_path: Path) -> None:
    """Not "an answer this command cannot read, or a bug": the file is wrong, and said so."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(CliError) as bad:
        build_body(None, deep, None)
    assert bad.value.exit_status == ExitCode.USAGE
    assert str(deep) in bad.value.message and "nested too deeply" in bad.value.message


@pytest.mark.parametrize("endless", [False, True])
def test_a_request_file_larger_than_a_claim_is_refused_unread(tmp_path: Path, endless: bool) -> None:
    """Past the 1 MiB a server takes: said at once, never read whole (``/dev/zero`` grew the
    command's memory without end)."""
    big = Path("/dev/zero") if endless else tmp_path / "big.json"
    if not endless:
        big.write_text('{"consumer": "vm", "x": "' + "a" * (1024 * 1024) + '"}')
    with pytest.raises(CliError) as bad:
        build_body(None, big, None)
    assert bad.value.exit_status == ExitCode.USAGE and "larger than a claim" in bad.value.message
    small = tmp_path / "small.json"
    small.write_text('{"consumer": "vm", "extra_specs": {"hardware_resource:GPU": "1"}}')
    assert build_body(None, small, None)["consumer"] == "vm"
