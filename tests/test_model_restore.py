"""The model the user had: weights a forward changes in place, and lazy modules, come back usable.

`--steps 0` used to skip the value snapshot, so a forward that writes its own weights
(nn.Embedding(max_norm=...) renormalises rows in place; a WGAN critic clamps through `.data`,
which no version counter sees) left the model changed. Lazy modules came back with empty weights.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from model_state import assert_unchanged, snapshot
from torch import nn

from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.measure.restore import LazyModulesMaterialised


class EmbeddingBag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 8, max_norm=1.0)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(tokens).mean(1))


class ClampingCritic(nn.Module):
    """The original WGAN recipe: clip every weight into [-c, c], here at the start of forward."""

    def __init__(self, clip: float = 0.01) -> None:
        super().__init__()
        self.clip = clip
        self.net = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for p in self.parameters():
            p.data.clamp_(-self.clip, self.clip)
        return self.net(x)


def _embedding_model() -> nn.Module:
    torch.manual_seed(0)
    model = EmbeddingBag()
    with torch.no_grad():
        model.emb.weight.mul_(4.0)  # rows well above max_norm: any lookup renormalises them
    return model


def _tokens(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, 40, (n, 5)), torch.randint(0, 3, (n,))


def _critic() -> nn.Module:
    torch.manual_seed(0)
    return ClampingCritic()


def _samples(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 6), torch.randn(n, 1)


@pytest.mark.parametrize("steps", [0, 2])
@pytest.mark.parametrize("build,make_batch", [(_embedding_model, _tokens), (_critic, _samples)],
                         ids=["embedding-max-norm", "clamping-critic"])
def test_weights_changed_by_forward_come_back_bit_identical(build, make_batch, steps: int) -> None:  # type: ignore[no-untyped-def]
    model = build()
    before = snapshot(model)
    with torch.no_grad():  # the model really does change its own weights when it runs
        probe_copy = build()
        probe_copy(make_batch(4)[0])
        assert any(not torch.equal(a, b) for a, b in zip(probe_copy.state_dict().values(),
                                                          model.state_dict().values()))
    run_probe(model, make_batch, None, ScanConfig(batches=2, batch_size=8, steps=steps))
    assert_unchanged(before, model)


def _lazy_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.LazyLinear(8), nn.LazyBatchNorm1d(), nn.ReLU(), nn.Linear(8, 1))


def _lazy_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 5), torch.randn(n, 1)


def _scan_lazy(steps: int) -> tuple[nn.Sequential, list[warnings.WarningMessage]]:
    model = _lazy_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_probe(model, _lazy_batch, None, ScanConfig(batches=2, batch_size=8, steps=steps, lr=0.5))
    return model, [w for w in caught if issubclass(w.category, LazyModulesMaterialised)]


@pytest.mark.parametrize("steps", [0, 2])
def test_lazy_modules_come_back_materialised_usable_and_as_initialised(steps: int) -> None:
    model, notices = _scan_lazy(steps)
    assert len(notices) == 1
    assert "0 (LazyLinear -> Linear)" in str(notices[0].message)
    assert "1 (LazyBatchNorm1d -> BatchNorm1d)" in str(notices[0].message)
    linear, norm = model[0], model[1]
    assert type(linear) is nn.Linear and linear.weight.shape == (8, 5) and linear.weight.grad is None
    # the values of the initialisation, not those after the probe's optimizer steps or batches
    assert torch.equal(norm.get_buffer("running_mean"), torch.zeros(8))
    assert torch.equal(norm.get_buffer("running_var"), torch.ones(8))
    assert int(norm.get_buffer("num_batches_tracked")) == 0
    reference, _ = _scan_lazy(0)
    for (name, value), expected in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(value, expected), name
    assert model(torch.randn(3, 5)).shape == (3, 1)  # and it runs


def test_a_lazy_module_the_failing_probe_never_reached_stays_lazy() -> None:
    model = _lazy_model()
    hooks_before = [dict(m._forward_pre_hooks) for m in model]

    def no_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise OSError("the data folder is not mounted")

    with warnings.catch_warnings():
        warnings.simplefilter("error", LazyModulesMaterialised)
        with pytest.raises(OSError, match="not mounted"):
            run_probe(model, no_data, None, ScanConfig(batches=1, batch_size=4))
    assert nn.parameter.is_lazy(model.get_parameter("0.weight"))
    assert nn.parameter.is_lazy(model.get_buffer("1.running_mean"))
    assert [dict(m._forward_pre_hooks) for m in model] == hooks_before  # torch's own hooks only


LAZY_FILE = """
import torch
from torch import nn

def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.LazyLinear(16), nn.LazyBatchNorm1d(), nn.ReLU(), nn.Linear(16, 3))

def make_batch(batch_size):
    return torch.randn(batch_size, 6), torch.randint(0, 3, (batch_size,))
"""


def test_cli_scans_a_lazy_model_without_noise(tmp_path: Path) -> None:
    path = tmp_path / "lazy_model.py"
    path.write_text(textwrap.dedent(LAZY_FILE))
    done = subprocess.run([sys.executable, "-m", "gradcheck_cli", "scan", str(path), "--format", "json",
                           "-q"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # the CLI discards the model: the materialisation notice is not for it
    assert '"verdict": "healthy"' in done.stdout


class _UnreachedLazyHead(nn.Module):
    """An auxiliary lazy head the forward never calls: its parameters are never created."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 8)
        self.aux = nn.LazyLinear(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_a_lazy_module_the_forward_never_calls_is_left_out_and_stays_lazy() -> None:
    torch.manual_seed(0)
    model = _UnreachedLazyHead()
    result = run_probe(model, lambda n: torch.randn(n, 5), None, ScanConfig(batches=2, batch_size=4))
    assert [layer.name for layer in result.layers] == ["body"]
    assert nn.parameter.is_lazy(model.aux.weight)
