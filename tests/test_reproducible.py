"""The same seed gives byte-identical JSON (in one process and across processes); every built-in
keeps its documented verdict across seeds 0..4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli.app import app
from gradcheck_cli.target.zoo import BUILTINS

runner = CliRunner()
SEEDS = range(5)
STEPS = ["--steps", "2", "--optimizer", "adam"]

# Runs in a fresh interpreter: every built-in through the CLI, with and without steps, one JSON
# document per line (the CLI's JSON is one document; newlines inside are escaped by json.dumps).
_DUMP_ALL = """
import json, sys
from typer.testing import CliRunner
from gradcheck_cli.cli.app import app
from gradcheck_cli.target.zoo import BUILTINS
runner = CliRunner()
for b in BUILTINS:
    for extra in ([], STEPS):
        result = runner.invoke(app, ["scan", "builtin:" + b.name, "--format", "json", *extra])
        print(json.dumps([b.name, extra, result.exit_code, result.stdout]))
""".replace("STEPS", repr(STEPS))


def _json(args: list[str]) -> str:
    result = runner.invoke(app, ["scan", *args, "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return result.stdout


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


@pytest.mark.parametrize("builtin", [b.name for b in BUILTINS])
def test_verdict_holds_across_five_seeds_and_same_seed_same_bytes(builtin: str) -> None:
    documented = next(b.verdict for b in BUILTINS if b.name == builtin)
    documents = {seed: _json([f"builtin:{builtin}", "--seed", str(seed)]) for seed in SEEDS}
    verdicts = {seed: json.loads(text)["verdict"] for seed, text in documents.items()}
    assert verdicts == dict.fromkeys(SEEDS, documented)
    # the same seed again, in the same process: the same bytes
    assert _json([f"builtin:{builtin}", "--seed", "0"]) == documents[0]
    # ... and the seed matters: other batches, other numbers
    assert documents[1] != documents[0]


def test_same_seed_same_bytes_with_adam_steps_in_one_process() -> None:
    first = _json(["builtin:relu-normal-init", *STEPS])
    assert _json(["builtin:relu-normal-init", *STEPS]) == first


def test_report_has_no_timestamps_or_timings() -> None:
    document = json.loads(_json(["builtin:relu-he"]))
    clock_words = {"time", "timestamp", "date", "datetime", "elapsed", "duration", "seconds", "ms", "started"}
    suspicious = {k for k in _keys(document) if clock_words & set(k.lower().replace("-", "_").split("_"))}
    assert suspicious == set()


def _run(args: list[str], hash_seed: str) -> subprocess.Popen[str]:
    # One thread each: both processes run at once on a small machine (the thread count is the same
    # in both, so it does not hide nondeterminism between them).
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _finish(process: subprocess.Popen[str]) -> str:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode in (0, 1), stderr
    return stdout


@pytest.mark.slow  # four interpreters, 42 scans: ~20 s on a quiet 2-core machine
def test_same_seed_same_bytes_across_processes() -> None:
    # Two interpreters with different hash seeds (set and dict-of-id iteration orders differ)
    # scan every built-in, with and without Adam steps; and the real entry point, twice.
    runs = [_run(["-c", _DUMP_ALL], "0"), _run(["-c", _DUMP_ALL], "12345"),
            _run(["-m", "gradcheck_cli", "scan", "builtin:cnn-resnet-bn", "--format", "json"], "1"),
            _run(["-m", "gradcheck_cli", "scan", "builtin:cnn-resnet-bn", "--format", "json"], "2")]
    first, second, cli_a, cli_b = (_finish(p) for p in runs)
    rows_a = [json.loads(line) for line in first.splitlines()]
    rows_b = [json.loads(line) for line in second.splitlines()]
    assert len(rows_a) == 2 * len(BUILTINS)
    for a, b in zip(rows_a, rows_b):
        assert a[2] in (0, 1), a
        assert a == b, f"builtin:{a[0]} {' '.join(a[1])} differs between processes"
    assert cli_a == cli_b
    assert json.loads(cli_a)["target"] == "builtin:cnn-resnet-bn"
    resnet = next(row for row in rows_a if row[0] == "cnn-resnet-bn" and not row[1])
    assert resnet[3] == cli_a  # the CLI in a subprocess writes what the in-process CLI writes
