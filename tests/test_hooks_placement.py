"""Hooks only where they measure (issue 16, part 1; gradcheck_cli/measure/hooks.py).

A probe batch hooks the parameter-owning layers (pre- and post-hook), the parameter-free leaf
modules (activations, composite candidates: a post-hook) and the root; pure containers
(nn.Sequential, nn.ModuleDict, a block whose forward only calls its children and adds) get none.
The module a functional activation or a residual add runs in is read from the Python frames
(target/call_frames.py) instead of a call stack kept by hooks on every module. These tests count the
hooks seen from inside the model's forward during a scan, pin the scan's numbers to those of the
tree that still hooked every module, and check that the frames name the same modules as a
hook-kept call stack on the shapes where the two could disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

from gradcheck_cli.api import scan
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.target.call_frames import ModuleFrames, failed_calls
from gradcheck_cli.target.resolve import Target

HookCounts = dict[str, tuple[int, int]]


class Residual(nn.Module):
    """A custom container: its own forward calls F.gelu and adds a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.proj(self.inner(x)))


class Containers(nn.Module):
    """A Sequential of Sequentials, a ModuleDict and a custom container; records, on each forward,
    how many forward pre-hooks and hooks every module carries."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
                                  nn.Sequential(nn.Linear(8, 8), nn.Sigmoid()))
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 8), "b": nn.Linear(8, 4)})
        self.block = Residual()
        self.seen: list[HookCounts] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(hook_counts(self))
        return self.heads["b"](torch.relu(self.heads["a"](self.block(self.stem(x)))))


def hook_counts(model: nn.Module) -> HookCounts:
    return {name: (len(m._forward_pre_hooks), len(m._forward_hooks)) for name, m in model.named_modules() if name}


def _target(model: Containers) -> Target:
    def build() -> nn.Module:
        torch.manual_seed(0)
        model.load_state_dict(Containers().state_dict())
        return model

    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, 8), torch.randint(0, 4, (batch_size,))
    return Target("containers", build, make_batch)


CONTAINERS = ("stem", "stem.0", "stem.1", "heads", "block", "block.inner")
LAYERS = ("stem.0.0", "stem.1.0", "heads.a", "heads.b", "block.inner.0", "block.proj")
ACTIVATIONS = ("stem.0.1", "stem.1.1", "block.inner.1")


def test_a_scan_hooks_layers_and_activations_and_no_container() -> None:
    model = Containers()
    report = scan(_target(model))
    assert len(model.seen) == 3  # the three probe batches, nothing else ran the model
    for counts in model.seen:
        assert {name: counts[name] for name in CONTAINERS} == dict.fromkeys(CONTAINERS, (0, 0))
        assert {name: counts[name] for name in LAYERS} == dict.fromkeys(LAYERS, (1, 1))
        assert {name: counts[name] for name in ACTIVATIONS} == dict.fromkeys(ACTIVATIONS, (0, 1))
    assert hook_counts(model) == dict.fromkeys(hook_counts(model), (0, 0))  # all removed
    assert not model._forward_pre_hooks and not model._forward_hooks
    # Pinned from the tree that hooked every module (commit a3f28c5, the same model and batches):
    # the functional GELU and ReLU sites are named by their enclosing module, as before.
    layers = {layer["name"]: layer for layer in report.to_dict()["layers"]}
    assert layers["block.proj"]["activation"]["activation_module"] == "block:gelu"
    assert layers["heads.a"]["activation"]["activation_module"] == "(root):relu"
    assert layers["heads.a"]["activation"]["dead_units"] == 4
    assert layers["heads.b"]["grad_norm"] == pytest.approx(0.1120861590700624, rel=1e-9)
    assert layers["block.proj"]["grad_norm"] == pytest.approx(0.012088469593613925, rel=1e-9)


def test_the_probe_measures_what_it_measured_with_a_hook_on_every_module() -> None:
    """Every number of run_probe equals the one of commit a3f28c5 (a hook on every module)."""
    torch.manual_seed(0)
    model = Containers()
    make_batch = _target(model).make_batch
    assert make_batch is not None
    measured = run_probe(model, make_batch, None, ScanConfig())
    assert measured.residual_modules == ("block",)  # x + F.gelu(...) in Residual's own forward
    assert measured.losses == pytest.approx((1.4037435054779053, 1.3859893083572388, 1.3861005306243896),
                                            rel=1e-12)
    assert measured.first_grad_norm == pytest.approx(0.13920635414283938, rel=1e-12)
    by_name = {layer.name: layer for layer in measured.layers}
    proj, head = by_name["block.proj"], by_name["heads.b"].output
    output, output_grad = proj.output, proj.output_grad
    assert output is not None and output_grad is not None and head is not None
    assert output.total == pytest.approx(4.897992988653925, rel=1e-12)
    assert output_grad.total == pytest.approx(0.0015136892712519293, rel=1e-12)
    assert head.count == 192
    assert by_name["block.proj"].activation["function"] == "GELU"


# -- the frames name what a hook-kept call stack names ----------------------------------------------


class _Shared(nn.Module):
    """A module called twice, one called through another's forward, a checkpointed block, a
    ModuleList loop, a forward called directly (no hooks, no frame) and a decorated forward."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.items = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(2)])
        self.ckpt = Residual4()
        self.direct = Residual4()
        self.decorated = Decorated()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.shared(x))
        for item in self.items:
            x = item(x) + torch.sigmoid(self.shared(x))
        x = checkpoint(self.ckpt, x, use_reentrant=False)
        x = self.direct.forward(x)  # no __call__: neither hooks nor a _call_impl frame
        return self.decorated(self.items[0](x))


