"""python -m gradcheck_cli in a Python without the CLI's dependencies: one line, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

HIDE_TYPER = ("import sys, runpy; sys.modules['typer'] = None; "
              "runpy.run_module('gradcheck_cli', run_name='__main__')")


def test_a_missing_dependency_is_one_line_and_exit_2() -> None:
    done = subprocess.run([sys.executable, "-c", HIDE_TYPER, "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'typer'" in lines[0] and "pip install" in lines[0]
    assert done.stdout == ""
