"""Running anyone's code in CI (isolation.py): the same seed gives the same bytes for user models,
stdout holds only the report, every exit from user code is an honest exit 2, and the process comes
back as the user had it (default dtype, grad mode, working directory, RNG states).

What is about processes (bytes across interpreters, fd 1, atexit, exit codes, the working
directory) runs the CLI in a subprocess; the rest uses typer's CliRunner or the API.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_errors import assert_one_line_error
from typer.testing import CliRunner

from gradcheck_cli import scan
from gradcheck_cli.cli.app import app
from gradcheck_cli.target.isolation import capture_rng, restore_rng, seed_all

HAS_NUMPY = importlib.util.find_spec("numpy") is not None  # optional for gradcheck

runner = CliRunner()

# A default-init model: no torch.manual_seed anywhere, as most user files are written.
DEFAULT_INIT = """
import torch
from torch import nn

def build_model():
    layers = []
    for _ in range(8):
        layers += [nn.Linear(16, 16), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(16, 4))

def make_batch(batch_size):
    return torch.randn(batch_size, 16), torch.randint(0, 4, (batch_size,))
"""

DROPOUT = """
import torch
from torch import nn
from torch.nn import functional as F

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc2(F.dropout(self.drop(torch.relu(self.fc1(x))), 0.2, self.training))

def make_batch(batch_size):
    return torch.randn(batch_size, 16), torch.randint(0, 4, (batch_size,))
"""

# Seeded model, unseeded batches: numpy's and Python's global RNGs are the only randomness.
NUMPY_BATCH = """
import numpy as np
import torch
from torch import nn

def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))

def make_batch(batch_size):
    x = torch.from_numpy(np.random.randn(batch_size, 16).astype("float32"))
    return x, torch.from_numpy(np.random.randint(0, 4, size=batch_size))
"""

RANDOM_BATCH = NUMPY_BATCH.replace("import numpy as np", "import random").replace(
    'torch.from_numpy(np.random.randn(batch_size, 16).astype("float32"))',
    "torch.tensor([[random.gauss(0, 1) for _ in range(16)] for _ in range(batch_size)])").replace(
    "torch.from_numpy(np.random.randint(0, 4, size=batch_size))",
    "torch.tensor([random.randrange(4) for _ in range(batch_size)])")

HEALTHY = """
import torch
from torch import nn

def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
"""

# Everything a model file does to stdout: prints at import and in __init__ (nanoGPT, minGPT),
# logging to sys.stdout, raw writes to fd 1, C stdio, an atexit handler, a leftover breakpoint().
NOISY = """
import atexit, ctypes, logging, os, sys
import torch
from torch import nn

print("noise: print at import")
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="noise: %(message)s")
atexit.register(print, "noise: print in atexit")
try:
    LIBC = ctypes.CDLL(None)
except OSError:  # no C library to call here: the other writes still count
    LIBC = None

class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        print("noise: number of parameters: %.2fM" % 0.0)

    def forward(self, x):
        os.write(1, b"noise: os.write to fd 1\\n")
        logging.info("logging to stdout")
        if LIBC is not None:
            LIBC.printf(b"noise: printf from C\\n")
        breakpoint()
        return self.body(x)

def build_model():
    torch.manual_seed(0)
    return GPT()
