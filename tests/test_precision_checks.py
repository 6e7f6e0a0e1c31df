"""fp16-underflow, fp16-overflow, bf16-stale-update and their fixes: the histogram arithmetic against
a direct count, each check on hand-made measurements, and the issue's three test models end to end
(gradients around 1e-6, activations around 1e5, a healthy model) under each precision."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch
from stats_factory import layer_stats
from torch import nn

from gradcheck_cli import scan
from gradcheck_cli.analyse.checks import CheckContext, run_checks
from gradcheck_cli.analyse.fixes import recommend
from gradcheck_cli.analyse.fp16_range import FP16_MAX, count_below, underflow_at
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import DEFAULTS
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.errors import UserError
from gradcheck_cli.measure.records import LOG2_HIGH, LOG2_LOW, Headroom, Measurements
from gradcheck_cli.report.parameters import LossScalingParameters
from gradcheck_cli.report.records import Finding, FindingKind, RecommendationId, Report, Severity
from gradcheck_cli.report.verification import VerificationStatus
from gradcheck_cli.target.resolve import Target
from gradcheck_cli.target.zoo import BUILTINS

K, R = FindingKind, RecommendationId
BINS = LOG2_HIGH - LOG2_LOW + 1


# --------------------------------------------------------------------------- the histogram arithmetic

def _histogram(values: torch.Tensor) -> tuple[int, ...]:
    """floor(log2 |g|) of the nonzero elements, counted the plain way (math.frexp per element)."""
    counts = [0] * BINS
    for v in values.double().tolist():
        if v != 0.0:
            exponent = math.frexp(abs(v))[1] - 1
            counts[min(max(exponent - LOG2_LOW, 0), BINS - 1)] += 1
    return tuple(counts)


@pytest.mark.parametrize("scale", [1.0, 2.0 ** 10, 2.0 ** 16, 2.0 ** -3])
def test_fractions_at_a_scale_equal_a_direct_count(scale: float) -> None:
    torch.manual_seed(0)
    g = torch.randn(4000, dtype=torch.float64) * 10.0 ** torch.empty(4000, dtype=torch.float64).uniform_(-12, 0)
    u = underflow_at(_histogram(g), LOG2_LOW, scale)
    scaled = (g * scale).abs()
    assert u.nonzero == 4000
    assert u.below_normal == int((scaled < 2.0 ** -14).sum()) / 4000
    assert u.below_subnormal == int((scaled < 2.0 ** -24).sum()) / 4000
    # what fp16 itself does with them: below 2^-24 nothing keeps its value (0, or rounded to 2^-24)
    half = (g * scale).half().double()
    lost = scaled < 2.0 ** -24
    assert bool(((half == 0) | (half.abs() == 2.0 ** -24))[lost].all())
    assert bool((half[~lost & (scaled < FP16_MAX)] != 0).all())


@pytest.mark.parametrize(("center", "scale"), [(-20, 1.0), (-17, 1.0), (-12, 1.0), (-20, 2.0 ** 8), (-30, 2.0)])
def test_the_rounding_error_matches_what_fp16_does_to_the_gradient(center: int, scale: float) -> None:
    torch.manual_seed(0)
    g = torch.randn(20000, dtype=torch.float64) * 2.0 ** center
    scaled = g * scale
    actual = math.sqrt(float(((scaled.half().double() - scaled) ** 2).sum() / (scaled ** 2).sum()))
    estimated = underflow_at(_histogram(g), LOG2_LOW, scale, float((g ** 2).sum())).rounding_error
    assert estimated == pytest.approx(actual, rel=0.15)


def test_a_scale_that_is_no_power_of_two_counts_whole_bins_only() -> None:
    counts = [0] * BINS
    counts[-20 - LOG2_LOW] = 10  # |g| in [2^-20, 2^-19)
    # at scale 3 the bound 2^-14 / 3 lies inside no whole bin below 2^-20 ... 2^-19: none counted
    assert count_below(counts, LOG2_LOW, -14, 2.0 ** 5) == 10  # 2^-19 * 2^5 = 2^-14: all below
    assert count_below(counts, LOG2_LOW, -14, 2.0 ** 6) == 0
    assert count_below(counts, LOG2_LOW, -14, 48.0) == 0  # straddles: a lower bound


# --------------------------------------------------------------------------- hand-made measurements

def _headroom(exponents: dict[int, int], *, act: float = 1.0, zero: int = 0,
              small: int | None = None, moved: int | None = None) -> Headroom:
    counts = [0] * BINS
    for e, n in exponents.items():
        counts[e - LOG2_LOW] = n
    grad_max = 2.0 ** (max(exponents) + 1) if exponents else 0.0
    return Headroom(activation_max_abs=act, grad_max_abs=grad_max, grad_log2_counts=tuple(counts),
                    grad_zero=zero, grad_count=sum(exponents.values()) + zero, update_small=small,
                    update_count=moved)


def _layer(name: str, headroom: Headroom, index: int = 0, role: str = "dense",
           type_name: str = "Linear") -> LayerStats:
    return layer_stats(name=name, type_name=type_name, index=index, order=index, role=role, fan_in=8,
                       received=True, grad_norm=0.1, grad_to_weight=0.1, grad_rms=0.01, headroom=headroom)


def _findings(layers: list[LayerStats], precision: str = "fp16", steps: int = 0,
              **measured: Any) -> list[Finding]:
    config = ScanConfig(precision=precision, steps=steps, batches=2 if steps else 3)
    m = replace(Measurements(layers=tuple(x.measured for x in layers), losses=(1.0,)), **measured)
    found = run_checks(CheckContext(layers, [], DEFAULTS, m, config))
    return [f for f in found if f.kind in (K.FP16_UNDERFLOW, K.FP16_OVERFLOW, K.BF16_STALE_UPDATE)]


TINY = {-21: 30, -20: 60, -19: 10}
"""Output gradients around 1e-6 (2^-20 ~ 9.5e-7): all below 2^-14, carried with about 5 bits."""
HEALTHY = {-9: 20, -7: 50, -5: 30}


def test_underflow_fires_only_in_fp16_and_reads_the_scale_in_use() -> None:
    layers = [_layer("a", _headroom(TINY, zero=20)), _layer("b", _headroom(HEALTHY), index=1)]
    found = _findings(layers)
    assert [(f.kind, f.layer, f.severity) for f in found] == [(K.FP16_UNDERFLOW, "a", Severity.WARNING)]
    ev = found[0].evidence
    assert (ev["below_normal_fraction"], ev["below_subnormal_fraction"], ev["loss_scale"]) == (1.0, 0.0, 1.0)
    assert (ev["nonzero_elements"], ev["zero_fraction"], ev["grad_max_abs"]) == (100, 20 / 120, 2.0 ** -18)
    assert float(ev["rounding_error"]) > DEFAULTS.fp16_gradient_error  # type: ignore[arg-type]
    assert _findings(layers, "fp32") == [] and _findings(layers, "bf16") == []
    # the backward ran at 2^10: 2^-21 * 2^10 = 2^-11, in the normal range
    assert _findings(layers, loss_scale=2.0 ** 10, final_loss_scale=None) == []
    # the dynamic scaler's final scale is the one in use
    assert _findings(layers, loss_scale=2.0 ** 16, final_loss_scale=1.0) != []


def test_small_elements_that_carry_little_of_the_gradient_do_not_fire() -> None:
    # 10% of the elements at 2^-22 (3 significant bits), but ~4^-14 of the gradient's square sum
    assert _findings([_layer("a", _headroom({-8: 90, -22: 10}))]) == []
    # the bulk at 2^-16 keeps 9 significant bits, more than bf16's 8: fine; at 2^-18, 7: not
    assert _findings([_layer("a", _headroom({-16: 100}))]) == []
    assert [f.layer for f in _findings([_layer("a", _headroom({-18: 100}))])] == ["a"]


def test_a_gradient_holding_values_fp16_cannot_hold_was_float32() -> None:
    # fp16 has no nonzero number below 2^-24: such elements mean autocast carried it in float32
    assert [f.layer for f in _findings([_layer("a", _headroom({-20: 100}))])] == ["a"]
    assert _findings([_layer("a", _headroom({-20: 95, -26: 5}))]) == []


def test_loss_scaling_takes_the_largest_safe_power_of_two_and_says_whether_it_lifts() -> None:
    layers = [_layer("a", _headroom(TINY)), _layer("b", _headroom(HEALTHY), index=1)]
    found = _findings(layers)
    rec = next(r for r in recommend(found, layers, has_normalization=False) if r.id == R.LOSS_SCALING)
    params = rec.parameters
    assert isinstance(params, LossScalingParameters)
    grad_max = 2.0 ** -4  # HEALTHY's largest bin is [2^-5, 2^-4)
    expected = 2.0 ** math.floor(math.log2(FP16_MAX / (DEFAULTS.loss_scale_margin * grad_max)))
    assert params.init_scale == expected == 2.0 ** 16  # 65504 / 8 / 2^-4 = 131008
    assert grad_max * params.init_scale <= FP16_MAX / DEFAULTS.loss_scale_margin < 2 * grad_max * params.init_scale
    assert params.clears_underflow and underflow_at(layers[0].measured.headroom.grad_log2_counts,  # type: ignore[union-attr]
                                                    LOG2_LOW, params.init_scale).below_normal == 0.0
    assert "init_scale=2.0 ** 16" in rec.code and "GradScaler" in rec.code
    assert rec.layers == ("a",)


def test_loss_scaling_says_when_no_scale_keeps_both_ends() -> None:
    # a's gradients at 2^-22 need 2^5 (to 2^-17: 8 bits); b's largest, below 2^13, allows at most 2^-1
    layers = [_layer("a", _headroom({-22: 100})), _layer("b", _headroom({12: 10}), index=1)]
    rec = next(r for r in recommend(_findings(layers), layers, has_normalization=False) if r.id == R.LOSS_SCALING)
    assert isinstance(rec.parameters, LossScalingParameters)
    assert rec.parameters.init_scale == 2.0 ** -1 and not rec.parameters.clears_underflow
    assert "needs 2^5" in rec.why and "bf16" in rec.why


def test_activation_overflow_names_the_first_site_and_recommends_bf16() -> None:
    layers = [_layer("late", _headroom(HEALTHY, act=math.inf), index=3),
              _layer("site", _headroom(HEALTHY, act=math.inf), index=2),
              _layer("wide", _headroom(HEALTHY, act=1e5), index=1),  # finite past 65504: kept in fp32
              _layer("fine", _headroom(HEALTHY, act=3.0), index=0)]
    found = _findings(layers)
    assert [(f.kind, f.layer, f.severity) for f in found] == [(K.FP16_OVERFLOW, "site", Severity.ERROR)]
    assert dict(found[0].evidence) == {"cause": "activation", "dtype_max": 65504.0, "activation_max_abs": math.inf,
                                       "layers_past_max": 2}
    assert _findings(layers, "bf16") == [] and _findings(layers, "fp32") == []
    ids = [r.id for r in recommend(found, layers, has_normalization=False)]
    assert ids == [R.USE_BF16]  # no normalization after the site: in fp32 its Inf would reach the next layer


def test_a_normalization_after_the_site_gets_keep_fp32() -> None:
    layers = [_layer("fc", _headroom(HEALTHY, act=math.inf)),
              _layer("norm", _headroom(HEALTHY, act=math.inf), index=1, role="normalization", type_name="LayerNorm"),
              _layer("head", _headroom(HEALTHY, act=math.inf), index=2)]
    recs = recommend(_findings(layers), layers, has_normalization=True)
    assert [r.id for r in recs] == [R.USE_BF16, R.KEEP_FP32]
    assert recs[1].layers == ("fc", "norm") and '"fc", "norm"' in recs[1].code


def test_scaled_gradients_past_the_max_are_a_real_overflow() -> None:
    layers = [_layer("a", _headroom({-2: 10}))]  # |g| < 2^-1; at 2^18 that is 2^17 > 65504
    found = _findings(layers, loss_scale=2.0 ** 18)
    assert [(f.evidence["cause"], f.severity) for f in found] == [("gradient", Severity.ERROR)]
    assert found[0].evidence["scaled_grad_max_abs"] == 2.0 ** 17
    rec = next(r for r in recommend(found, layers, has_normalization=False) if r.id == R.LOSS_SCALING)
    assert isinstance(rec.parameters, LossScalingParameters) and rec.parameters.init_scale == 2.0 ** 13


def test_a_scaler_that_backed_off_and_recovered_is_transient_info_without_a_fix() -> None:
    layers = [_layer("a", _headroom(HEALTHY))]
    found = _findings(layers, loss_scale=2.0 ** 16, final_loss_scale=2.0 ** 15, scale_overflows=1)
    assert [(f.kind, f.layer, f.severity, f.evidence["transient"]) for f in found] == \
        [(K.FP16_OVERFLOW, None, Severity.INFO, 1)]
    assert recommend(found, layers, has_normalization=False) == []


def test_stale_bf16_updates_need_bf16_and_steps() -> None:
    layers = [_layer("a", _headroom(HEALTHY, small=90, moved=100)),
              _layer("b", _headroom(HEALTHY, small=10, moved=100))]
    found = _findings(layers, "bf16", steps=2)
    assert [(f.kind, f.layer, f.evidence["stale_fraction"]) for f in found] == [(K.BF16_STALE_UPDATE, "a", 0.9)]
    assert found[0].evidence["resolution"] == 2.0 ** -8
    assert _findings(layers, "bf16") == [] and _findings(layers, "fp16", steps=2) == []
    assert [r.id for r in recommend(found, layers, has_normalization=False)] == [R.FP32_MASTER_WEIGHTS]


# --------------------------------------------------------------------------- the models, end to end

def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


class Tiny(nn.Module):
    """A two-layer MLP whose loss is scaled by 1e-5: its activation gradients sit around 1e-6."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)
        with torch.no_grad():
            for fc in (self.fc1, self.fc2):
                fc.weight.copy_(torch.randn(fc.weight.shape, generator=_generator()) / fc.in_features ** 0.5)
                fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _tiny_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1e-5 * nn.functional.cross_entropy(output.float(), target)


