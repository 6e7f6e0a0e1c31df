"""saturated-activation and dead-relu: per-unit counts against a plain-forward reference, each
finding on its positive model and silent on its negative one, and the fixes they justify."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from typed_modules import narrow

from gradcheck_cli import scan
from gradcheck_cli.report.records import FindingKind, RecommendationId, Report, Severity
from gradcheck_cli.target.resolve import Target

BATCHES, BATCH = 3, 16


def _batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 16), torch.randint(0, 4, (batch_size,))


def _scan(build: Callable[[], nn.Module], make_batch: Callable[[int], object] = _batch) -> Report:
    return scan(Target("test", build, make_batch), batches=BATCHES, batch_size=BATCH)


def _inputs(make_batch: Callable[[int], object] = _batch) -> list[torch.Tensor]:
    """The probe's batches: batch b is drawn right after torch.manual_seed(seed + b), seed 0."""
    batches = []
    for b in range(BATCHES):
        torch.manual_seed(b)
        batch = make_batch(BATCH)
        batches.append(_tensor(batch[0] if isinstance(batch, tuple) else batch))
    return batches


def _tensor(value: object) -> torch.Tensor:
    assert isinstance(value, torch.Tensor), type(value)
    return value


def _of(report: Report, kind: FindingKind) -> dict[str, dict[str, object]]:
    return {f.layer or "": {"severity": f.severity, "message": f.message, **f.evidence}
            for f in report.findings if f.kind == kind}


def _sigmoid_mlp(std: float) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Sigmoid(), nn.Linear(32, 32), nn.Sigmoid(), nn.Linear(32, 4))
    with torch.no_grad():
        for layer in (narrow(model[0], nn.Linear), narrow(model[2], nn.Linear)):
            layer.weight.normal_(0.0, std)
            layer.bias.zero_()
    return model


def _saturated_share(out: list[torch.Tensor], low: float, high: float) -> tuple[float, float]:
    """(fraction of units saturated on more than half of their outputs, fraction of all outputs)."""
    flat = torch.cat([((y < low) | (y > high)).float() for y in out])
    per_unit = flat.mean(dim=0)
    return float((per_unit > 0.5).float().mean()), float(flat.mean())


def test_large_init_sigmoid_saturates_and_matches_a_plain_forward() -> None:
    model = _sigmoid_mlp(std=3.0)
    with torch.no_grad():
        first = [torch.sigmoid(model[0](x)) for x in _inputs()]
    units, outputs = _saturated_share(first, 0.02, 0.98)
    report = _scan(lambda: _sigmoid_mlp(std=3.0))
    found = _of(report, FindingKind.SATURATED_ACTIVATION)
    assert "0" in found and units > 0.5
    assert found["0"]["saturated_units"] == pytest.approx(units)
    assert found["0"]["saturated_fraction"] == pytest.approx(outputs)
    assert found["0"]["function"] == "Sigmoid" and found["0"]["activation_module"] == "1"
    assert found["0"]["units"] == 32 and found["0"]["outputs_per_unit"] == BATCHES * BATCH
    # The cause is visible: std 3 is far above Xavier's sqrt(2 / (16 + 32)) = 0.204.
    assert found["0"]["target_std"] == pytest.approx((2 / 48) ** 0.5)
    ids = {r.id: r for r in report.recommendations}
    assert RecommendationId.SWAP_ACTIVATION in ids and "nn.ReLU()" in ids[RecommendationId.SWAP_ACTIVATION].code
    assert RecommendationId.XAVIER_INIT in ids and "0.2041" in ids[RecommendationId.XAVIER_INIT].code


def test_small_init_sigmoid_is_not_saturated() -> None:
    report = _scan(lambda: _sigmoid_mlp(std=0.05))
    assert _of(report, FindingKind.SATURATED_ACTIVATION) == {}
    layer = next(x for x in report.layers if x.name == "0")
    assert layer.activation["saturated_units"] == 0.0


