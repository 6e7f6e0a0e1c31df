"""vanishing-through-time / exploding-through-time: positive and negative recurrent models.

Every number the report gives is checked against a plain-autograd reference: the gradient w.r.t.
an input leaf at every time step, over the same seeded batches the scan draws
(torch.manual_seed(batch_index) before make_batch, 3 batches of 16).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from stats_factory import layer_stats
from torch import nn

from gradcheck_cli import scan
from gradcheck_cli.analyse.classify import classify_layers
from gradcheck_cli.analyse.recurrence import effective_horizon, near_end, oriented_steps
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.measure.records import RecurrentWeight
from gradcheck_cli.measure.spectra import recurrent_weights
from gradcheck_cli.report.records import FindingKind, RecommendationId, Report, Severity, Status
from gradcheck_cli.target.resolve import Target

FEATURES, HIDDEN, CLASSES, BATCHES, BATCH = 8, 32, 4, 3, 16
THROUGH_TIME = {FindingKind.VANISHING_THROUGH_TIME, FindingKind.EXPLODING_THROUGH_TIME}


class SeqClassifier(nn.Module):
    """A recurrent layer and a linear head reading one end of its output (or its mean)."""

    def __init__(self, cell: str, *, layers: int = 1, bidirectional: bool = False,
                 batch_first: bool = True, read: str = "last", nonlinearity: str = "tanh") -> None:
        super().__init__()
        kwargs: dict[str, Any] = {"nonlinearity": nonlinearity} if cell == "RNN" else {}
        self.batch_first, self.read = batch_first, read
        self.rnn = getattr(nn, cell)(FEATURES, HIDDEN, num_layers=layers, batch_first=batch_first,
                                     bidirectional=bidirectional, **kwargs)
        self.head = nn.Linear(HIDDEN * (2 if bidirectional else 1), CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        if not self.batch_first:
            out = out.transpose(0, 1)
        picked = {"last": lambda o: o[:, -1], "first": lambda o: o[:, 0], "mean": lambda o: o.mean(1)}
        return self.head(picked[self.read](out))


def _spectral_norm(model: SeqClassifier, sigma: float) -> SeqClassifier:
    """Every W_hh rescaled to largest singular value `sigma`."""
    with torch.no_grad():
        for name, w in model.rnn.named_parameters():
            if name.startswith("weight_hh"):
                w.mul_(sigma / torch.linalg.matrix_norm(w, ord=2))
    return model


def _orthogonal(model: SeqClassifier, gain: float) -> SeqClassifier:
    for name, w in model.rnn.named_parameters():
        if name.startswith("weight_hh"):
            nn.init.orthogonal_(w, gain=gain)
    return model


def _target(build: Callable[[], nn.Module], steps: int, batch_first: bool = True) -> Target:
    def make_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, steps, FEATURES) if batch_first else torch.randn(steps, n, FEATURES)
        return x, torch.randint(0, CLASSES, (n,))

    def seeded() -> nn.Module:
        torch.manual_seed(0)
        return build()

    return Target("test-model", seeded, make_batch, nn.functional.cross_entropy)


def _reference_steps(target: Target, batch_first: bool = True) -> list[float]:
    """Per-step RMS of dL/dx over (batch, features), root of the mean square over the batches."""
    model = target.build_model()
    assert target.make_batch is not None and target.loss_fn is not None
    total = None
    for b in range(BATCHES):
        torch.manual_seed(b)
        x, y = target.make_batch(BATCH)
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(target.loss_fn(model(x), y), [x])
        sq = g.double().pow(2).mean(dim=(0, 2) if batch_first else (1, 2))
        total = sq if total is None else total + sq
    assert total is not None
    return (total / BATCHES).sqrt().tolist()


def _through_time(report: Report) -> list[Any]:
    return [f for f in report.findings if f.kind in THROUGH_TIME]


# --------------------------------------------------------------------------- positive: vanishing

@pytest.mark.parametrize("batch_first", [True, False])
def test_vanilla_rnn_with_small_w_hh_vanishes_through_time(batch_first: bool) -> None:
    target = _target(lambda: _spectral_norm(SeqClassifier("RNN", batch_first=batch_first), 0.5), 60,
                     batch_first)
    report = scan(target)
    ref = _reference_steps(target, batch_first)
    rnn = next(x for x in report.layers if x.name == "rnn")
    assert report.verdict == Status.VANISHING and rnn.status == Status.VANISHING
    # The per-parameter gradients look fine: only the per-step profile shows it.
    assert rnn.grad_to_weight is not None and rnn.grad_to_weight > 1e-3
    findings = _through_time(report)
    assert [(f.kind, f.layer, f.severity) for f in findings] == [
        (FindingKind.VANISHING_THROUGH_TIME, "rnn", Severity.WARNING)]
    assert not [f for f in report.findings if f.kind == FindingKind.VANISHING]  # instead of, not besides
    ev = findings[0].evidence
    assert ev["steps"] == 60 and ev["near_end"] == "last" and ev["bidirectional"] == 0
    assert ev["first_step_grad_rms"] == pytest.approx(ref[0], rel=1e-4)
    assert ev["last_step_grad_rms"] == pytest.approx(ref[-1], rel=1e-4)
    assert ev["far_over_near"] == pytest.approx(ref[0] / ref[-1], rel=1e-4)
    assert ev["effective_horizon"] == effective_horizon(ref)
    assert isinstance(ev["effective_horizon"], int) and 1 <= ev["effective_horizon"] < 30
    # W_hh was scaled to spectral norm 0.5, below Pascanu's bound 1/gamma = 1 for tanh.
    assert ev["weight_hh_l0.largest_singular_value"] == pytest.approx(0.5, rel=1e-5)
    assert ev["max_largest_singular_value"] == pytest.approx(0.5, rel=1e-5)
    assert ev["recurrent_bound"] == 1.0
    assert float(ev["per_step_factor"]) < 0.5 * 1.1  # type: ignore[arg-type]
    assert "must vanish" in findings[0].message
    recs = {r.id: r for r in report.recommendations}
    assert recs[RecommendationId.GATED_RNN].layers == ("rnn",)
    assert f"{ref[0] / max(ref):.2g}" in recs[RecommendationId.GATED_RNN].why
    assert RecommendationId.CLIP_GRADIENTS not in recs


def test_vanishing_evidence_reaches_the_json_report() -> None:
    target = _target(lambda: _spectral_norm(SeqClassifier("RNN"), 0.5), 60)
    doc = json.loads(json.dumps(scan(target).to_dict()))  # the gradcheck/report@1 document
    finding = next(f for f in doc["findings"] if f["kind"] == "vanishing-through-time")
    for key in ("effective_horizon", "far_over_near", "first_step_grad_rms", "last_step_grad_rms",
                "weight_hh_l0.spectral_radius", "weight_hh_l0.largest_singular_value", "recurrent_bound"):
        assert isinstance(finding["evidence"][key], (int, float)), key


def test_two_layer_bidirectional_rnn_read_at_the_first_step_vanishes_towards_the_last() -> None:
    """The loss reads out[:, 0]: the reverse direction carries the gradient from the first step to
    the last, so the far end is the last step, and a decay towards it is vanishing, not a growth."""
    target = _target(lambda: _spectral_norm(
        SeqClassifier("RNN", layers=2, bidirectional=True, read="first"), 0.5), 60)
    report = scan(target)
    ref = _reference_steps(target)
    assert ref[-1] < 1e-6 * ref[0]  # the reference: the last step gets (almost) nothing
    (finding,) = _through_time(report)
    assert finding.kind == FindingKind.VANISHING_THROUGH_TIME
    ev = finding.evidence
    assert ev["near_end"] == "first" and ev["bidirectional"] == 1
    assert ev["far_end_step_grad_rms"] == pytest.approx(ref[-1], rel=1e-4)
    assert ev["effective_horizon"] == effective_horizon(ref[::-1])
    for name in ("weight_hh_l0", "weight_hh_l0_reverse", "weight_hh_l1", "weight_hh_l1_reverse"):
        assert ev[f"{name}.largest_singular_value"] == pytest.approx(0.5, rel=1e-5)
    assert "last time step" in finding.message


def test_bidirectional_rnn_read_at_the_last_step_vanishes_towards_the_first() -> None:
    target = _target(lambda: _spectral_norm(SeqClassifier("RNN", bidirectional=True), 0.5), 60)
    (finding,) = _through_time(scan(target))
    assert finding.kind == FindingKind.VANISHING_THROUGH_TIME
    assert finding.evidence["near_end"] == "last"


# --------------------------------------------------------------------------- positive: exploding

def test_vanilla_rnn_with_large_w_hh_explodes_through_time() -> None:
    target = _target(lambda: _orthogonal(SeqClassifier("RNN"), 2.5), 40)
    report = scan(target)
    ref = _reference_steps(target)
    assert ref[0] > 70 * ref[-1]
    rnn = next(x for x in report.layers if x.name == "rnn")
    assert rnn.status == Status.EXPLODING and report.verdict == Status.EXPLODING
    (finding,) = _through_time(report)
    assert (finding.kind, finding.layer, finding.severity) == (
        FindingKind.EXPLODING_THROUGH_TIME, "rnn", Severity.ERROR)
    assert not [f for f in report.findings if f.kind == FindingKind.EXPLODING and f.layer == "rnn"]
    ev = finding.evidence
    assert ev["far_over_near"] == pytest.approx(ref[0] / ref[-1], rel=1e-3)
    assert ev["effective_horizon"] == "all"
    assert ev["weight_hh_l0.spectral_radius"] == pytest.approx(2.5, rel=1e-4)
    assert ev["weight_hh_l0.largest_singular_value"] == pytest.approx(2.5, rel=1e-4)
    clip = next(r for r in report.recommendations if r.id == RecommendationId.CLIP_GRADIENTS)
    assert "rnn" in clip.layers and "max_norm=" in clip.code and f"{ref[0] / ref[-1]:.3g}x" in clip.why
    assert RecommendationId.GATED_RNN not in [r.id for r in report.recommendations]


def test_bidirectional_reverse_direction_exploding_is_measured_from_the_first_step() -> None:
    target = _target(lambda: _orthogonal(SeqClassifier("RNN", bidirectional=True, read="first"), 2.5), 40)
    ref = _reference_steps(target)
    (finding,) = _through_time(scan(target))
    assert finding.kind == FindingKind.EXPLODING_THROUGH_TIME
    assert finding.evidence["near_end"] == "first"
    assert finding.evidence["far_over_near"] == pytest.approx(ref[-1] / ref[0], rel=1e-3)


# --------------------------------------------------------------------------- negatives

@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch_first,bidirectional", [(True, False), (False, True)])
def test_gated_cells_at_default_init_stay_silent(cell: str, batch_first: bool, bidirectional: bool) -> None:
    """Two layers, loss on the last step only: their forget gates decay the gradient ~0.5-0.63x per
    step at init (MANIFEST.md), which is not vanishing for a gated cell."""
    target = _target(lambda: SeqClassifier(cell, layers=2, bidirectional=bidirectional,
                                           batch_first=batch_first), 30, batch_first)
    report = scan(target)
    ref = _reference_steps(target, batch_first)
    assert ref[0] < 1e-3 * ref[-1]  # it does decay through time ...
    assert report.verdict == Status.HEALTHY  # ... and is not called vanishing
    assert report.findings == () and report.recommendations == ()


def test_short_vanilla_rnn_pooled_over_time_is_healthy() -> None:
    target = _target(lambda: SeqClassifier("RNN", read="mean"), 20)
    report = scan(target)
    assert report.verdict == Status.HEALTHY and report.findings == ()


# --------------------------------------------------------------------------- pure helpers

def test_recurrent_weights_match_torch_per_gate_block() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    spectra = {(w.name, w.block): w for w in recurrent_weights(lstm)}
    assert set(spectra) == {(f"weight_hh_l{k}{s}", b) for k in (0, 1) for s in ("", "_reverse")
                            for b in ("cell", "gates")}
    w = lstm.get_parameter("weight_hh_l1_reverse").detach().double()
    i, f, g, o = w.chunk(4)
    cell = spectra[("weight_hh_l1_reverse", "cell")]
    assert cell.largest_singular_value == pytest.approx(float(torch.linalg.matrix_norm(g, ord=2)))
    assert cell.spectral_radius == pytest.approx(float(torch.linalg.eigvals(g).abs().max()))
    assert cell.bound == 1.0
    gates = spectra[("weight_hh_l1_reverse", "gates")]
    assert gates.largest_singular_value == pytest.approx(
        max(float(torch.linalg.matrix_norm(m, ord=2)) for m in (i, f, o)))
    assert gates.bound == 4.0  # sigmoid' <= 1/4


def test_recurrent_weights_of_rnn_gru_and_projected_lstm() -> None:
    torch.manual_seed(0)
    rnn = nn.RNN(3, 5, nonlinearity="relu")
    (whole,) = recurrent_weights(rnn)
    assert (whole.name, whole.block, whole.bound) == ("weight_hh_l0", "all", 1.0)
    assert whole.spectral_radius == pytest.approx(
        float(torch.linalg.eigvals(rnn.get_parameter("weight_hh_l0").detach().double()).abs().max()))
    gru_cell = next(w for w in recurrent_weights(nn.GRU(3, 5)) if w.block == "cell")
    assert gru_cell.bound == 1.0
    projected = recurrent_weights(nn.LSTM(3, 6, proj_size=2))
    assert all(w.spectral_radius is None for w in projected)  # 6x2 blocks are not square


def test_effective_horizon_and_orientation() -> None:
    decay = [0.5 ** (19 - t) for t in range(20)]  # 1 at the last step
    assert effective_horizon(decay) == 10  # 0.5**10 = 9.8e-4 < 1e-3, 0.5**9 is not
    assert effective_horizon([1.0] * 20) is None
    assert effective_horizon([0.0] * 5) is None
    assert near_end([0.0, 0.0, 1.0], bidirectional=True) == "last"
    assert near_end([1.0, 0.0, 0.0], bidirectional=True) == "first"
    assert near_end([1.0, 0.0, 0.0], bidirectional=False) == "last"  # gradient flows only backwards
    assert oriented_steps((1.0, 2.0, 3.0), (1.0, 0.0, 0.0), True) == (3.0, 2.0, 1.0)
    assert oriented_steps((1.0, 2.0, 3.0), (1.0, 0.0, 0.0), False) == (1.0, 2.0, 3.0)


def _rnn_stats(steps: tuple[float, ...], entry: tuple[float, ...] = (), bidirectional: bool = False,
               type_name: str = "RNN", gtw: float = 0.2) -> LayerStats:
    return layer_stats(
        name="rnn", type_name=type_name, index=0, params=1024, role="dense", fan_in=32, weight_std=0.1,
        trainable=True, received=True, grad_norm=gtw * 10, weight_norm=10.0, grad_to_weight=gtw,
        grad_rms=0.06, nonfinite_grads=0, output_rms=1.0, output_grad_rms=1e-3, output_nonfinite=False,
        step_grad_rms=steps, step_entry_grad_rms=entry, bidirectional=bidirectional,
        recurrent_weights=(RecurrentWeight("weight_hh_l0", "all", 0.5, 0.9, 1.0),))


def test_through_time_rules_mark_the_verdict_and_come_before_the_grad_to_weight_ceiling() -> None:
    growing = tuple(2.0 ** (9 - t) for t in range(10))
    (v,) = classify_layers([_rnn_stats(growing, gtw=1e5)], Thresholds())
    assert v.status == Status.EXPLODING and v.through_time  # the recurrence, not the ratio, is the cause
    decaying = tuple(reversed(growing))
    (v,) = classify_layers([_rnn_stats(decaying)], Thresholds())
    assert v.status == Status.HEALTHY  # 1/512 of the peak is not below 1e-3
    # Bidirectional, gradient entering at the first step: a decay towards the last step is
    # vanishing, not growth.
    steep = tuple(10.0 ** -t for t in range(8))
    (v,) = classify_layers([_rnn_stats(steep, (1.0,) + (0.0,) * 7, bidirectional=True)], Thresholds())
    assert v.status == Status.VANISHING and v.through_time and "last time step" in v.reason
    (v,) = classify_layers([_rnn_stats(steep, (1.0,) + (0.0,) * 7, bidirectional=False)], Thresholds())
    assert v.status == Status.EXPLODING  # unidirectional: the same profile grew going back in time
    (v,) = classify_layers([_rnn_stats(tuple(reversed(steep)), type_name="GRU")], Thresholds())
    assert v.status == Status.HEALTHY and not v.through_time  # gated cells are never vanishing


def test_a_nan_step_leaves_the_layer_to_the_other_rules() -> None:
    (v,) = classify_layers([_rnn_stats((math.nan, 1.0, 1.0))], Thresholds())
    assert not v.through_time


def test_entry_profile_is_the_output_gradient_per_step() -> None:
    """step_entry_grad_rms (which tells a bidirectional layer's near end) against autograd's
    gradient w.r.t. the layer's output sequence, (seq, batch) layout."""
    from gradcheck_cli.config import ScanConfig
    from gradcheck_cli.measure.probe import run_probe

    target = _target(lambda: SeqClassifier("GRU", bidirectional=True, batch_first=False, read="first"),
                     12, batch_first=False)
    assert target.make_batch is not None and target.loss_fn is not None
    result = run_probe(target.build_model(), target.make_batch, target.loss_fn,
                       ScanConfig(batches=1, batch_size=BATCH))
    probe = next(x for x in result.layers if x.name == "rnn")
    model = target.build_model()
    torch.manual_seed(0)
    x, y = target.make_batch(BATCH)
    out, _ = model.rnn(x)
    picked = model.head(out.transpose(0, 1)[:, 0])
    (g,) = torch.autograd.grad(target.loss_fn(picked, y), [out])
    reference = g.double().pow(2).mean(dim=(1, 2)).sqrt().tolist()
    assert probe.bidirectional and len(probe.step_entry_grad_rms) == 12
    assert probe.step_entry_grad_rms == pytest.approx(reference, rel=1e-5)
    assert near_end(probe.step_entry_grad_rms, probe.bidirectional) == "first"


def test_nonfinite_recurrent_weights_have_no_spectrum_and_do_not_crash() -> None:
    """Diverged --steps leave NaN/Inf in weight_hh: LAPACK's eigenvalue balancing crashed the whole
    process on them (a segfault, `gradcheck scan exploding_rnn_relu_spectral.py --steps 2`)."""
    torch.manual_seed(0)
    rnn = nn.RNN(4, 8)
    with torch.no_grad():
        rnn.get_parameter("weight_hh_l0")[0, 0] = float("nan")
        rnn.get_parameter("weight_hh_l0")[1, 1] = float("inf")
    (weight,) = recurrent_weights(rnn)
    assert weight.spectral_radius is None and math.isnan(weight.largest_singular_value)
    assert weight.bound == 1.0
