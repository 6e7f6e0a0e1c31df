"""Signal collapse through depth, the relative rule without a sane hidden layer, and `margin`.

* A ReLU stack at weight variance 1/fan_in (LeCun; kaiming with the wrong gain) halves the signal
  variance per layer in both directions, while its weight gradients stay uniform (dW = delta h^T):
  it is `vanishing` with `he-init` and the std to use; the He-initialised twin is healthy.
* A tanh stack whose hidden layers share a too-small init under a default-init output layer: the
  layers that learn < 1e-3 as fast as the output layer are vanishing, although none of them is a
  sanely initialised yardstick.
* Findings within 2x of their threshold carry `margin`; a default-init 8-layer ReLU MLP gives the
  same findings for seeds 0-4.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
from stats_factory import layer_stats
from torch import nn

from gradcheck_cli import scan
from gradcheck_cli.analyse.checks.context import margin_evidence
from gradcheck_cli.analyse.depth import find_collapses
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.report.records import FindingKind, RecommendationId, Report, Status
from gradcheck_cli.target.resolve import Target

DEPTH = 32
WIDTH = 64


def _relu_stack(init: Callable[[torch.Tensor], object], depth: int = DEPTH) -> Callable[[], nn.Module]:
    """A bias-free ReLU MLP (32 -> WIDTH x depth-1 -> 10), every weight initialised by `init`."""
    def build() -> nn.Module:
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        width_in = 32
        for _ in range(depth - 1):
            layers += [nn.Linear(width_in, WIDTH, bias=False), nn.ReLU()]
            width_in = WIDTH
        layers.append(nn.Linear(width_in, 10, bias=False))
        model = nn.Sequential(*layers)
        for layer in model:
            if isinstance(layer, nn.Linear):
                init(layer.weight)
        return model
    return build


def _batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 32), torch.randint(0, 10, (batch_size,))


def _scan(build: Callable[[], nn.Module], seed: int = 0) -> Report:
    return scan(Target("signal", build, _batch, None), seed=seed)


def _lecun(w: torch.Tensor) -> object:
    return nn.init.kaiming_normal_(w, nonlinearity="linear")  # "kaiming with the wrong gain": 1/fan_in


def _he(w: torch.Tensor) -> object:
    return nn.init.kaiming_normal_(w, nonlinearity="relu")


def test_a_lecun_relu_stack_collapses_and_gets_he_init_with_the_std() -> None:
    report = _scan(_relu_stack(_lecun))
    assert report.verdict == Status.VANISHING
    vanishing = [f for f in report.findings if f.kind == FindingKind.VANISHING]
    assert {f.layer for f in vanishing} == {layer.name for layer in report.layers}  # the whole stack
    evidence = vanishing[0].evidence
    # both decays are measured and far below 1e-3 (2^-1/2 per layer over 31 steps ~ 2e-5)
    assert float(evidence["collapse_activation_total"]) < 1e-4  # type: ignore[arg-type]
    assert float(evidence["collapse_gradient_total"]) < 1e-4  # type: ignore[arg-type]
    assert 0.6 < float(evidence["collapse_gradient_gain"]) < 0.8  # type: ignore[arg-type]
    assert "margin" not in evidence  # far from the threshold, not borderline
    # ... while the weight gradients look uniform: no ratio between layers shows it
    ratios = [layer.grad_to_weight or 0.0 for layer in report.layers]
    assert max(ratios) < 10 * min(ratios)
    he = next(r for r in report.recommendations if r.id == RecommendationId.HE_INIT)
    assert report.recommendations[0].id == RecommendationId.HE_INIT  # the init is the cause: first
    assert "0" in he.layers and "2" in he.layers
    assert f'"2": {math.sqrt(2 / WIDTH):.4g}' in he.code and f'"0": {math.sqrt(2 / 32):.4g}' in he.code
    init_scale = {f.layer: f for f in report.findings if f.kind == FindingKind.INIT_SCALE}
    assert init_scale["2"].evidence["scheme"] == "he" and init_scale["2"].evidence["direction"] == "too small"
    assert str(len(report.layers) - 1) not in init_scale  # the head (no activation) is left alone


def test_the_he_initialised_stack_of_the_same_depth_is_healthy() -> None:
    report = _scan(_relu_stack(_he))
    assert report.verdict == Status.HEALTHY
    assert report.findings == () and report.recommendations == ()


def _tanh_small_hidden() -> nn.Module:
    """8 tanh layers N(0, 0.02) (gain 0.02 * sqrt(64) = 0.16 per layer) under a default-init head."""
    torch.manual_seed(5)
    layers: list[nn.Module] = []
    width_in = 32
    for _ in range(8):
        linear = nn.Linear(width_in, 64)
        nn.init.normal_(linear.weight, std=0.02)
        layers += [linear, nn.Tanh()]
        width_in = 64
    layers.append(nn.Linear(64, 10))
    return nn.Sequential(*layers)


def test_the_relative_rule_does_not_switch_itself_off_without_a_sane_hidden_layer() -> None:
    report = _scan(_tanh_small_hidden)
    output = report.layers[-1]
    assert output.grad_to_weight is not None
    relative = {x.name: (x.grad_to_weight or 0.0) / output.grad_to_weight for x in report.layers}
    # the gradient decays geometrically: every layer is 0.1-0.3x of the next one's
    steps = [relative[a.name] / relative[b.name] for a, b in zip(report.layers, report.layers[1:-1])]
    assert all(0.08 < s < 0.4 for s in steps[1:]), steps
    slow = {name for name, r in relative.items() if r < 1e-3}
    assert {"0", "2", "4"} <= slow
    flagged = {f.layer for f in report.findings if f.kind == FindingKind.VANISHING}
    assert flagged == slow
    assert report.verdict == Status.VANISHING
    assert any(r.id == RecommendationId.XAVIER_INIT for r in report.recommendations)


def test_a_finding_within_2x_of_its_threshold_carries_its_margin() -> None:
    report = _scan(_tanh_small_hidden)
    output_gtw = report.layers[-1].grad_to_weight or 1.0
    by_name = {x.name: x for x in report.layers}
    checked = 0
    for finding in report.findings:
        if finding.kind != FindingKind.VANISHING or finding.layer is None:
            continue
        ratio = (by_name[finding.layer].grad_to_weight or 0.0) / output_gtw
        factor = 1e-3 / ratio
        if factor < 2:
            assert finding.evidence["margin"] == pytest.approx(factor)
            checked += 1
        else:
            assert "margin" not in finding.evidence
    assert checked >= 1  # layer "6" learns 5.6e-4 as fast as the output layer: 1.8x past 1e-3


def test_margin_evidence_is_the_factor_to_the_threshold_below_2x() -> None:
    assert margin_evidence(4e-4, 1e-3) == {}  # 2.5x past: a clear call
    assert margin_evidence(6e-4, 1e-3) == {"margin": pytest.approx(1e-3 / 6e-4)}
    assert margin_evidence(100.0, 70.0) == {"margin": pytest.approx(100 / 70)}
    assert margin_evidence(1e-5, 1e-3) == {} and margin_evidence(1e4, 70.0) == {}
    assert margin_evidence(None, 1e-3) == {} and margin_evidence(0.0, 1e-3) == {}


def _default_relu_mlp() -> nn.Module:
    # built unseeded, as a user's file would: gradcheck builds it under --seed, so the weights
    # differ from seed to seed as well as the batches
    layers: list[nn.Module] = []
    width_in = 32
    for _ in range(7):
        layers += [nn.Linear(width_in, 32), nn.ReLU()]
        width_in = 32
    layers.append(nn.Linear(32, 10))
    return nn.Sequential(*layers)


def test_a_default_init_8_layer_relu_mlp_gives_the_same_findings_for_seeds_0_to_4() -> None:
    outcomes = set()
    for seed in range(5):
        report = _scan(_default_relu_mlp, seed)
        statuses = tuple((x.name, x.status.value) for x in report.layers)
        findings = tuple(sorted((f.kind.value, f.layer or "-") for f in report.findings
                                if f.kind in (FindingKind.VANISHING, FindingKind.EXPLODING)))
        outcomes.add((report.verdict, statuses, findings))
    assert len(outcomes) == 1, outcomes


class _Attention(nn.Module):
    """Pre-LN multi-head self-attention block with an MLP, both residual."""

    def __init__(self, width: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        y = self.norm1(x)
        q, k, v = (f(y).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.query, self.key, self.value))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.out((a @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(torch.relu(self.fc1(self.norm2(x))))


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width, bias=False), nn.Linear(width, width, bias=False)
        for layer in (self.fc1, self.fc2):
            _lecun(layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


def _he_conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _cnn_pool_stride() -> tuple[nn.Module, Callable[[int], tuple[torch.Tensor, torch.Tensor]]]:
    layers: list[nn.Module] = []
    c_in = 3
    for i, (c_out, stride) in enumerate([(16, 1), (16, 1), (32, 2), (32, 1), (32, 1), (64, 2), (64, 1), (64, 1),
                                         (64, 2), (64, 1), (64, 1)]):
        layers += [_he_conv(c_in, c_out, stride), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if i == 1 else [nn.AvgPool2d(2)] if i == 4 else []
        c_in = c_out
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    return model, lambda n: (torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))


def _attention_stack() -> tuple[nn.Module, Callable[[int], tuple[torch.Tensor, torch.Tensor]]]:
    model = nn.Sequential(nn.Linear(16, 64), *[_Attention(64) for _ in range(6)], nn.Flatten(), nn.Linear(64 * 12, 5))
    return model, lambda n: (torch.randn(n, 12, 16), torch.randint(0, 5, (n,)))


def _residual_lecun() -> tuple[nn.Module, Callable[[int], tuple[torch.Tensor, torch.Tensor]]]:
    model = nn.Sequential(nn.Linear(32, 64), *[_Residual(64) for _ in range(DEPTH // 2)], nn.Linear(64, 10))
    return model, _batch


@pytest.mark.parametrize("make", [_cnn_pool_stride, _attention_stack, _residual_lecun],
                         ids=["cnn-pooling-striding", "attention", "residual-lecun"])
def test_pooling_striding_attention_and_residual_adds_are_no_collapse(make: Callable[[], tuple]) -> None:
    """Pooling and strides change the per-element scale of one step by design, residual adds and
    LayerNorm reset it: no collapse, even with the residual branches at LeCun's 1/fan_in."""
    torch.manual_seed(0)
    model, batch = make()
    report = scan(Target("no-collapse", lambda: model, batch, None))
    for finding in report.findings:
        assert not any(key.startswith("collapse_") for key in finding.evidence), finding.message
        assert "signal collapses" not in finding.message
    if make is not _residual_lecun:  # an unnormalised residual stack may grow by other rules
        assert report.verdict == Status.HEALTHY, [f.message for f in report.findings]


