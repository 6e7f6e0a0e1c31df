"""init-scale: the variance-preserving std and its band, the finding on mis-scaled inits (with the
measured consequence) and its silence on He, Xavier and PyTorch-default inits."""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import pytest
import torch
from torch import nn
from typed_modules import narrow

from gradcheck_cli import scan
from gradcheck_cli.analyse.init_std import init_target
from gradcheck_cli.report.records import FindingKind, RecommendationId, Report
from gradcheck_cli.target.resolve import Target
from gradcheck_cli.target.resolve import resolve_target as load_target

WIDTH, DEPTH = 256, 6


def _relu_mlp(init: str) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(DEPTH - 1):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    layers.append(nn.Linear(WIDTH, 10))
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Linear) and init != "default":
            if init == "he":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, 0.0, {"large": 1.0, "small": 0.01}[init])
            nn.init.zeros_(m.bias)
    return model


def _batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, WIDTH), torch.randint(0, 10, (batch_size,))


def _scan(init: str) -> Report:
    return scan(Target(f"relu-{init}", lambda: _relu_mlp(init), _batch))


def _init_findings(report: Report) -> dict[str, dict[str, object]]:
    return {f.layer or "": {"message": f.message, **f.evidence}
            for f in report.findings if f.kind == FindingKind.INIT_SCALE}


def _activation_rms(model: nn.Sequential) -> list[float]:
    """Plain forward over the probe's 3 batches: RMS of each Linear's output."""
    sq = {i: 0.0 for i, m in enumerate(model) if isinstance(m, nn.Linear)}
    n = dict.fromkeys(sq, 0)
    with torch.no_grad():
        for b in range(3):
            torch.manual_seed(b)
            h = _batch(16)[0]
            for i, m in enumerate(model):
                h = m(h)
                if i in sq:
                    sq[i] += float(h.pow(2).sum())
                    n[i] += h.numel()
    return [math.sqrt(sq[i] / n[i]) for i in sq]


@pytest.mark.parametrize("fan_in,fan_out", [(64, 64), (256, 256), (27, 64), (512, 128)])
def test_standard_inits_lie_inside_the_band(fan_in: int, fan_out: int) -> None:
    for follower in ("ReLU", "Tanh", None, "GELU", "SELU"):
        target = init_target(fan_in, fan_out, follower)
        for std in (math.sqrt(2 / fan_in), math.sqrt(2 / (fan_in + fan_out)), math.sqrt(1 / fan_in),
                    1 / math.sqrt(3 * fan_in)):
            assert target.mismatch(std) == 1.0, (follower, std)
    he = init_target(fan_in, fan_out, "ReLU")
    assert he.scheme == "he" and he.std == pytest.approx(math.sqrt(2 / fan_in))
    xavier = init_target(fan_in, fan_out, "Tanh")
    assert xavier.scheme == "xavier" and xavier.std == pytest.approx(math.sqrt(2 / (fan_in + fan_out)))
    assert init_target(fan_in, fan_out, "SELU").std == pytest.approx(math.sqrt(1 / fan_in))
    assert he.mismatch(he.high * 3) == pytest.approx(3.0) and he.mismatch(he.low / 4) == pytest.approx(0.25)


def test_normal_1_init_is_too_large_with_both_numbers_and_the_exact_he_std() -> None:
    report = _scan("large")
    found = _init_findings(report)
    hidden = [str(i) for i in range(0, 2 * (DEPTH - 1), 2)]
    assert set(hidden) <= set(found)
    he = math.sqrt(2 / WIDTH)
    first = found["0"]
    assert first["direction"] == "too large" and first["scheme"] == "he"
    assert first["target_std"] == pytest.approx(he)
    weight = narrow(_relu_mlp("large")[0], nn.Linear).weight
    std = float(weight.detach().std())
    assert first["weight_std"] == pytest.approx(std, rel=1e-5)
    assert first["std_ratio"] == pytest.approx(std / he, rel=1e-5)
    assert "too large" in str(first["message"]) and f"{he:.3g}" in str(first["message"])
    # The consequence, measured: activations grow geometrically, as a plain forward shows.
    assert first["stack_trend"] == "growth" and first["stack_first"] == "0"
    rms = _activation_rms(_relu_mlp("large"))
    assert [x.activation["rms"] for x in report.layers] == pytest.approx(rms, rel=1e-4)
    assert rms[1] / rms[0] > 5  # ~ std * sqrt(fan_in / 2) = 11 per layer
    # The run's per-layer gain is the geometric mean of the measured steps along the signal.
    key = "output_grad_rms" if first["stack_signal"] == "gradient" else "rms"
    scale = [float(cast(float, x.activation[key])) for x in report.layers]
    steps = len(scale) - 1
    total = scale[0] / scale[-1] if key == "output_grad_rms" else scale[-1] / scale[0]
    assert first["stack_layers"] == len(scale)
    assert first["stack_gain_per_layer"] == pytest.approx(total ** (1 / steps), rel=1e-6)
    rec = {r.id: r for r in report.recommendations}[RecommendationId.HE_INIT]
    assert set(hidden) <= set(rec.layers)
    assert f"{he:.4g}" in rec.code and "kaiming_normal_" in rec.code
    assert f"{std:.3g}" in rec.why


def test_normal_001_init_is_too_small() -> None:
    report = _scan("small")
    found = _init_findings(report)
    assert "0" in found and found["0"]["direction"] == "too small"
    assert found["0"]["weight_std"] == pytest.approx(0.01, rel=0.05)
    assert found["0"]["stack_trend"] == "decay"
    rms = _activation_rms(_relu_mlp("small"))
    assert rms[-1] / rms[0] < 1e-3  # 0.01 * sqrt(256 / 2) = 0.11 per layer
    ids = [r.id for r in report.recommendations]
    assert RecommendationId.HE_INIT in ids


@pytest.mark.parametrize("init", ["he", "default"])
def test_he_and_pytorch_default_inits_are_silent(init: str) -> None:
    report = _scan(init)
    assert _init_findings(report) == {}
    assert RecommendationId.HE_INIT not in [r.id for r in report.recommendations]


def test_a_single_grossly_oversized_layer_fires_without_a_stack() -> None:
    def build() -> nn.Module:
        torch.manual_seed(5)
        model = nn.Sequential(nn.Linear(WIDTH, 64), nn.ReLU(), nn.Linear(64, 10))
        with torch.no_grad():
            narrow(model[0], nn.Linear).weight.normal_(0.0, 5.0)  # 56x He's 0.088
        return model
    found = _init_findings(scan(Target("gross", build, _batch)))
    assert set(found) == {"0"}
    assert "stack_trend" not in found["0"] and found["0"]["direction"] == "too large"


def test_small_std_with_residual_and_layernorm_is_silent() -> None:
    """GPT-2's std 0.02 on a narrow decoder is below the band (0.28 to 0.56 of its low end), but
    the residual stream and LayerNorm keep the scale: no geometric run, no finding."""
    path = Path(__file__).parent / "corpus" / "healthy_gpt_decoder.py"
    report = scan(str(path))
    weight = dict(load_target(str(path)).build_model().named_modules())["h.0.attn.c_proj"].weight
    fan_out, fan_in = weight.shape
    assert init_target(fan_in, fan_out, None).mismatch(float(weight.detach().std())) < 0.6  # outside the band
    assert _init_findings(report) == {} and report.findings == ()
