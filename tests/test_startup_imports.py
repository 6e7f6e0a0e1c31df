"""What `gradcheck scan` loads and does at start-up beyond the scan (issue 16, part 5).

Each CLI check runs the real entry point (`python -m gradcheck_cli`, whose `main()` owns the
process) in a fresh interpreter and reads `sys.modules` and the collector's frozen count at exit:
what an earlier test imported in this process would hide an import.

* typer coerces option values through pydantic adapters; the app's LazyCoercionGroup (cli/
  lazy_coercion.py) skips them where the result is certain, so a plain scan never imports pydantic,
  and a value only the adapter can judge still gets typer's own answer (result and message);
* the CLI freezes the heap after torch's import (cli/process_heap.py) so that no full collection
  walks torch's objects; an in-process run (a test runner, the API) leaves the collector alone.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest
from typer.models import OptionInfo
from typer.testing import CliRunner

from gradcheck_cli.cli import process_heap
from gradcheck_cli.cli.app import app
from gradcheck_cli.cli.lazy_coercion import known_result

_MAIN = """
import gc, json, runpy, sys
sys.argv = ["gradcheck"] + json.loads(sys.argv[1])
code = 0
try:
    runpy.run_module("gradcheck_cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
top = sorted({m.split(".")[0] for m in sys.modules} | {m for m in sys.modules if m.startswith("typer.")})
sys.stderr.write("\\nEXIT " + json.dumps({"code": code, "modules": top, "frozen": gc.get_freeze_count()}) + "\\n")
"""

SMALL = ["--batches", "1", "--batch-size", "4"]


def _cli(argv: list[str]) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", _MAIN, json.dumps(argv)], capture_output=True, text=True,
                          timeout=120)
    marker = done.stderr.rindex("\nEXIT ")
    return json.loads(done.stderr[marker + len("\nEXIT "):]), done.stderr[:marker]


def test_a_json_scan_imports_no_pydantic_and_freezes_the_heap_after_torch() -> None:
    result, _ = _cli(["scan", "builtin:relu-he", "--format", "json", *SMALL])
    assert result["code"] == 0
    assert "torch" in result["modules"]  # the scan did run
    assert "pydantic" not in result["modules"] and "typer._adapters" not in result["modules"]
    assert result["frozen"] > 10_000  # torch's objects, out of the collector's way


def test_numbers_and_strings_on_the_command_line_need_no_pydantic() -> None:
    result, _ = _cli(["scan", "builtin:relu-he", "--format", "json", "--seed", "3", "--lr", "0.05",
                      "--steps", "1", "--device", "cpu", "--batches", "2", "--batch-size", "4"])
    assert result["code"] == 0
    assert "pydantic" not in result["modules"]


def test_a_table_scan_still_loads_rich() -> None:
    result, _ = _cli(["scan", "builtin:relu-he", "--format", "table", *SMALL])
    assert result["code"] == 0
    assert "rich" in result["modules"]


def test_a_value_only_typer_can_judge_gets_typers_own_message() -> None:
    result, stderr = _cli(["scan", "builtin:relu-he", "--batches", "abc"])
    assert result["code"] == 2
    assert "Invalid value for '--batches': Input should be a valid integer" in stderr
    assert "pydantic" in result["modules"]  # typer's own adapter judged it
    result, _ = _cli(["scan", "builtin:relu-he", "--format", "json", "--batches", "1_0", "--batch-size", "4"])
    assert result["code"] == 0  # typer accepts 1_000-style numbers: still does


_VALUES = {
    int: ["0", "7", "007", "+5", "-3", "-0", "123456789012345678", " 5", "5 ", "1_000", "1e3", "1.0", "",
          "abc", "\uff10", "\u0663", "1234567890123456789012"],
    float: ["0", "0.01", "1.", "1e-3", "1E+5", ".5", "+.5", "-2.5e10", "1_0.0", "inf", "nan", " 1.0", "1e", "",
            "1e400", "00.1", "0x10"],
    str: ["x", "", " a ", "builtin:relu-he", "\u00fcn\u00ef", "--format"],
}


@pytest.mark.parametrize("annotation", [int, float, str])
def test_a_known_result_is_what_typers_adapter_returns(annotation: type) -> None:
    from typer._adapters import build_adapter  # typer's own coercion (imports pydantic)

    adapter = build_adapter(annotation, OptionInfo())
    known_count = 0
    for text in _VALUES[annotation]:
        known, result = known_result(annotation, text, plain=True)
        if not known:
            continue
        known_count += 1
        expected = adapter.validate_python(text)
        assert (result, type(result)) == (expected, type(expected)), text
    assert known_count >= 5  # the fast path is taken for the common spellings
    assert known_result(annotation, "1", plain=False) == (False, None)  # bounds, parser, path: typer's


def test_an_in_process_run_leaves_the_collector_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_heap, "_state", {"owned": False, "frozen": False})  # as a fresh process
    before = gc.get_freeze_count()
    done = CliRunner().invoke(app, ["scan", "builtin:relu-he", "--format", "json", *SMALL])
    assert done.exit_code == 0, done.output
    assert gc.get_freeze_count() == before
    assert process_heap._state["frozen"] is False
