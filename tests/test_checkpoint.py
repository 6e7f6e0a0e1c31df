"""--checkpoint: weights loaded safely before the probe, and every bad file answered in one line."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_errors import assert_one_line_error
from model_files import HEALTHY_FILE as MODEL_FILE
from torch import nn
from typer.testing import CliRunner

from gradcheck_cli import scan
from gradcheck_cli.cli.app import app
from gradcheck_cli.errors import UserError
from gradcheck_cli.target.checkpoint import read_checkpoint
from gradcheck_cli.target.resolve import Target

runner = CliRunner()


def _build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _target(model: nn.Module | None = None) -> Target:
    return Target("net", lambda: model if model is not None else _build(),
                  lambda n: (torch.randn(n, 8), torch.randint(0, 4, (n,))))


def _scaled_state(scale: float) -> dict[str, torch.Tensor]:
    return {k: v * scale for k, v in _build().state_dict().items()}


def _weight_norm(state: dict[str, torch.Tensor], prefix: str) -> float:
    return math.sqrt(sum(float(v.pow(2).sum()) for k, v in state.items() if k.startswith(prefix)))


def _model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(MODEL_FILE))
    return path


def _scan_checkpoint(tmp_path: Path, checkpoint: Path):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["scan", str(_model_file(tmp_path)), "--checkpoint", str(checkpoint)])


class RunsCodeWhenUnpickled:
    """A pickle payload: unpickling it calls open(marker, "w"), creating the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------------ loading


def test_pt_weights_are_what_gets_scanned(tmp_path: Path) -> None:
    state = _scaled_state(3.0)
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    plain = scan(_target())
    loaded = scan(_target(), checkpoint=str(path))
    first = {layer.name: layer for layer in loaded.layers}["0"]
    assert first.weight_norm == pytest.approx(_weight_norm(state, "0."), rel=1e-5)
    assert first.weight_norm == pytest.approx(3.0 * {la.name: la for la in plain.layers}["0"].weight_norm,
                                              rel=1e-5)
    assert loaded.config["checkpoint"] == str(path)


@pytest.mark.parametrize("entry", ["state_dict", "model", "model_state_dict"])
def test_training_checkpoint_dict_entries(tmp_path: Path, entry: str) -> None:
    state = _scaled_state(0.5)
    path = tmp_path / "train.pth"
    torch.save({"epoch": 7, "optimizer": {"lr": 0.1}, entry: state}, path)
    loaded = read_checkpoint(str(path))
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_data_parallel_prefix_is_matched(tmp_path: Path) -> None:
    state = _scaled_state(2.0)
    path = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = _build()
    scan(_target(model), checkpoint=str(path))
    # the built model keeps the checkpoint's weights (it was built for this scan)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _write_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """The safetensors layout by hand (8-byte header length, JSON header, raw little-endian data):
    safetensors' own save_file needs numpy, which torch does not install."""
    import json
    import struct

    header: dict[str, object] = {}
    blobs, offset = [], 0
    for name, tensor in state.items():
        data = tensor.detach().to(torch.float32).contiguous().view(torch.uint8).flatten().tolist()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(bytes(data))
        offset += len(data)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_safetensors_file(tmp_path: Path) -> None:
    pytest.importorskip("safetensors.torch")
    state = _scaled_state(4.0)
    path = tmp_path / "weights.safetensors"
    _write_safetensors(state, path)
    loaded = scan(_target(), checkpoint=str(path))
    first = {layer.name: layer for layer in loaded.layers}["0"]
    assert first.weight_norm == pytest.approx(_weight_norm(state, "0."), rel=1e-5)