class _FunctionalTanh(nn.Module):
    """tanh called as a function in forward; nn.Tanh inside a module must not count twice."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 24)
        self.mid = nn.Linear(24, 24)
        self.act = nn.Tanh()
        self.head = nn.Linear(24, 4)
        with torch.no_grad():
            self.fc.weight.mul_(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.mid(torch.tanh(self.fc(x)))))


def _functional(gain: float) -> _FunctionalTanh:
    torch.manual_seed(1)
    return _FunctionalTanh(gain)


def test_functional_tanh_is_seen_and_attributed_to_its_producer() -> None:
    model = _functional(40.0)
    with torch.no_grad():
        out = [torch.tanh(model.fc(x)) for x in _inputs()]
    units, outputs = _saturated_share(out, -0.96, 0.96)
    report = _scan(lambda: _functional(40.0))
    found = _of(report, FindingKind.SATURATED_ACTIVATION)
    assert found["fc"]["activation_module"] == "(root):tanh"
    assert found["fc"]["saturated_units"] == pytest.approx(units)
    assert found["fc"]["saturated_fraction"] == pytest.approx(outputs)
    # nn.Tanh calls torch.tanh itself: counted once, as the module.
    mid = next(x for x in report.layers if x.name == "mid")
    assert mid.activation["activation_module"] == "act"
    assert mid.activation["outputs_per_unit"] == BATCHES * BATCH


def test_functional_tanh_at_default_init_is_silent() -> None:
    report = _scan(lambda: _functional(1.0))
    assert _of(report, FindingKind.SATURATED_ACTIVATION) == {}
    fc = next(x for x in report.layers if x.name == "fc")
    assert fc.activation["function"] == "Tanh"


def test_hardtanh_uses_its_own_clamp_values() -> None:
    def build() -> nn.Sequential:
        torch.manual_seed(2)
        model = nn.Sequential(nn.Linear(16, 20), nn.Hardtanh(-0.5, 0.5), nn.Linear(20, 4))
        with torch.no_grad():
            narrow(model[0], nn.Linear).weight.mul_(20.0)
        return model
    model = build()
    with torch.no_grad():
        out = [nn.functional.hardtanh(model[0](x), -0.5, 0.5) for x in _inputs()]
    units, _ = _saturated_share(out, -0.5 + 1e-7, 0.5 - 1e-7)
    found = _of(_scan(build), FindingKind.SATURATED_ACTIVATION)
    assert found["0"]["saturated_units"] == pytest.approx(units) and units > 0.5


def _relu_mlp(bias: float | None) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        for layer in (narrow(model[0], nn.Linear), narrow(model[2], nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            layer.bias.zero_()
        if bias is not None:
            narrow(model[2], nn.Linear).bias.fill_(bias)
    return model


def test_relu_with_bias_minus_10_is_a_whole_dead_layer() -> None:
    report = _scan(lambda: _relu_mlp(-10.0))
    found = _of(report, FindingKind.DEAD_RELU)
    assert set(found) == {"2"}
    dead = found["2"]
    assert dead["dead_fraction"] == 1.0 and dead["dead_units"] == 32 and dead["units"] == 32
    assert dead["severity"] == Severity.ERROR and dead["activation_module"] == "3"
    assert dead["bias_mean"] == pytest.approx(-10.0) and dead["negative_bias"] == 1
    ids = {r.id: r for r in report.recommendations}
    assert "nn.LeakyReLU" in ids[RecommendationId.SWAP_ACTIVATION].code
    he = ids[RecommendationId.HE_INIT]
    assert he.layers == ("2",) and "zeros_(layer.bias)" in he.code and f"{(2 / 32) ** 0.5:.4g}" in he.code


def test_majority_of_dead_units_matches_a_plain_forward() -> None:
    def build() -> nn.Sequential:
        model = _relu_mlp(None)
        with torch.no_grad():
            narrow(model[2], nn.Linear).bias[:20] = -10.0  # 20 of 32 units can never fire
        return model
    model = build()
    with torch.no_grad():
        fired = torch.zeros(32, dtype=torch.bool)
        for x in _inputs():
            fired |= (torch.relu(model[2](torch.relu(model[0](x)))) > 0).any(dim=0)
    report = _scan(build)
    found = _of(report, FindingKind.DEAD_RELU)
    assert found["2"]["dead_units"] == int((~fired).sum()) >= 20
    assert found["2"]["severity"] == Severity.WARNING


def test_he_init_relu_has_no_dead_layer() -> None:
    report = _scan(lambda: _relu_mlp(None))
    assert _of(report, FindingKind.DEAD_RELU) == {}
    assert report.findings == () and report.recommendations == ()


def test_conv_units_are_channels() -> None:
    def build() -> nn.Module:
        torch.manual_seed(3)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
        conv = narrow(model[0], nn.Conv2d)
        assert conv.bias is not None
        with torch.no_grad():
            conv.bias[:6] = -100.0
        return model

    def images(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, 3, 8, 8), torch.randint(0, 4, (batch_size,))
    found = _of(_scan(build, images), FindingKind.DEAD_RELU)
    assert found["0"]["units"] == 8 and found["0"]["dead_units"] == 6
    assert found["0"]["outputs_per_unit"] == BATCHES * BATCH * 6 * 6


def test_functional_relu_in_a_transformer_layer_is_counted_once() -> None:
    def build() -> nn.Module:
        torch.manual_seed(4)
        return nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)

    def tokens(batch_size: int) -> torch.Tensor:
        return torch.randn(batch_size, 5, 16)
    report = _scan(build, tokens)
    linear1 = next(x for x in report.layers if x.name == "linear1")
    assert linear1.activation["function"] == "ReLU"
    assert linear1.activation["outputs_per_unit"] == BATCHES * BATCH * 5
    assert report.findings == ()


def test_corpus_model_with_a_dead_layer_names_the_bias() -> None:
    path = Path(__file__).parent / "corpus" / "vanishing_dead_relu_bias.py"
    report = scan(str(path))
    assert report.verdict.value == "vanishing"
    found = _of(report, FindingKind.DEAD_RELU)
    assert found["net.4"]["dead_fraction"] == 1.0 and found["net.4"]["negative_bias"] == 1
    assert "negative_bias" not in found["net.6"]  # dead because its input is all zero, not its bias
    ids = {r.id: r for r in report.recommendations}
    assert ids[RecommendationId.HE_INIT].layers == ("net.4",)


def test_dead_majority_needs_more_than_symmetry_explains() -> None:
    """One-sided binomial test against 'each unit dead with chance 1/2' (Thresholds.dead_significance)."""
    from gradcheck_cli.analyse.checks.dead_relu import chance_of_at_least
    from gradcheck_cli.analyse.thresholds import Thresholds
    SIGNIFICANCE = Thresholds().dead_significance

    assert chance_of_at_least(5, 8) == pytest.approx(93 / 256)
    assert chance_of_at_least(24, 32) < SIGNIFICANCE < chance_of_at_least(20, 32)


@pytest.mark.parametrize(("negative_rows", "fires"), [(5, False), (8, True)])
def test_small_squeeze_layer_with_chance_dead_units(negative_rows: int, fires: bool) -> None:
    """An 8-unit layer on positive pooled features (a squeeze-excitation): 5 units off with a zero
    bias is what symmetry gives by chance (36%), not a finding; all 8 off is a dead layer."""
    def build() -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
        squeeze = narrow(model[0], nn.Linear)
        with torch.no_grad():
            squeeze.weight.abs_()
            squeeze.weight[:negative_rows].neg_()
            squeeze.bias.zero_()
        return model

    report = scan(Target("squeeze", build, lambda bs: (torch.rand(bs, 16), torch.randint(0, 4, (bs,))), None))
    dead = [f for f in report.findings if f.kind == FindingKind.DEAD_RELU]
    assert bool(dead) is fires, dead
