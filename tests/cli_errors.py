"""The one-line error a failed command must print, shared by the CLI, checkpoint and gating tests."""

from __future__ import annotations

from typer.testing import Result


def assert_one_line_error(result: Result, *needles: str) -> str:
    """Exit 2, one ``gradcheck: error:`` line on stderr, no traceback, every needle in the line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gradcheck: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
