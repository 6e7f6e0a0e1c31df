"""--checkpoint with the files users actually have, still read with weights_only=True.

A state_dict saved from a torch.compile'd model ("_orig_mod." keys), a Lightning .ckpt ("model."
keys under "state_dict", next to hyper-parameters and loop state), numpy scalars as metadata; a
global that is not safe is refused by name; a small file that would inflate is refused before it
is inflated.
"""

from __future__ import annotations

import collections
import math
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from checkpoint_files import inflating_checkpoint
from cli_errors import assert_one_line_error
from model_files import HEALTHY_FILE
from torch import nn
from typer.testing import CliRunner

from gradcheck_cli import scan
from gradcheck_cli.cli.app import app
from gradcheck_cli.target.checkpoint import MAX_INFLATION, read_checkpoint
from gradcheck_cli.target.resolve import Target

runner = CliRunner()


def _build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _target(model: nn.Module) -> Target:
    return Target("net", lambda: model, lambda n: (torch.randn(n, 8), torch.randint(0, 4, (n,))))


def _trained_state() -> dict[str, torch.Tensor]:
    """Weights unlike the freshly built model's, so that loading them is visible."""
    return {k: v * 3.0 + 0.25 for k, v in _build().state_dict().items()}


def _assert_loaded(path: Path, state: dict[str, torch.Tensor]) -> None:
    model = _build()
    report = scan(_target(model), checkpoint=str(path))
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    first = {layer.name: layer for layer in report.layers}["0"]
    norm = math.sqrt(float(state["0.weight"].pow(2).sum() + state["0.bias"].pow(2).sum()))
    assert first.weight_norm == pytest.approx(norm, rel=1e-5)


def test_state_dict_of_a_compiled_model(tmp_path: Path) -> None:
    # torch.compile(model).state_dict() prefixes every key with the wrapper's attribute "_orig_mod."
    # (OptimizedModule); written out here because importing dynamo takes seconds.
    state = _trained_state()
    path = tmp_path / "compiled.pt"
    torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, path)
    _assert_loaded(path, state)


def test_compiled_data_parallel_prefixes_are_stripped_together(tmp_path: Path) -> None:
    state = _trained_state()
    path = tmp_path / "compiled_ddp.pth"
    torch.save({f"_orig_mod.module.{k}": v for k, v in state.items()}, path)
    _assert_loaded(path, state)


def _lightning_checkpoint(state: dict[str, torch.Tensor], hyper_parameters: dict[str, object]) -> dict[str, object]:
    """The layout Lightning 2.x writes for a LightningModule that holds the network as self.model."""
    return {
        "epoch": 4,
        "global_step": 250,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": collections.OrderedDict((f"model.{k}", v) for k, v in state.items()),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 5, "completed": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
            "monitor": "val_loss", "best_model_score": torch.tensor(0.41), "best_model_path": "ckpt/best.ckpt",
            "dirpath": "ckpt", "best_k_models": {"ckpt/best.ckpt": torch.tensor(0.41)}}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(250.0), "exp_avg": torch.zeros(16, 8)}},
                              "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1, 2, 3]}]}],
        "lr_schedulers": [{"last_epoch": 4, "_last_lr": [1e-3]}],
        "hparams_name": "kwargs",
        "hyper_parameters": hyper_parameters,
    }


def test_lightning_ckpt_with_model_prefix(tmp_path: Path) -> None:
    state = _trained_state()
    path = tmp_path / "epoch=4-step=250.ckpt"
    torch.save(_lightning_checkpoint(state, {"hidden": 16, "lr": 1e-3, "activation": "relu"}), path)
    _assert_loaded(path, state)


