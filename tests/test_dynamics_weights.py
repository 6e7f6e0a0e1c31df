"""--steps: init checks judge the weights as built, divergence is judged step by step on the batch
each step was taken on, and lower-lr suggests a rate derived from the steps before the loss rose.

The models live in tests/data/dynamics/ (the corpus contract has no place for --steps: its options
come from the scan, not from the model file). Their labels are confirmed here with plain autograd:
the probe's schedule (batch b drawn under seed + b, then `steps` optimizer steps on it) replayed
with loss.backward() and a plain torch.optim optimizer.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from gradcheck_cli import scan
from gradcheck_cli.analyse.checks import CheckContext
from gradcheck_cli.analyse.checks.divergence import check as divergence_check
from gradcheck_cli.analyse.checks.divergence import largest_rise, pre_divergence, step_factors
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.measure.records import Measurements
from gradcheck_cli.report.records import FindingKind, RecommendationId

DATA = Path(__file__).parent / "data" / "dynamics"
NORMAL_INIT = DATA / "normal_init_relu_mlp.py"
SANE_INIT = DATA / "sane_init_regression_mlp.py"
R = RecommendationId


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _replay(path: Path, lr: float, steps: int, seed: int, batches: int = 3) -> list[list[float]]:
    """Plain autograd and torch.optim.SGD on the probe's schedule: per batch that steps are taken
    on, its loss before the steps and after each of them (the same numbers the probe must see)."""
    module = _load(path)
    model = module.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = getattr(module, "loss_fn", None)
    rounds = []
    for b in range(batches - 1):
        torch.manual_seed(seed + b)
        x, y = module.make_batch(16)
        values = [float(_loss(model(x), y, loss_fn))]
        for _ in range(steps):
            optimizer.zero_grad()
            _loss(model(x), y, loss_fn).backward()
            optimizer.step()
            values.append(float(_loss(model(x), y, loss_fn)))
        rounds.append(values)
    return rounds


def _loss(out: torch.Tensor, y: torch.Tensor, loss_fn: object) -> torch.Tensor:
    """The probe's loss: the file's loss_fn, else cross-entropy for class targets, else MSE."""
    if callable(loss_fn):
        return loss_fn(out, y)
    if y.dtype == torch.long:
        return nn.functional.cross_entropy(out, y)
    return nn.functional.mse_loss(out, y)


def _built_weights(path: Path) -> dict[str, tuple[float, float]]:
    """(weight std, weight-and-bias norm) per Linear, straight from build_model()."""
    model = _load(path).build_model()
    return {name: (float(m.weight.std()), math.sqrt(sum(float(p.pow(2).sum()) for p in m.parameters())))
            for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _num(value: object) -> float:
    assert isinstance(value, (int, float))
    return float(value)


def _ids(report) -> list[R]:  # type: ignore[no-untyped-def]
    return [r.id for r in report.recommendations]


# --- init too large, steps that diverge ---------------------------------------------------------

def test_the_init_finding_reads_the_weights_as_built_not_after_the_diverging_steps() -> None:
    lr = 0.01
    # Plain autograd: the built weights are N(0, 1), and the steps make the loss NaN/Inf or rise 100x.
    built = _built_weights(NORMAL_INIT)
    assert all(0.9 < std < 1.1 for std, _ in built.values())
    replay = _replay(NORMAL_INIT, lr, steps=3, seed=0)
    assert not all(math.isfinite(v) for v in replay[0]) or max(replay[0]) > 100 * replay[0][0]

    report = scan(str(NORMAL_INIT), steps=3, lr=lr)
    kinds = {f.kind for f in report.findings}
    assert FindingKind.DIVERGENCE in kinds
    init = {f.layer: f for f in report.findings if f.kind == FindingKind.INIT_SCALE}
    assert set(init) == set(built)  # every Linear, the head included
    for name, finding in init.items():
        assert finding.evidence["direction"] == "too large"
        assert finding.evidence["weight_std"] == pytest.approx(built[str(name)][0], rel=1e-5)
    for layer in report.layers:  # the table's weight norm is the built model's too
        assert layer.weight_norm == pytest.approx(built[layer.name][1], rel=1e-5)

    # The init is the cause: its fixes come first, clip-gradients and lower-lr after them.
    ids = _ids(report)
    assert ids.index(R.HE_INIT) < ids.index(R.CLIP_GRADIENTS) < ids.index(R.LOWER_LR)
    assert ids.index(R.XAVIER_INIT) < ids.index(R.CLIP_GRADIENTS)


def test_the_lower_lr_rate_for_an_init_bug_is_not_absurd() -> None:
    lr = 0.01
    report = scan(str(NORMAL_INIT), steps=3, lr=lr)
    ev = next(f.evidence for f in report.findings if f.kind == FindingKind.DIVERGENCE)
    ratio = ev["max_update_to_weight"]
    # One step moved a layer by more than its own norm: lr x 1e-3 / ratio (~1e-6 here) would be
    # no learning rate at all; the suggestion stops at lr / 1000.
    assert isinstance(ratio, float) and lr * 1e-3 / ratio < lr / 1000
    assert ev["suggested_lr"] == pytest.approx(lr / 1000) and ev["suggested_lr_basis"] == "floor"
    lower = next(r for r in report.recommendations if r.id == R.LOWER_LR)
    assert "lr=1e-05" in lower.code and "lr/1000" in lower.why


# --- sane init, a learning rate too high --------------------------------------------------------

def test_sane_weights_blown_up_by_the_steps_are_never_called_an_init_problem() -> None:
    built = _built_weights(SANE_INIT)
    for seed in range(4):
        report = scan(str(SANE_INIT), steps=3, lr=0.45, seed=seed)
        assert FindingKind.DIVERGENCE in {f.kind for f in report.findings}
        assert FindingKind.INIT_SCALE not in {f.kind for f in report.findings}
        assert not {R.HE_INIT, R.XAVIER_INIT} & set(_ids(report))
        for layer in report.layers:
            assert layer.weight_norm == pytest.approx(built[layer.name][1], rel=1e-5)


def test_the_probe_measures_each_step_on_its_own_batch_as_plain_autograd_does() -> None:
    module = _load(SANE_INIT)
    result = run_probe(module.build_model(), module.make_batch, None,
                       ScanConfig(steps=3, lr=0.45, optimizer="sgd", seed=0))
    replay = _replay(SANE_INIT, 0.45, steps=3, seed=0)
    assert len(result.step_rounds) == len(replay) == 2
    for measured, plain in zip(result.step_rounds, replay):
        assert measured == pytest.approx(plain, rel=1e-4)
    assert len(result.step_updates) == 6 and all(name for name, _ in result.step_updates)


def test_a_finite_100x_rise_is_divergence_in_every_seed_and_every_run() -> None:
    """Plain autograd: at SGD lr 0.45 the loss rises by orders of magnitude in every seed (seed 0
    stays finite: 5.4 -> 4.1 -> 10.3 -> 338 on batch 0, 170 -> 108 -> 6.7e4 -> 3.0e4 on batch 1),
    zig-zagging across the batches, so that its trace ends on a fall (6.7e4, then 3.2e4 on the
    next batch): the rule on the trace's trailing rises missed it."""
    for seed in range(4):
        replay = _replay(SANE_INIT, 0.45, steps=3, seed=seed)
        values = [v for r in replay for v in r]
        finite = all(math.isfinite(v) for v in values)
        assert not finite or max(values) > 100 * values[0], seed
        report = scan(str(SANE_INIT), steps=3, lr=0.45, seed=seed)
        divergence = [f for f in report.findings if f.kind == FindingKind.DIVERGENCE]
        assert len(divergence) == 1, (seed, report.loss.values)
        if finite:
            assert divergence[0].evidence["rule"] == "same-batch-rise"
            assert _num(divergence[0].evidence["same_batch_rise"]) > 100
    assert all(math.isfinite(v) for r in _replay(SANE_INIT, 0.45, steps=3, seed=0) for v in r)
    first = scan(str(SANE_INIT), steps=3, lr=0.45, seed=0)
    for _ in range(2):
        again = scan(str(SANE_INIT), steps=3, lr=0.45, seed=0)
        assert [f.evidence for f in again.findings] == [f.evidence for f in first.findings]


