"""Structure: geometric runs through a plain stack (depth.py), the residual-add observer, and the
add-normalization / add-skip fixes they drive (and never for residual or normalized models)."""

from __future__ import annotations

import math

import pytest
import torch
from stats_factory import layer_stats
from torch import nn
from torch.nn import functional as F
from typed_modules import narrow

from gradcheck_cli import scan
from gradcheck_cli.analyse.depth import find_trends, stack_kind, trend_of
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.report.records import FindingKind, RecommendationId
from gradcheck_cli.target.resolve import Target, resolve_target

STRUCTURE = {RecommendationId.ADD_NORMALIZATION, RecommendationId.ADD_SKIP}


def _layer(name: str, index: int, grad: float | None, act: float = 1.0, *, role: str = "dense",
           type_name: str = "Linear") -> LayerStats:
    return layer_stats(
        name=name, type_name=type_name, index=index, params=100, role=role, fan_in=10,
        weight_std=0.3, trainable=True, received=True, grad_norm=1.0, weight_norm=1.0,
        grad_to_weight=1.0, grad_rms=0.1, nonfinite_grads=0, output_rms=act, output_grad_rms=grad,
        output_nonfinite=False)


def test_a_geometric_gradient_decay_is_one_run_with_its_gain_and_range() -> None:
    layers = [_layer(f"l{i}", i, 0.25 ** (5 - i)) for i in range(6)]
    trends = find_trends(layers)
    assert len(trends) == 1
    run = trends[0]
    assert (run.signal, run.direction, run.first, run.last) == ("gradient", "decay", "l0", "l5")
    assert run.gain == pytest.approx(0.25) and run.total == pytest.approx(0.25 ** 5)
    assert not run.normalized
    assert trend_of("l3", trends, "decay") is run and trend_of("l3", trends, "growth") is None


def test_alternating_or_small_changes_are_not_a_run() -> None:
    zigzag = [_layer(f"l{i}", i, 1.0 if i % 2 else 0.5) for i in range(8)]
    assert find_trends(zigzag) == []
    slow = [_layer(f"l{i}", i, 1.1 ** i) for i in range(8)]  # 1.1x per layer, 1.9x overall
    assert find_trends(slow) == []
    short = [_layer(f"l{i}", i, 10.0 ** i) for i in range(3)]  # 3 layers: not a stack
    assert find_trends(short) == []


def test_a_norm_layer_inside_the_run_marks_it_normalized_and_activation_runs_are_found() -> None:
    layers = [_layer("a", 0, 1.0, act=1.0), _layer("b", 1, 1.0, act=3.0),
              _layer("bn", 2, 1.0, role="normalization", type_name="BatchNorm1d"),
              _layer("c", 3, 1.0, act=9.0), _layer("d", 4, 1.0, act=27.0)]
    (run,) = find_trends(layers)
    assert run.signal == "activation" and run.direction == "growth" and run.normalized
    assert run.layers == ("a", "b", "c", "d") and run.gain == pytest.approx(3.0)


def test_stack_kind_picks_the_normalization_to_recommend() -> None:
    assert stack_kind([_layer("a", 0, 1.0, type_name="Conv2d")]) == "conv"
    assert stack_kind([_layer("a", 0, 1.0)]) == "mlp"
    assert stack_kind([_layer("a", 0, 1.0), _layer("r", 1, 1.0, type_name="LSTM")]) == "sequence"