"""
NOISE = ["print at import", "number of parameters", "os.write to fd 1", "logging to stdout",
         "print in atexit"]


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))


def _env() -> dict[str, str]:
    # One thread each: two processes run at once on a small machine.
    return {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "PYTHONBREAKPOINT": ""}


def _start(folder: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gradcheck_cli", *args], cwd=folder, env=_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def _recipe(folder: Path, name: str, scans: list[tuple[str, str]], batches: int = 2) -> str:
    lines = ["version: 1", f"defaults: {{batches: {batches}}}", "scans:"]
    lines += [f"  - {{name: {scan}, target: {target}}}" for scan, target in scans]
    (folder / name).write_text("\n".join(lines) + "\n")
    return name


def _reports(stdout: str) -> dict[str, dict]:
    """name -> report of every scan of a `run --format json` document (all must have run)."""
    scans = json.loads(stdout)["scans"]
    assert all(s["error"] is None for s in scans), [s["error"] for s in scans]
    return {s["name"]: s["report"] for s in scans}


def _line_of(text: str, needle: str) -> int:
    """1-based line of `needle` in a model file written with _write (dedented as there)."""
    lines = textwrap.dedent(text).splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


# --------------------------------------------------------------------------------------------------
# 1. Same seed, same report
# --------------------------------------------------------------------------------------------------


MODELS = {"default_init.py": DEFAULT_INIT, "dropout.py": DROPOUT, "random_batch.py": RANDOM_BATCH,
          **({"numpy_batch.py": NUMPY_BATCH} if HAS_NUMPY else {})}


@pytest.mark.slow  # two interpreters, four scans each
def test_same_seed_same_bytes_across_processes_for_user_models(tmp_path: Path) -> None:
    """Default init, dropout, numpy and `random` batches: two interpreters, the same JSON bytes."""
    _write(tmp_path, MODELS)
    recipe = _recipe(tmp_path, "all.yaml", [(Path(name).stem, name) for name in MODELS])
    runs = [_start(tmp_path, "run", recipe, "--format", "json") for _ in range(2)]
    (code_a, run_a, err_a), (code_b, run_b, _) = map(_finish, runs)
    assert code_a in (0, 1), err_a
    assert code_a == code_b
    assert set(_reports(run_a)) == {Path(name).stem for name in MODELS}
    assert run_a == run_b


def test_the_same_target_twice_in_a_recipe_gives_the_same_report(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    batches = "numpy_batch.py" if HAS_NUMPY else "random_batch.py"
    _write(tmp_path, {"default_init.py": DEFAULT_INIT, batches: MODELS[batches]})
    recipe = _recipe(tmp_path, "twice.yaml", [("first", "default_init.py"), ("numpy", batches),
                                              ("again", "default_init.py"), ("numpy2", batches)])
    result = runner.invoke(app, ["run", recipe, "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    reports = _reports(result.stdout)
    assert reports["first"] == reports["again"]
    assert reports["numpy"] == reports["numpy2"]


# A model file that changes process state at import, as scripts do; on its own it scans fine.
STATE_CHANGER = """
import os
import torch
from torch import nn

torch.set_default_dtype(torch.float64)
torch.set_grad_enabled(False)
torch.set_num_threads(torch.get_num_threads() + 1)
os.makedirs("data", exist_ok=True)
os.chdir("data")

def build_model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

def make_batch(batch_size):
    return torch.randn(batch_size, 8), torch.randint(0, 4, (batch_size,))
"""


def test_the_order_of_the_scans_does_not_matter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, {**MODELS, "state_changer.py": STATE_CHANGER})
    scans = [("changer", "state_changer.py"), *((Path(name).stem, name) for name in MODELS)]
    forward = runner.invoke(app, ["run", _recipe(tmp_path, "forward.yaml", scans), "--format", "json"])
    backward = runner.invoke(app, ["run", _recipe(tmp_path, "backward.yaml", scans[::-1]), "--format", "json"])
    assert forward.exit_code in (0, 1), forward.output
    assert _reports(forward.stdout) == _reports(backward.stdout)
    # ... and the same scans one at a time, each in a fresh recipe
    for name, target in scans:
        alone = runner.invoke(app, ["run", _recipe(tmp_path, f"{name}.yaml", [(name, target)]), "--format", "json"])
        assert _reports(alone.stdout)[name] == _reports(forward.stdout)[name], name


def test_the_api_seeds_the_model_and_gives_the_callers_rng_states_back(tmp_path: Path) -> None:
    _write(tmp_path, MODELS)
    torch.manual_seed(1234)
    random.seed(1234)
    before = capture_rng()
    reports = {name: scan(str(tmp_path / name), batches=1) for name in MODELS}
    for name, report in reports.items():
        assert scan(str(tmp_path / name), batches=1) == report, name
    after = capture_rng()
    assert torch.equal(before.torch, after.torch)
    assert before.python == after.python
    if HAS_NUMPY:
        assert all(a == b if not hasattr(a, "shape") else (a == b).all()
                   for a, b in zip(before.numpy, after.numpy))


def test_seeding_skips_numpy_when_it_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)  # `import numpy` raises ImportError
    states = capture_rng()
    assert states.numpy is None
    seed_all(7)
    first = torch.rand(3), random.random()
    seed_all(7)
    assert torch.equal(torch.rand(3), first[0]) and random.random() == first[1]
    restore_rng(states)


# --------------------------------------------------------------------------------------------------
# 2. stdout holds only the report
# --------------------------------------------------------------------------------------------------


def test_stdout_holds_only_the_json_report_whatever_the_model_writes(tmp_path: Path) -> None:
    _write(tmp_path, {"model.py": NOISY})
    code, stdout, stderr = _finish(_start(tmp_path, "scan", "model.py", "--format", "json", "--batches", "2"))
    assert code == 0, stderr
    assert "noise" not in stdout
    document = json.loads(stdout)  # the whole of stdout is one JSON document
    assert document["target"] == "model.py" and stdout.startswith("{")
    for noise in NOISE:
        assert f"noise: {noise}" in stderr, noise
    if "printf from C" not in stderr:  # C stdio too, where there is a C library to call
        assert "ctypes" in stderr or os.name == "nt", stderr
    # the leftover breakpoint() neither waited for input nor wrote to stdout: skipped, once
    warning = f"gradcheck: warning: skipped breakpoint() at model.py:{_line_of(NOISY, 'breakpoint()')}"
    assert stderr.count(warning) == 1, stderr
    # the user's atexit handler ran after the report, on stderr
    assert stderr.rstrip().endswith("noise: print in atexit")


def test_quiet_leaves_out_the_breakpoint_warning_and_a_recipe_keeps_stdout_clean(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONBREAKPOINT", raising=False)
    # in-process: an atexit handler would print when pytest exits, so this one has none
    _write(tmp_path, {"model.py": NOISY.replace('atexit.register(print, "noise: print in atexit")\n', "")})
    result = runner.invoke(app, ["run", _recipe(tmp_path, "noisy.yaml", [("noisy", "model.py")], batches=1),
                                 "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    assert "noise" not in result.stdout and _reports(result.stdout)["noisy"]["verdict"] == "healthy"
    assert "noise: print at import" in result.stderr
    assert "breakpoint" not in result.stderr


# --------------------------------------------------------------------------------------------------
# 3. Every exit honest
# --------------------------------------------------------------------------------------------------


EXIT_IN_FORWARD = """
import sys
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if x.shape[0] > 0:
            sys.exit(0)
        return self.fc(x)