def test_the_same_model_at_a_sane_learning_rate_does_not_diverge() -> None:
    for seed in range(4):
        replay = _replay(SANE_INIT, 0.01, steps=3, seed=seed)
        assert all(r[-1] <= r[0] for r in replay)  # plain autograd: each batch's loss falls
        report = scan(str(SANE_INIT), steps=3, lr=0.01, seed=seed)
        assert report.findings == () and report.verdict.value == "healthy"


def test_the_suggested_rate_comes_from_the_steps_before_the_rise_and_trains() -> None:
    lr = 0.45
    module = _load(SANE_INIT)
    result = run_probe(module.build_model(), module.make_batch, None,
                       ScanConfig(steps=3, lr=lr, optimizer="sgd", seed=0))
    # Batch 0: the first step lowered the loss (5.4 -> 4.1), the second raised it: two steps
    # before the divergence, whose update ratios were measured at weights it had not yet moved.
    pre = pre_divergence(result.step_rounds)
    assert pre == 2
    basis = max(ratio for _, ratio in result.step_updates[:pre])
    later = max(ratio for _, ratio in result.step_updates[pre:] if math.isfinite(ratio))
    assert later > 10 * basis  # the blown-up steps that must not set the rate
    report = scan(str(SANE_INIT), steps=3, lr=lr, seed=0)
    ev = next(f.evidence for f in report.findings if f.kind == FindingKind.DIVERGENCE)
    assert ev["max_update_to_weight"] == pytest.approx(basis) and ev["pre_divergence_steps"] == pre
    suggested = _num(ev["suggested_lr"])
    assert lr / 1000 <= suggested <= lr / 10
    assert suggested == pytest.approx(min(max(lr * 1e-3 / basis, lr / 1000), lr / 10), rel=0.25)
    # At that rate the same probe trains: no divergence, and the largest update/weight ratio
    # lands in the healthy ~1e-3..1e-2 window.
    for seed in range(4):
        calmer = scan(str(SANE_INIT), steps=3, lr=suggested, seed=seed)
        assert not [f for f in calmer.findings if f.kind == FindingKind.DIVERGENCE]
        top = max(layer.update_to_weight or 0.0 for layer in calmer.layers)
        assert 1e-4 < top < 1e-2