def _output_grad_rms(model: nn.Module, make_batch, loss_fn) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Plain autograd over the probe's 3 batches: RMS of dL/d(output) of each Linear."""
    sq: dict[str, float] = {}
    n: dict[str, int] = {}
    for b in range(3):
        torch.manual_seed(b)
        x, y = make_batch(16)
        outs: dict[str, torch.Tensor] = {}
        handles = [m.register_forward_hook(lambda mod, i, o, name=name, outs=outs: outs.__setitem__(name, o))
                   for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        loss = loss_fn(model(x), y)
        for h in handles:
            h.remove()
        grads = torch.autograd.grad(loss, list(outs.values()))
        for name, g in zip(outs, grads):
            sq[name] = sq.get(name, 0.0) + float(g.pow(2).sum())
            n[name] = n.get(name, 0) + g.numel()
    return {name: math.sqrt(sq[name] / n[name]) for name in sq}


def test_plain_deep_sigmoid_stack_gets_the_run_and_both_structural_fixes() -> None:
    report = scan("builtin:deep-sigmoid")
    vanishing = [f for f in report.findings if f.kind == FindingKind.VANISHING]
    assert vanishing and all(f.evidence.get("stack_trend") == "decay" for f in vanishing)
    evidence = vanishing[0].evidence
    assert evidence["stack_signal"] == "gradient" and evidence["stack_plain"] == 1
    assert (evidence["stack_first"], evidence["stack_last"]) == ("net.0", "net.18")
    target = resolve_target("builtin:deep-sigmoid")
    reference = _output_grad_rms(target.build_model(), target.make_batch, target.loss_fn or F.cross_entropy)
    steps = int(evidence["stack_layers"]) - 1  # type: ignore[arg-type]
    expected = (reference["net.0"] / reference["net.18"]) ** (1 / steps)
    assert evidence["stack_gain_per_layer"] == pytest.approx(expected, rel=1e-3)
    recs = {r.id: r for r in report.recommendations}
    assert STRUCTURE <= set(recs)
    assert "BatchNorm1d" in recs[RecommendationId.ADD_NORMALIZATION].code
    assert "net.0..net.18" in recs[RecommendationId.ADD_SKIP].why
    assert f"{expected:.3g}x per layer" in recs[RecommendationId.ADD_SKIP].why


def test_plain_conv_stack_gets_batchnorm2d() -> None:
    report = scan("builtin:cnn-plain-deep")
    recs = {r.id: r for r in report.recommendations}
    assert "BatchNorm2d" in recs[RecommendationId.ADD_NORMALIZATION].code
    assert RecommendationId.ADD_SKIP in recs


@pytest.mark.parametrize("name", ["cnn-resnet-bn", "transformer-preln"])
def test_residual_normalized_builtins_get_no_structural_fix(name: str) -> None:
    report = scan(f"builtin:{name}")
    assert not STRUCTURE & {r.id for r in report.recommendations}
    assert not any("stack_trend" in f.evidence for f in report.findings)


class _ResidualMLP(nn.Module):
    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + torch.relu(block(x)) if self.residual else torch.relu(block(x))
        return x


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(torch.relu(x))
        out += x  # torchvision's BasicBlock writes the skip in place
        return out


def _residual_modules(model: nn.Module, shape: tuple[int, ...] = (8,)) -> tuple[str, ...]:
    probe = run_probe(model, lambda n: torch.randn(n, *shape), None, ScanConfig(batches=1, batch_size=4))
    return probe.residual_modules


def test_the_probe_sees_residual_adds_of_a_module_input() -> None:
    assert _residual_modules(_ResidualMLP(residual=True)) == ("(root)",)
    assert _residual_modules(_ResidualMLP(residual=False)) == ()
    assert _residual_modules(nn.Sequential(_Block(), _Block())) == ("0", "1")


def test_the_probes_own_recurrent_step_leaf_is_not_a_residual() -> None:
    rnn = nn.RNN(4, 8, batch_first=True)
    assert _residual_modules(rnn, (5, 4)) == ()


def test_a_residual_model_with_a_geometric_run_gets_normalization_but_no_skip() -> None:
    """A residual path already exists: add-skip is not offered even if the scale still drifts."""
    def build() -> nn.Module:
        torch.manual_seed(0)
        model = _ResidualMLP(residual=True)
        with torch.no_grad():
            for block in model.blocks:
                narrow(block, nn.Linear).weight.normal_(0.0, 3.0)
        return model

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, 8), torch.randn(n, 8)
    report = scan(Target("res", build, batch))
    ids = {r.id for r in report.recommendations}
    assert RecommendationId.ADD_SKIP not in ids
    carrying = [f for f in report.findings if "stack_trend" in f.evidence]
    assert all(f.evidence["stack_residual"] == 1 for f in carrying)
