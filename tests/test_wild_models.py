"""Models as they arrive from real projects: wrapped (torch.compile, DataParallel, DDP), scripted,
on the meta device, taking keyword arguments, returning dataclasses and nested containers."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typed_modules import narrow

from gradcheck_cli import scan
from gradcheck_cli.errors import UserError
from gradcheck_cli.report.records import Report
from gradcheck_cli.target.resolve import Target
from gradcheck_cli.target.scannable import unwrap_model

# torch.jit.script/trace are deprecated upstream; scripting models is exactly what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _classes(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 8), torch.randint(0, 4, (batch_size,))


def _scan(model: nn.Module, make_batch: Any = _classes, loss_fn: Any = None, **options: Any) -> Report:
    return scan(Target("model.py", lambda: model, make_batch, loss_fn), batches=2, **options)


def _same_scan(wrapped: nn.Module, bare: nn.Module) -> None:
    """The wrapped model scans exactly as the bare one: same layer names, same numbers."""
    assert _scan(wrapped).to_dict() == _scan(bare).to_dict()


# ------------------------------------------------------------------------------------ wrappers


def test_torch_compile_scans_the_original_module() -> None:
    """torch.compile returns an OptimizedModule around the model; the original is scanned (the
    compiled forward never runs, so this needs no compiler; backend="eager" keeps it so even if
    a future gradcheck did call it). Creating the wrapper imports torch._dynamo: the slowest test
    here, a few seconds."""
    model = _mlp()
    compiled = narrow(torch.compile(model, backend="eager"), nn.Module)  # an OptimizedModule
    assert [n for n, _ in compiled.named_modules()][1] == "_orig_mod"  # what we must not report
    assert unwrap_model(compiled) is model
    report = _scan(compiled)
    assert [layer.name for layer in report.layers] == ["0", "2"]
    _same_scan(compiled, _mlp())


def test_data_parallel_is_unwrapped() -> None:
    model = _mlp()
    wrapped = nn.DataParallel(model)  # on a CPU-only machine it holds the model and no replicas
    assert unwrap_model(wrapped) is model
    assert unwrap_model(nn.DataParallel(nn.DataParallel(model))) is model
    assert [layer.name for layer in _scan(wrapped).layers] == ["0", "2"]
    _same_scan(wrapped, _mlp())


def test_distributed_data_parallel_is_unwrapped(tmp_path: Path) -> None:
    """A real DDP wrapper, in a single-process gloo group (CPU, file rendezvous)."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch built without torch.distributed")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = _mlp()
        wrapped = nn.parallel.DistributedDataParallel(model)
        assert unwrap_model(wrapped) is model
        assert [layer.name for layer in _scan(wrapped).layers] == ["0", "2"]
        _same_scan(wrapped, _mlp())
    finally:
        dist.destroy_process_group()


def test_unwrapping_leaves_plain_modules_and_non_modules_alone() -> None:
    model = _mlp()
    assert unwrap_model(model) is model
    assert unwrap_model("not a model") == "not a model"

    class HasModuleAttribute(nn.Module):  # a user's own `.module` is not a wrapper
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)

    own = HasModuleAttribute()
    assert unwrap_model(own) is own


# ------------------------------------------------------------------------------ refused models


@pytest.mark.parametrize("make", [
    lambda m: torch.jit.script(m),
    lambda m: torch.jit.trace(m, torch.randn(2, 8)),
], ids=["script", "trace"])
def test_torchscript_is_refused_with_a_clear_message(make: Any) -> None:
    with pytest.raises(UserError) as info:
        _scan(make(_mlp()))
    message = str(info.value)
    assert message.startswith("model.py: the model is a TorchScript module")
    assert "scan the eager nn.Module" in message and "\n" not in message


def test_scripted_submodule_is_named() -> None:
    model = nn.Sequential(nn.Linear(8, 8), torch.jit.script(nn.Linear(8, 4)))
    with pytest.raises(UserError, match=r"contains a TorchScript module '1' \(RecursiveScriptModule\)"):
        _scan(model)