# --- the rule itself ----------------------------------------------------------------------------

def _context(trace: tuple[float, ...], rounds: tuple[tuple[float, ...], ...],
             updates: tuple[tuple[str, float], ...] = ()) -> CheckContext:
    measured = Measurements(layers=(), losses=trace, loss_trace=trace, step_rounds=rounds, step_updates=updates)
    return CheckContext([], [], Thresholds(), measured, ScanConfig(steps=3, optimizer="sgd", lr=0.45))


# Seed 0 of the sane-init model at lr 0.45 (above): the trace ends on a fall and its first step
# lowered the loss, so neither "three trailing rises" nor "every loss above 2x the start" held.
SEED0_TRACE = (5.401, 4.064, 10.29, 169.6, 107.9, 6.667e4, 3.159e4)
SEED0_ROUNDS = ((5.401, 4.064, 10.29, 338.4), (169.6, 107.9, 6.667e4, 2.951e4))
SEED0_UPDATES = (("4", 1.52), ("4", 1.47), ("4", 4.6), ("4", 10.1), ("4", 0.95), ("4", 584.0))


def test_the_rise_is_compounded_over_steps_each_on_its_own_batch() -> None:
    findings = divergence_check(_context(SEED0_TRACE, SEED0_ROUNDS, SEED0_UPDATES))
    assert len(findings) == 1
    ev = findings[0].evidence
    assert ev["rule"] == "same-batch-rise" and _num(ev["same_batch_rise"]) > 1e3
    assert ev["pre_divergence_steps"] == 2 and ev["max_update_to_weight"] == 1.52
    # The same factors in another order across the batch boundary give the same verdict.
    shifted = ((5.401, 4.064), (3.9, 9.9, 321.0, 160.0, 1.03e5))
    assert divergence_check(_context(SEED0_TRACE, shifted))[0].evidence["rule"] == "same-batch-rise"


def test_the_compounded_rise_ignores_batch_noise_and_falls() -> None:
    # Healthy: each step lowers its batch's loss, however much the batches differ (0.001 vs 0.5).
    calm = ((0.001, 0.0009, 0.0008), (0.5, 0.45, 0.41))
    assert not divergence_check(_context((0.001, 0.0009, 0.5, 0.45, 0.6), calm))
    # Dropout-like noise of +-30% per step compounds to far less than 100x.
    noisy = ((1.0, 1.3, 1.0, 1.3), (1.1, 1.4, 1.1, 1.4))
    assert largest_rise(step_factors(noisy))[0] < 3
    assert not divergence_check(_context((1.0, 1.3, 1.0, 1.1, 1.4, 1.1, 1.2), noisy))
    # A run that fell 100x and came back to where it started rose 100x from its low point.
    assert largest_rise([0.1, 0.1, 10.0, 10.0]) == pytest.approx((100.0, 2))
    assert step_factors(((-2.0, 1.0), (1.0, 3.0))) == [1.0, 3.0]  # no ratio across 0


def test_a_nan_only_on_the_batch_the_last_steps_were_taken_on_is_divergence() -> None:
    finding = divergence_check(_context((1.0, 0.9, 1.1), ((1.0, 0.9, math.nan),)))
    assert finding and finding[0].evidence["rule"] == "nonfinite"