# --- the collapse rule on hand-built statistics (depth.find_collapses) ---------------------------


def _dense(name: str, index: int, out: float, og: float, role: str = "dense") -> LayerStats:
    return layer_stats(name=name, type_name="Linear" if role == "dense" else "LayerNorm", index=index,
                      params=4096, role=role, fan_in=64, weight_std=0.1, trainable=True, received=True,
                      grad_norm=1e-3, weight_norm=1.0, grad_to_weight=1e-3, grad_rms=1e-5, nonfinite_grads=0,
                      output_rms=out, output_grad_rms=og, output_nonfinite=False)


def _stack(gain_fwd: float, gain_bwd: float, n: int = 24) -> list[LayerStats]:
    return [_dense(f"l{i}", i, gain_fwd ** i, gain_bwd ** (n - 1 - i)) for i in range(n)]


def test_collapse_needs_both_decays_through_depth() -> None:
    threshold = Thresholds()
    assert find_collapses(_stack(0.7, 0.7), threshold)  # LeCun ReLU: 0.7^23 ~ 3e-4 both ways
    assert not find_collapses(_stack(1.0, 0.7), threshold)  # He fan_in funnel: only the gradient
    assert not find_collapses(_stack(0.7, 1.0), threshold)  # only the activations
    assert not find_collapses(_stack(0.9, 0.9), threshold)  # 0.9^23 ~ 0.09: a drift, not a collapse