def _batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 16), torch.randint(0, 4, (batch_size,))


class Loud(nn.Module):
    """A Linear fed inputs of scale 1e5 (its outputs reach ~1e5), then a LayerNorm and a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.norm, self.head = nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.fc(x)))


def _loud_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return 1e5 * torch.randn(batch_size, 16), torch.randint(0, 4, (batch_size,))


def _scan(build: Callable[[], nn.Module], precision: str, loss: object = None,
          make_batch: Callable[[int], object] = _batch, **options: object) -> Report:
    return scan(Target("test", build, make_batch, loss), precision=precision, **options)  # type: ignore[arg-type]


def _kinds(report: Report) -> set[FindingKind]:
    return {f.kind for f in report.findings}


def test_tiny_gradients_underflow_in_fp16_and_the_recommended_scale_verifies() -> None:
    report = _scan(Tiny, "fp16", _tiny_loss, verify=True)
    under = {f.layer: f.evidence for f in report.findings if f.kind == K.FP16_UNDERFLOW}
    assert set(under) >= {"fc2"}
    rec = next(r for r in report.recommendations if r.id == R.LOSS_SCALING)
    assert rec.verification is not None and rec.verification.status == VerificationStatus.VERIFIED, rec.verification
    scaled = _scan(Tiny, "fp16", _tiny_loss, loss_scale=rec.parameters.init_scale)  # type: ignore[union-attr]
    assert K.FP16_UNDERFLOW not in _kinds(scaled)
    for precision in ("fp32", "bf16"):
        assert K.FP16_UNDERFLOW not in _kinds(_scan(Tiny, precision, _tiny_loss))


def test_tiny_underflow_fractions_equal_a_direct_fp16_count() -> None:
    report = _scan(Tiny, "fp16", _tiny_loss, batches=1)
    ev = next(f.evidence for f in report.findings if f.kind == K.FP16_UNDERFLOW and f.layer == "fc2")
    model = Tiny()
    torch.manual_seed(0)
    x, y = _batch(16)
    grads: list[torch.Tensor] = []
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(x)
        out.register_hook(grads.append)
        loss = _tiny_loss(out, y)
    loss.backward()
    g = grads[0].double().flatten()
    nonzero = g[g != 0]
    assert ev["nonzero_elements"] == nonzero.numel()
    assert ev["below_normal_fraction"] == int((nonzero.abs() < 2.0 ** -14).sum()) / nonzero.numel()
    assert ev["below_subnormal_fraction"] == int((nonzero.abs() < 2.0 ** -24).sum()) / nonzero.numel()
    assert ev["grad_max_abs"] == float(g.abs().max())


def test_activations_past_65504_overflow_in_fp16_and_not_in_bf16() -> None:
    report = _scan(Loud, "fp16", make_batch=_loud_batch, verify=True)
    over = [f for f in report.findings if f.kind == K.FP16_OVERFLOW]
    assert [(f.layer, f.evidence["cause"]) for f in over] == [("fc", "activation")]
    # the direct computation: fc's fp32 outputs pass fp16's max, and fp16 turns them to Inf
    model = Loud()
    torch.manual_seed(0)  # the probe's first batch
    x = _loud_batch(16)[0]
    with torch.no_grad():
        wide = model.fc(x)
        with torch.autocast("cpu", dtype=torch.float16):
            half = model.fc(x)
    assert float(wide.abs().max()) > FP16_MAX and bool(torch.isinf(half).any())
    assert over[0].evidence["activation_max_abs"] == math.inf
    for rid, layers in ((R.USE_BF16, ("fc",)), (R.KEEP_FP32, ("fc", "norm"))):
        rec = next(r for r in report.recommendations if r.id == rid)
        assert rec.layers == layers
        assert rec.verification is not None and rec.verification.status == VerificationStatus.VERIFIED, \
            (rid, rec.verification)
    for precision in ("fp32", "bf16"):
        quiet = _scan(Loud, precision, make_batch=_loud_batch)
        assert quiet.verdict.value == "healthy" and quiet.findings == (), precision


def _loud_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gradients around 10: at GradScaler's 65536 the fp16 backward passes 65504."""
    return 1e3 * nn.functional.cross_entropy(output.float(), target)