def build_model():
    return Net()
"""

EXIT_IN_LOSS = HEALTHY + """
def make_batch(batch_size):
    return torch.randn(batch_size, 8), torch.randint(0, 4, (batch_size,))

def loss_fn(output, target):
    raise SystemExit("the loss is broken")
"""

BASE_EXCEPTION_IN_FORWARD = """
import torch
from torch import nn

class StopTraining(BaseException):
    pass

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        raise StopTraining("early stop")

def build_model():
    return Net()
"""


def test_sys_exit_0_in_the_forward_is_exit_2_with_one_line_not_a_silent_0(tmp_path: Path) -> None:
    _write(tmp_path, {"model.py": EXIT_IN_FORWARD})
    code, stdout, stderr = _finish(_start(tmp_path, "scan", "model.py", "--format", "json"))
    assert code == 2, stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = f"model.py:{_line_of(EXIT_IN_FORWARD, 'sys.exit(0)')}"
    assert lines[0].startswith(f"gradcheck: error: {line}: forward() raised SystemExit: 0 "), lines[0]
    assert "sys.exit()" in lines[0]


@pytest.mark.parametrize(("text", "function", "needle", "raised"), [
    (EXIT_IN_LOSS, "loss_fn", "raise SystemExit", "SystemExit: the loss is broken"),
    (BASE_EXCEPTION_IN_FORWARD, "forward", "raise StopTraining", "StopTraining: early stop"),
], ids=["sys-exit-message-in-loss-fn", "base-exception-in-forward"])
def test_an_exit_from_user_code_is_exit_2_naming_the_function_and_line(
        text: str, function: str, needle: str, raised: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, {"model.py": text})
    result = runner.invoke(app, ["scan", "model.py", "--format", "json"])
    assert result.stdout == ""
    assert_one_line_error(result, f"model.py:{_line_of(text, needle)}: {function}() raised {raised}",
                          "during the forward pass of batch 1/3")


def test_an_exit_in_one_scan_of_a_recipe_does_not_end_the_others(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, {"exits.py": EXIT_IN_FORWARD, "healthy.py": HEALTHY})
    result = runner.invoke(app, ["run", _recipe(tmp_path, "r.yaml", [("exits", "exits.py"), ("ok", "healthy.py")]),
                                 "--format", "json"])
    assert result.exit_code == 2, result.output
    scans = {s["name"]: s for s in json.loads(result.stdout)["scans"]}
    assert "forward() raised SystemExit: 0" in scans["exits"]["error"]
    assert scans["ok"]["report"]["verdict"] == "healthy"


# --------------------------------------------------------------------------------------------------
# 4. The process the user had
# --------------------------------------------------------------------------------------------------


ARGPARSE_AT_IMPORT = """
import argparse
import sys
import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--hidden", type=int, default=16)
opt = parser.parse_args()
ARGV_AT_IMPORT = list(sys.argv)