class Residual4(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.fc(x))


def _logged(forward: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return forward(*args, **kwargs)
    return wrapper


class Decorated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    @_logged
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.fc(x))


class _Compare(TorchFunctionMode):
    """At every tanh/sigmoid/silu/add: the hook stack's top and inputs vs the frames'."""

    def __init__(self, stack: list[tuple[str, Any]], frames: ModuleFrames) -> None:
        super().__init__()
        self.stack, self.frames = stack, frames
        self.seen: list[tuple[Any, Any]] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in ("tanh", "sigmoid", "silu", "add", "__add__"):
            hooks = (self.stack[-1][0] if self.stack else None, [n for n, _ in reversed(self.stack)],
                     [id(x) for _, x in reversed(self.stack)])
            inputs = list(self.frames.inputs())
            self.seen.append((hooks, (self.frames.innermost(), [n for n, _ in inputs], [id(x) for _, x in inputs])))
        return func(*args, **(kwargs or {}))


def test_frames_name_the_modules_a_hook_stack_names() -> None:
    torch.manual_seed(0)
    model = _Shared()
    stack: list[tuple[str, Any]] = []
    handles = []
    for name, module in model.named_modules():
        label = name or "(root)"
        handles.append(module.register_forward_pre_hook(
            lambda m, args, label=label: stack.append((label, args[0] if args else None))))
        handles.append(module.register_forward_hook(lambda m, args, out: stack.pop() and None))
    frames = ModuleFrames(model.named_modules())
    mode = _Compare(stack, frames)
    try:
        with mode:
            model(torch.randn(3, 4)).sum().backward()  # the checkpoint's recompute runs too
    finally:
        for handle in handles:
            handle.remove()
    assert len(mode.seen) >= 12
    for hooks, from_frames in mode.seen:
        assert hooks == from_frames
    modules = {hooks[0] for hooks, _ in mode.seen}
    assert {"(root)", "items.0.1", "items.1.1", "ckpt", "decorated"} <= modules
    assert "direct" not in modules  # called through .forward: the root's own op, both ways


def test_a_failed_forward_is_placed_in_the_innermost_unfinished_call() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Tanh(), nn.Linear(5, 2)))
    with pytest.raises(RuntimeError) as raised:
        model(torch.randn(2, 4))
    assert failed_calls(model, raised.value) == ["(root)", "1", "1.1"]


def test_the_walk_is_exact_outside_any_module() -> None:
    model = nn.Linear(2, 2)
    frames = ModuleFrames(model.named_modules())
    assert frames.innermost() is None and list(frames.inputs()) == []


class _LogBlock(nn.Module):
    """A container with a layer and an activation, whose own forward takes log(tanh(.)): NaN for
    every negative tanh output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.act(self.fc(x)))


def test_the_nan_replay_still_follows_every_module_call_and_leaves_no_hook() -> None:
    """The probe no longer keeps a call stack; the replay does (hooks.follow_calls), so the origin
    is the container's own op and `after` the module that finished before it, as at a3f28c5."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(_LogBlock()), nn.Linear(4, 2))

    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, 4), torch.randint(0, 2, (batch_size,))
    report = scan(Target("nan-in-a-container", lambda: model, make_batch)).to_dict()
    evidence = next(f["evidence"] for f in report["findings"] if f["kind"] == "nonfinite")
    assert (evidence["origin"], evidence["origin_type"], evidence["op"], evidence["after"]) == \
        ("1.0", "_LogBlock", "log", "1.0.act")
    assert evidence["direction"] == "forward" and evidence["cause"] == "unsafe-op"
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