def test_a_dynamic_scaler_that_backs_off_and_recovers_is_a_transient_info() -> None:
    report = _scan(_healthy, "fp16", _loud_loss, loss_scale="dynamic")
    over = [f for f in report.findings if f.kind == K.FP16_OVERFLOW]
    assert [(f.layer, f.severity, f.evidence["cause"], f.evidence["transient"]) for f in over] == \
        [(None, Severity.INFO, "scaler", 1)]
    ev = over[0].evidence
    skipped = int(ev["scale_overflows"])  # type: ignore[arg-type]
    assert skipped >= 1 and ev["loss_scale"] == 2.0 ** 16
    assert ev["final_loss_scale"] == 2.0 ** 16 / 2 ** skipped  # halved once per skipped step (3 batches)
    assert not any(r.id == R.LOSS_SCALING for r in report.recommendations)  # benign: nothing to fix


def test_a_static_scale_that_overflows_is_real_and_a_backoff_from_half_of_it_verifies() -> None:
    report = _scan(_healthy, "fp16", _loud_loss, loss_scale=2.0 ** 16, verify=True)
    over = [f for f in report.findings if f.kind == K.FP16_OVERFLOW]
    assert [(f.severity, f.evidence["cause"], f.evidence["scaled_grad_max_abs"]) for f in over] == \
        [(Severity.ERROR, "gradient", math.inf)]
    rec = next(r for r in report.recommendations if r.id == R.LOSS_SCALING)
    assert isinstance(rec.parameters, LossScalingParameters)
    assert (rec.parameters.init_scale, rec.parameters.backoff) == (2.0 ** 15, True)
    assert rec.verification is not None and rec.verification.status == VerificationStatus.VERIFIED, rec.verification