def build_model():
    torch.manual_seed(0)
    assert ARGV_AT_IMPORT == [__file__], ARGV_AT_IMPORT
    return nn.Sequential(nn.Linear(8, opt.hidden), nn.ReLU(), nn.Linear(opt.hidden, 4))
"""


def test_a_script_parsing_its_options_at_import_sees_its_defaults_not_gradchecks_argv(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pytorch/examples' dcgan, vae and reinforce call parser.parse_args() at top level: with
    # gradcheck's argv they exited with "unrecognized arguments: scan model.py --format json".
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, {"model.py": ARGPARSE_AT_IMPORT})
    argv = list(sys.argv)
    result = runner.invoke(app, ["scan", "model.py", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verdict"] == "healthy"
    assert sys.argv == argv


NO_GRAD_AT_IMPORT = HEALTHY.replace("from torch import nn\n", "from torch import nn\n\ntorch.set_grad_enabled(False)\n")

CHDIR_AT_IMPORT = """
import os
import torch
from torch import nn

os.makedirs("elsewhere", exist_ok=True)
os.chdir("elsewhere")

def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
"""


def test_grad_switched_off_at_import_is_scanned_with_grad_not_misdiagnosed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, {"model.py": NO_GRAD_AT_IMPORT, "plain.py": HEALTHY})
    result = runner.invoke(app, ["scan", "model.py", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verdict"] == "healthy"
    assert torch.is_grad_enabled()
    plain = runner.invoke(app, ["scan", "plain.py", "--format", "json"])
    assert json.loads(plain.stdout)["layers"] == json.loads(result.stdout)["layers"]


NO_GRAD_IN_MAKE_BATCH = HEALTHY + """

def make_batch(batch_size):
    torch.set_grad_enabled(False)  # as an inference data pipeline might, left switched off
    return torch.randn(batch_size, 8), torch.randint(0, 4, (batch_size,))
"""


def test_grad_switched_off_in_make_batch_still_gives_the_loss_its_gradient(tmp_path: Path) -> None:
    _write(tmp_path, {"model.py": NO_GRAD_IN_MAKE_BATCH})
    with torch.enable_grad():
        report = scan(str(tmp_path / "model.py"), batches=2)
        assert torch.is_grad_enabled()
    assert report.verdict.value == "healthy"
    assert all(layer.status.value == "healthy" for layer in report.layers)


def test_output_and_baseline_land_where_the_user_meant_after_a_chdir_at_import(tmp_path: Path) -> None:
    _write(tmp_path, {"model.py": CHDIR_AT_IMPORT})
    code, stdout, stderr = _finish(_start(tmp_path, "scan", "model.py", "--format", "json",
                                          "--output", "report.json", "--write-baseline", "baseline.txt"))
    assert code == 0, stderr
    assert stdout == ""
    assert json.loads((tmp_path / "report.json").read_text())["verdict"] == "healthy"
    assert (tmp_path / "baseline.txt").exists()
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == []
    assert "wrote the json report to report.json" in stderr


def test_a_chdir_at_import_does_not_break_the_next_scan_of_a_recipe(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    _write(tmp_path / "models", {"chdir.py": CHDIR_AT_IMPORT, "healthy.py": HEALTHY})
    recipe = _recipe(tmp_path, "r.yaml", [("moves", "models/chdir.py"), ("next", "models/healthy.py")])
    result = runner.invoke(app, ["run", recipe, "--format", "json", "--output", "out.json"])
    assert result.exit_code == 0, result.output
    assert set(_reports((tmp_path / "out.json").read_text())) == {"moves", "next"}
    assert Path.cwd() == tmp_path


def test_the_api_gives_back_default_dtype_grad_mode_threads_and_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    _write(tmp_path, {"model.py": STATE_CHANGER})
    with torch.no_grad():  # the caller's grad mode: the probe runs with grad all the same
        report = scan("model.py", batches=1)
        assert not torch.is_grad_enabled()
    assert report.verdict.value == "healthy"
    assert report.loss.kind == "cross_entropy"
    assert torch.get_default_dtype() == torch.float32
    assert torch.is_grad_enabled()
    assert torch.get_num_threads() == threads
    assert Path.cwd() == tmp_path
    assert (tmp_path / "data").is_dir()  # the model's own chdir did happen, during the scan