def test_cli_reads_a_lightning_ckpt(tmp_path: Path) -> None:
    model_file = tmp_path / "model.py"
    model_file.write_text(textwrap.dedent(HEALTHY_FILE))
    path = tmp_path / "last.ckpt"
    torch.save(_lightning_checkpoint(_trained_state(), {"hidden": 16}), path)
    result = runner.invoke(app, ["scan", str(model_file), "--checkpoint", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"checkpoint": "' in result.stdout


def test_a_prefix_the_model_has_itself_is_kept(tmp_path: Path) -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = _build()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    state = {f"model.{k}": v for k, v in _trained_state().items()}
    path = tmp_path / "wrapped.pt"
    torch.save(state, path)
    model = Wrapper()
    scan(Target("wrapped", lambda: model, lambda n: (torch.randn(n, 8), torch.randint(0, 4, (n,)))),
         checkpoint=str(path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_mismatch_after_stripping_names_the_prefix(tmp_path: Path) -> None:
    state = {f"model.{k}": v for k, v in _trained_state().items() if k != "2.bias"}
    path = tmp_path / "partial.ckpt"
    torch.save({"state_dict": state, "epoch": 1}, path)
    model_file = tmp_path / "model.py"
    model_file.write_text(textwrap.dedent(HEALTHY_FILE))
    assert_one_line_error(runner.invoke(app, ["scan", str(model_file), "--checkpoint", str(path)]),
                          "keys read without their prefix 'model.'", "missing keys: 2.bias")


def test_numpy_scalar_metadata_is_accepted(tmp_path: Path) -> None:
    numpy = pytest.importorskip("numpy")
    state = _trained_state()
    path = tmp_path / "with_numpy.ckpt"
    hyper = {"lr": numpy.float32(1e-3), "hidden": numpy.int64(16), "use_bn": numpy.bool_(False)}
    checkpoint = _lightning_checkpoint(state, hyper)
    checkpoint.update(best_acc=numpy.float64(0.93), epoch=numpy.int64(4), tag=numpy.str_("run-7"))
    torch.save(checkpoint, path)
    with pytest.raises(pickle.UnpicklingError, match="numpy"):  # torch alone refuses this file
        torch.load(path, weights_only=True)
    _assert_loaded(path, state)


def test_numpy_1_scalars_are_accepted_under_numpy_2(tmp_path: Path) -> None:
    """numpy 1 pickled its scalars as numpy.core.multiarray.scalar, numpy 2 as numpy._core...:
    a checkpoint from either reads under either."""
    import zipfile

    numpy = pytest.importorskip("numpy")
    state = _trained_state()
    saved = tmp_path / "saved.pt"
    torch.save({"state_dict": state, "best_acc": numpy.float64(0.93)}, saved)
    path = tmp_path / "other_numpy.pt"
    names = (b"numpy._core.multiarray", b"numpy.core.multiarray")
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(path, "w") as target:
        for record in source.infolist():
            data = source.read(record.filename)
            if record.filename.endswith("data.pkl"):
                old, new = names if names[0] in data else names[::-1]
                assert old in data
                data = data.replace(old, new)
            target.writestr(record.filename, data)
    _assert_loaded(path, state)


class RunConfig:
    """A custom class stored in a checkpoint: unpickling it would import and build user code."""

    def __init__(self) -> None:
        self.lr = 0.1


def _refused_line(tmp_path: Path, payload: object) -> str:
    model_file = tmp_path / "model.py"
    model_file.write_text(textwrap.dedent(HEALTHY_FILE))
    path = tmp_path / "with_payload.pt"
    torch.save({"state_dict": _trained_state(), "extra": payload}, path)
    return assert_one_line_error(runner.invoke(app, ["scan", str(model_file), "--checkpoint", str(path)]),
                                 f"refusing to load {path}", "torch.save(model.state_dict()")


def test_a_global_that_is_not_safe_is_refused_by_name(tmp_path: Path) -> None:
    line = _refused_line(tmp_path, RunConfig())
    assert f"it needs the global {__name__}.RunConfig" in line


def test_numpy_arrays_stay_refused_by_name(tmp_path: Path) -> None:
    numpy = pytest.importorskip("numpy")
    line = _refused_line(tmp_path, numpy.arange(3))
    assert "it needs the global numpy." in line and "multiarray._reconstruct" in line


# ------------------------------------------------------------------------------------ memory

def test_crafted_file_is_what_torch_reads(tmp_path: Path) -> None:
    """The helper writes a file torch.load reads as a tensor of zeros (checked small)."""
    path = tmp_path / "small.pt"
    inflating_checkpoint(path, 1 << 22)
    assert path.stat().st_size < 10_000
    loaded = torch.load(path, weights_only=True)
    assert loaded["0.weight"].shape == (1 << 20,) and not loaded["0.weight"].any()


PEAK_RSS = """
import resource, sys
from gradcheck_cli.cli.app import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def test_a_file_that_inflates_to_1_gib_is_refused_before_it_inflates(tmp_path: Path) -> None:
    inflated = 1 << 30
    path = tmp_path / "bomb.pt"
    inflating_checkpoint(path, inflated)
    assert path.stat().st_size < 2 << 20  # about 1 MB on disk
    model_file = tmp_path / "model.py"
    model_file.write_text(textwrap.dedent(HEALTHY_FILE))
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, "scan", str(model_file), "--checkpoint", str(path)],
                          capture_output=True, text=True, timeout=120)
    code, peak = (int(word) for word in done.stdout.split())
    assert code == 2, done.stderr
    assert "would inflate to 1.0 GiB from a 1021.9 KiB file" in done.stderr
    assert f"at most {MAX_INFLATION}x the file's size" in done.stderr
    assert peak < inflated // 2, f"peak RSS {peak / 2**20:.0f} MiB"  # torch, imported, is ~250 MiB


def test_zip_checkpoints_are_memory_mapped(tmp_path: Path) -> None:
    """Tensors read from torch.save's zip format stay in the file until used (torch.load mmap=True)."""
    path = tmp_path / "weights.pt"
    torch.save(_trained_state(), path)
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs Linux /proc to see the mapping")
    loaded = read_checkpoint(str(path))
    pointer = loaded["0.weight"].data_ptr()
    mapped = [line.split()[0].split("-") for line in maps.read_text().splitlines() if line.endswith(str(path))]
    assert any(int(start, 16) <= pointer < int(end, 16) for start, end in mapped)