def test_one_small_step_is_no_collapse_through_depth() -> None:
    """A deliberately tiny head (or one pooling step) drops both scales once: not a decay with depth."""
    layers = [_dense(f"l{i}", i, 1.0, 1e-4 if i < 7 else 1.0) for i in range(8)]
    layers[-1] = _dense("head", 7, 1e-4, 1.0)
    assert not find_collapses(layers, Thresholds())


def test_a_normalization_layer_cuts_the_segment() -> None:
    """Normalization resets the scale: two halves of 12 layers, each 0.7^11 ~ 0.02, do not collapse."""
    halves = _stack(0.7, 0.7, 12)
    second = [_dense(f"m{i}", 13 + i, x.output_rms or 0.0, x.output_grad_rms or 0.0) for i, x in enumerate(halves)]
    layers = [*halves, _dense("norm", 12, 1.0, 1.0, role="normalization"), *second]
    assert not find_collapses(layers, Thresholds())
    assert find_collapses(_stack(0.7, 0.7, 24), Thresholds())  # the same depth, uncut


def test_per_layer_decays_that_the_network_does_not_show_end_to_end_are_no_collapse() -> None:
    """Branch layers of a residual stream shrink the signal 0.5x each, and every fourth layer reads
    the stream again at full scale: the median factor compounds to 0.5^23 ~ 1e-7, but from the
    first layer to the last the signal keeps its scale (end to end 1.0), so nothing collapsed."""
    scale = [0.5 ** (i % 4) for i in range(24)]
    layers = [_dense(f"l{i}", i, scale[i], scale[23 - i]) for i in range(24)]
    assert not find_collapses(layers, Thresholds())


def test_collapse_reason_names_both_decays() -> None:
    report = _scan(_relu_stack(_lecun))
    message = next(f.message for f in report.findings if f.kind == FindingKind.VANISHING)
    assert re.search(r"activation scale falls 0\.\d+x per layer towards the output", message)
    assert re.search(r"output gradient 0\.\d+x per layer towards the input", message)