def test_meta_device_parameters_are_refused() -> None:
    with torch.device("meta"):
        model = _mlp()
    with pytest.raises(UserError) as info:
        _scan(model)
    message = str(info.value)
    assert "meta device ('0.weight' holds no data)" in message
    assert "model.to_empty(device='cpu')" in message and "--checkpoint" in message


def test_meta_model_materialised_with_to_empty_scans() -> None:
    """What the message tells the user to do works."""
    with torch.device("meta"):
        model = _mlp()
    model.to_empty(device="cpu")
    model.load_state_dict(_mlp().state_dict())
    assert _scan(model).verdict.value == "healthy"


# --------------------------------------------------------------------- inputs and outputs


class KeywordModel(nn.Module):
    """Hugging Face style: forward(input_ids, attention_mask=None), called with **batch."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.embed(input_ids)
        if attention_mask is not None:
            hidden = hidden * attention_mask.unsqueeze(-1)
        return self.head(hidden.mean(dim=1))


def test_keyword_arguments_from_a_dict_batch() -> None:
    seen: list[set[str]] = []

    def make_batch(batch_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        batch = {"input_ids": torch.randint(0, 20, (batch_size, 6)),
                 "attention_mask": torch.ones(batch_size, 6)}
        seen.append(set(batch))
        return batch, torch.randint(0, 3, (batch_size,))

    torch.manual_seed(0)
    report = _scan(KeywordModel(), make_batch)
    assert seen == [{"input_ids", "attention_mask"}] * 2
    assert [layer.name for layer in report.layers] == ["embed", "head"]
    assert report.loss.kind == "cross_entropy"


@dataclass
class Output:
    hidden: torch.Tensor
    logits: torch.Tensor


@dataclass
class Loose:
    """A dataclass without a `logits` field: its first tensor field is the prediction."""

    note: str
    prediction: torch.Tensor
    aux: torch.Tensor


class ModelOutput(OrderedDict):  # type: ignore[type-arg]
    """A stand-in for transformers.utils.ModelOutput (not installed here): a dataclass that is also
    an OrderedDict of its non-None fields, with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class CausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for key in ("loss", "logits"):
            if getattr(self, key) is not None:
                self[key] = getattr(self, key)


class Returns(nn.Module):
    def __init__(self, shape: str) -> None:
        super().__init__()
        self.shape = shape
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> Any:
        hidden = torch.relu(self.body(x))
        logits = self.head(hidden)
        if self.shape == "dataclass":
            return Output(hidden=hidden, logits=logits)
        if self.shape == "loose-dataclass":
            return Loose(note="x", prediction=logits, aux=hidden)
        if self.shape == "nested-dict":
            return {"aux": {"attention": None}, "out": {"scores": logits, "hidden": hidden}}
        if self.shape == "nested-tuple":
            return ((logits, hidden), {"hidden": hidden})
        if self.shape == "model-output":
            return CausalLMOutput(logits=logits)
        raise AssertionError(self.shape)


@pytest.mark.parametrize("shape", ["dataclass", "loose-dataclass", "nested-dict", "nested-tuple",
                                   "model-output"])
def test_structured_outputs_pick_the_logits(shape: str) -> None:
    """The loss is cross-entropy on the logits: the same numbers as a model returning the logits."""
    torch.manual_seed(0)
    structured = _scan(Returns(shape))
    torch.manual_seed(0)
    plain = Returns(shape)
    plain.forward = lambda x: plain.head(torch.relu(plain.body(x)))  # type: ignore[method-assign]
    reference = _scan(plain)
    assert structured.loss.kind == "cross_entropy"
    assert structured.loss.values == reference.loss.values
    assert [layer.grad_norm for layer in structured.layers] == [layer.grad_norm for layer in reference.layers]


def test_model_output_with_its_own_loss_uses_it() -> None:
    class WithLoss(Returns):
        def forward(self, x: torch.Tensor) -> Any:
            logits = self.head(torch.relu(self.body(x)))
            return CausalLMOutput(loss=logits.pow(2).mean(), logits=logits)

    torch.manual_seed(0)
    report = _scan(WithLoss("model-output"))
    assert report.loss.kind == "model_loss"