def _healthy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_healthy_model_is_quiet_in_every_precision(precision: str) -> None:
    report = _scan(_healthy, precision)
    assert report.verdict.value == "healthy" and report.findings == () and report.recommendations == ()


CPU_FP16_LSTM = pytest.mark.xfail(raises=UserError, strict=True,
                                  reason="torch's CPU LSTM kernel (oneDNN) has no fp16 forward")


@pytest.mark.parametrize(("name", "precision"), [
    pytest.param(b.name, p, marks=CPU_FP16_LSTM if (b.name, p) == ("lstm", "fp16") else ())
    for b in BUILTINS if b.verdict == "healthy" for p in ("bf16", "fp16")])
def test_healthy_builtins_stay_quiet_in_mixed_precision(name: str, precision: str) -> None:
    report = scan(f"builtin:{name}", precision=precision)
    assert report.verdict.value == "healthy" and report.findings == (), [f.message for f in report.findings]


def test_stale_bf16_updates_at_a_small_sgd_rate_and_not_with_adam() -> None:
    report = _scan(_healthy, "bf16", steps=2, batches=2, lr=1e-4)
    stale = {f.layer: f for f in report.findings if f.kind == K.BF16_STALE_UPDATE}
    assert set(stale) == {"0", "2", "4"} and report.verdict.value == "healthy"
    assert all(f.severity == Severity.INFO and float(f.evidence["stale_fraction"]) > 0.5  # type: ignore[arg-type]
               for f in stale.values())
    # the direct computation for the first layer: SGD's first step lr * |g| against 2^-8 |w|
    model = _healthy()
    torch.manual_seed(0)
    x, y = _batch(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    weights = [p for p in model[0].parameters()]  # type: ignore[index]
    steps = [1e-4 * p.grad.abs() for p in weights if p.grad is not None]
    small = sum(int(((s > 0) & (s < 2.0 ** -8 * p.detach().abs())).sum()) for s, p in zip(steps, weights))
    moved = sum(int((s > 0).sum()) for s in steps)
    assert (stale["0"].evidence["update_small"], stale["0"].evidence["update_count"]) == (small, moved)
    assert [r.id for r in report.recommendations] == [R.FP32_MASTER_WEIGHTS]
    adam = _scan(_healthy, "bf16", steps=2, batches=2, optimizer="adam", lr=1e-3)
    assert adam.findings == ()


def test_every_precision_evidence_key_is_documented() -> None:
    from gradcheck_cli.report.catalog import FINDINGS
    from gradcheck_cli.report.evidence import RECORDS

    reports = [_scan(Tiny, "fp16", _tiny_loss), _scan(Loud, "fp16", make_batch=_loud_batch),
               _scan(_healthy, "fp16", _loud_loss, loss_scale="dynamic"),
               _scan(_healthy, "bf16", steps=2, batches=2, lr=1e-4)]
    found = [f for r in reports for f in r.findings if f.kind in (K.FP16_UNDERFLOW, K.FP16_OVERFLOW,
                                                                    K.BF16_STALE_UPDATE)]
    assert {f.kind for f in found} == {K.FP16_UNDERFLOW, K.FP16_OVERFLOW, K.BF16_STALE_UPDATE}
    for f in found:
        assert isinstance(f.evidence, RECORDS[f.kind])
        for key in f.evidence:
            assert key in FINDINGS[f.kind].measured, (f.kind, key)
