"""Start-up: each output format imports only its own renderer, so a `--format json` scan never loads
Rich or xml.etree, and `gradcheck --help` loads neither torch nor any renderer (issue 16, part 5).

Each check runs in a fresh interpreter and reads `sys.modules`: what an earlier test imported in
this process would hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("rich", "xml", "gradcheck_cli.report.render.table", "gradcheck_cli.report.render.junit",
         "gradcheck_cli.report.render.run_table", "gradcheck_cli.report.render.layer_table")
"""Modules (and their submodules) that only the table and JUnit formats need."""

_LOADED = """
import json, sys
def loaded(prefixes):
    return sorted(m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in prefixes))
"""

_CLI = _LOADED + """
from gradcheck_cli.cli.app import app
try:
    app(json.loads(sys.argv[1]))
except SystemExit:
    pass
sys.stderr.write("\\nLOADED " + json.dumps(loaded(json.loads(sys.argv[2]))) + "\\n")
"""

_RENDER = _LOADED + """
from format_reports import exploding_result
from gradcheck_cli.report.render import OutputFormat, render
seen = {}
for fmt in json.loads(sys.argv[1]):
    render([exploding_result()], OutputFormat(fmt))
    seen[fmt] = loaded(json.loads(sys.argv[2]))
print(json.dumps(seen))
"""


def _cli_loaded(argv: list[str], prefixes: tuple[str, ...]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _CLI, json.dumps(argv), json.dumps(prefixes)],
                          capture_output=True, text=True, check=True)
    marker = done.stderr.rindex("\nLOADED ")
    return list(json.loads(done.stderr[marker + len("\nLOADED "):]))


def test_a_json_scan_imports_neither_rich_nor_xml() -> None:
    argv = ["scan", "builtin:relu-he", "--format", "json", "--batches", "1", "--batch-size", "4"]
    loaded = _cli_loaded(argv, HEAVY + ("torch",))
    assert "torch" in loaded  # the scan did run
    assert [m for m in loaded if m.split(".")[0] != "torch"] == []


def test_help_imports_neither_torch_nor_a_renderer() -> None:
    for argv in (["--help"], ["scan", "--help"]):
        assert _cli_loaded(argv, HEAVY + ("torch", "gradcheck_cli.report.render")) == []


def test_each_format_imports_only_its_own_renderer() -> None:
    """Rendered in this order, Rich and xml.etree appear exactly when their format is first used."""
    order = ["json", "markdown", "sarif", "github", "junit", "table"]
    done = subprocess.run([sys.executable, "-c", _RENDER, json.dumps(order), json.dumps(["rich", "xml"])],
                          capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
    seen = json.loads(done.stdout)
    for fmt in ("json", "markdown", "sarif", "github"):
        assert seen[fmt] == [], fmt
    assert "xml.etree.ElementTree" in seen["junit"] and not any(m.startswith("rich") for m in seen["junit"])
    assert "rich.table" in seen["table"]
