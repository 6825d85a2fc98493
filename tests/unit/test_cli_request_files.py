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