def test_safetensors_without_the_package_says_how_to_install(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors -> ImportError
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(UserError, match=r"pip install 'gradcheck\[safetensors\]'"):
        read_checkpoint(str(path))


def test_cli_checkpoint_option(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_scaled_state(1.0), path)
    result = runner.invoke(app, ["scan", str(_model_file(tmp_path)), "--checkpoint", str(path),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"checkpoint": "' in result.stdout


# ------------------------------------------------------------------------------------ refusing


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"0.weight": RunsCodeWhenUnpickled(marker)}, path)
    assert_one_line_error(_scan_checkpoint(tmp_path, path),
                          f"refusing to load {path}", "could run code", "torch.save(model.state_dict()")
    assert not marker.exists()
    # the payload is real: an unrestricted load runs it (proves the test above could fail)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_mismatch_lists_missing_unexpected_and_shape_mismatches(tmp_path: Path) -> None:
    state = _build().state_dict()
    del state["2.bias"]
    state["0.weight"] = torch.zeros(16, 9)
    for i in range(7):
        state[f"extra.{i}"] = torch.zeros(1)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    line = assert_one_line_error(_scan_checkpoint(tmp_path, path),
                                 "does not match the model Sequential", "missing keys: 2.bias",
                                 "unexpected keys: extra.0, extra.1, extra.2, extra.3, extra.4 ... and 2 more",
                                 "shape mismatches: 0.weight (checkpoint (16, 9), model (16, 8))")
    assert "extra.5" not in line


def _torch_file(path: Path, obj: object) -> None:
    torch.save(obj, path)


def _truncated_torch_file(path: Path) -> None:
    _torch_file(path, {"a": torch.ones(64)})
    path.write_bytes(path.read_bytes()[:200])


BAD_FILES = {
    "missing": (lambda p: None, "weights.pt", "no such file"),
    "directory": (lambda p: p.mkdir(), "ckpt.pt", "is a directory"),
    "unknown extension": (lambda p: p.write_bytes(b"x"), "weights.onnx", "unknown checkpoint format '.onnx'"),
    "empty": (lambda p: p.write_bytes(b""), "weights.pt", "it is empty"),
    "corrupt": (lambda p: p.write_bytes(b"this is not a checkpoint"), "weights.pt", "not a readable checkpoint"),
    "truncated": (_truncated_torch_file, "weights.pt", "truncated or corrupted"),
    "not a state_dict": (lambda p: _torch_file(p, [1, 2, 3]), "weights.pt", "does not hold a state_dict"),
    "dict without tensors": (lambda p: _torch_file(p, {"epoch": 3}), "weights.pt",
                             "does not hold a state_dict (found a dict with keys epoch)"),
    "empty dict": (lambda p: _torch_file(p, {}), "weights.pt", "does not hold a state_dict (found an empty dict)"),
    "corrupt safetensors": (lambda p: p.write_bytes(b"garbage garbage"), "w.safetensors",
                            "cannot read --checkpoint"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_checkpoint_files_exit_2_in_one_line(tmp_path: Path, case: str) -> None:
    make, name, needle = BAD_FILES[case]
    if "safetensors" in name:
        pytest.importorskip("safetensors")
    path = tmp_path / name
    make(path)
    assert_one_line_error(_scan_checkpoint(tmp_path, path), str(path), needle)


# ------------------------------------------------------------------------------------ tied weights


class _TiedLM(nn.Module):
    """A language model whose output layer shares the embedding's weight (GPT-2, T5, BERT's MLM)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(dim=1))


def test_tied_weight_stored_once_is_loaded_under_both_names(tmp_path: Path) -> None:
    # safetensors' save_model and transformers' save_pretrained keep one name of a tied parameter
    state = {k: v * 2.0 for k, v in _TiedLM().state_dict().items() if k != "head.weight"}
    path = tmp_path / "tied.pt"
    torch.save(state, path)
    model = _TiedLM()
    target = Target("lm", lambda: model, lambda n: (torch.randint(0, 20, (n, 5)), torch.randint(0, 20, (n,))))
    scan(target, checkpoint=str(path))
    assert torch.equal(model.embed.weight, state["embed.weight"])
    assert model.head.weight is model.embed.weight


def test_transformers_save_pretrained_checkpoint_loads(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors.torch")
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(1)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "saved")  # lm_head.weight left out
    model_file = tmp_path / "gpt2_model.py"
    model_file.write_text(textwrap.dedent("""
        import torch
        import transformers

        def build_model():
            torch.manual_seed(0)
            config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
            return transformers.GPT2LMHeadModel(config)

        def make_batch(batch_size):
            ids = torch.randint(0, 50, (batch_size, 8))
            return {"input_ids": ids, "labels": ids}
        """))
    result = runner.invoke(app, ["scan", str(model_file), "--checkpoint",
                                 str(tmp_path / "saved" / "model.safetensors"), "--batches", "1",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"verdict": "healthy"' in result.stdout
