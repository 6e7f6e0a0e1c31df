"""Recurrence written by hand: a cell module called once per step in a Python loop (cell_watch.py).

Every per-step number is checked against plain autograd: the gradient reaching the state that
call k passes to call k+1 (retain_grad on the cell's hx / state input, via a forward pre-hook),
over the same seeded batches the scan draws (torch.manual_seed(batch_index), 3 batches of 16).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from gradcheck_cli import scan
from gradcheck_cli.analyse.recurrence import effective_horizon
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.cell_watch import MIN_CALLS, _combined_rms, _scaled_square
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.report.records import FindingKind, RecommendationId, Report, Severity, Status
from gradcheck_cli.target.resolve import Target

FEATURES, HIDDEN, CLASSES, BATCHES, BATCH = 8, 32, 4, 3, 16
THROUGH_TIME = {FindingKind.VANISHING_THROUGH_TIME, FindingKind.EXPLODING_THROUGH_TIME}
CORPUS = Path(__file__).parent / "corpus"


class TorchCellLoop(nn.Module):
    """nn.RNNCell / GRUCell / LSTMCell stepped over the sequence; the head reads the last state
    (or the mean of all states)."""

    def __init__(self, cell: str, read: str = "last", nonlinearity: str = "tanh") -> None:
        super().__init__()
        kwargs: dict[str, Any] = {"nonlinearity": nonlinearity} if cell == "RNNCell" else {}
        self.kind, self.read = cell, read
        self.cell = getattr(nn, cell)(FEATURES, HIDDEN, **kwargs)
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.size(0), HIDDEN)
        c = torch.zeros_like(h)
        states = []
        for t in range(x.size(1)):
            if self.kind == "LSTMCell":
                h, c = self.cell(x[:, t], (h, c))
            else:
                h = self.cell(x[:, t], h)
            states.append(h)
        return self.head(h if self.read == "last" else torch.stack(states, 1).mean(1))


class MakemoreCell(nn.Module):
    """makemore's RNNCell: one Linear on cat([x_t, h_prev]), then tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.xh_to_h = nn.Linear(FEATURES + HIDDEN, HIDDEN)

    def forward(self, xt: torch.Tensor, hprev: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.xh_to_h(torch.cat([xt, hprev], dim=1)))


class MakemoreGRUCell(nn.Module):
    """makemore's GRUCell: the state also takes the path (1 - z) * h_prev around the Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.xh_to_z = nn.Linear(FEATURES + HIDDEN, HIDDEN)
        self.xh_to_r = nn.Linear(FEATURES + HIDDEN, HIDDEN)
        self.xh_to_hbar = nn.Linear(FEATURES + HIDDEN, HIDDEN)

    def forward(self, xt: torch.Tensor, hprev: torch.Tensor) -> torch.Tensor:
        xh = torch.cat([xt, hprev], dim=1)
        r = torch.sigmoid(self.xh_to_r(xh))
        hbar = torch.tanh(self.xh_to_hbar(torch.cat([xt, r * hprev], dim=1)))
        z = torch.sigmoid(self.xh_to_z(xh))
        return (1 - z) * hprev + z * hbar


class OwnCellLoop(nn.Module):
    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.size(0), HIDDEN)
        for t in range(x.size(1)):
            h = self.cell(x[:, t], h)
        return self.head(h)


class TwoLinearCellLoop(nn.Module):
    """Elman's form written out: h = tanh(i2h(x_t) + h2h(h))."""

    def __init__(self) -> None:
        super().__init__()
        self.i2h = nn.Linear(FEATURES, HIDDEN)
        self.h2h = nn.Linear(HIDDEN, HIDDEN)
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.size(0), HIDDEN)
        for t in range(x.size(1)):
            h = torch.tanh(self.i2h(x[:, t]) + self.h2h(h))
        return self.head(h)


def _target(build: Callable[[], nn.Module], steps: int) -> Target:
    def make_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, steps, FEATURES), torch.randint(0, CLASSES, (n,))

    def seeded() -> nn.Module:
        torch.manual_seed(0)
        return build()

    return Target("test-model", seeded, make_batch, nn.functional.cross_entropy)


def _reference_states(target: Target, cell_path: str, state_arg: int) -> list[float]:
    """Plain autograd: RMS of the gradient reaching each state input of calls 2..T of the module at
    `cell_path` (its positional argument `state_arg`, a tensor or an (h, c) tuple), root of the
    mean square over the batches, in float64."""
    model = target.build_model()
    cell = model.get_submodule(cell_path)
    assert target.make_batch is not None and target.loss_fn is not None
    total: list[float] | None = None
    for b in range(BATCHES):
        kept: list[list[torch.Tensor]] = []
        handle = cell.register_forward_pre_hook(_keep_state(kept, state_arg))
        torch.manual_seed(b)
        x, y = target.make_batch(BATCH)
        target.loss_fn(model(x), y).backward()
        handle.remove()
        per_step = []
        for tensors in kept:
            grads = [t.grad.double() if t.grad is not None else torch.zeros_like(t, dtype=torch.float64)
                     for t in tensors]
            per_step.append(float(sum(g.pow(2).sum() for g in grads) / sum(g.numel() for g in grads)))
        total = per_step if total is None else [a + c for a, c in zip(total, per_step)]
    assert total is not None
    return [math.sqrt(v / BATCHES) for v in total]


def _keep_state(kept: list[list[torch.Tensor]], state_arg: int) -> Callable[..., None]:
    """A forward pre-hook that retains the gradient of the call's state input, when it has one."""
    def keep(module: nn.Module, args: tuple[Any, ...]) -> None:
        state = args[state_arg] if len(args) > state_arg else None
        tensors = [t for t in (state if isinstance(state, tuple) else (state,)) if isinstance(t, torch.Tensor)]
        if tensors and all(t.requires_grad for t in tensors):
            for t in tensors:
                t.retain_grad()
            kept.append(tensors)
    return keep


def _probe(target: Target) -> dict[str, Any]:
    model = target.build_model()
    assert target.make_batch is not None
    result = run_probe(model, target.make_batch, target.loss_fn, ScanConfig())
    return {layer.name: layer for layer in result.layers}


def _through_time(report: Report) -> list[Any]:
    return [f for f in report.findings if f.kind in THROUGH_TIME]


# --------------------------------------------------------------------------- vanishing, torch cell

def test_tanh_rnncell_over_200_steps_vanishes_through_time() -> None:
    target = _target(lambda: TorchCellLoop("RNNCell"), 200)
    report = scan(target)
    ref = _reference_states(target, "cell", 1)
    assert len(ref) == 199  # the states passed between 200 calls; the first call's is zeros
    cell = next(x for x in report.layers if x.name == "cell")
    assert report.verdict == Status.VANISHING and cell.status == Status.VANISHING
    # The cell's own parameter gradients look fine: the last steps dominate them.
    assert cell.grad_to_weight is not None and cell.grad_to_weight > 1e-2
    findings = _through_time(report)
    assert [(f.kind, f.layer, f.severity) for f in findings] == [
        (FindingKind.VANISHING_THROUGH_TIME, "cell", Severity.WARNING)]
    ev = findings[0].evidence
    assert ev["steps"] == 199 and ev["cell_calls"] == 200 and ev["recurrent_cell"] == "vanilla"
    assert ev["near_end"] == "last"
    assert ev["last_step_grad_rms"] == pytest.approx(ref[-1], rel=1e-4)
    assert ev["first_step_grad_rms"] == pytest.approx(ref[0], rel=1e-4, abs=1e-45)
    assert ev["far_over_near"] is not None and float(ev["far_over_near"]) < 1e-30  # type: ignore[arg-type]
    assert ev["effective_horizon"] == effective_horizon(ref)
    assert isinstance(ev["effective_horizon"], int) and 1 <= ev["effective_horizon"] < 50
    # The far steps underflow float32 to exactly 0 in autograd itself; the factor per step is
    # taken from the farthest step that still received something.
    zeros = next(k for k, v in enumerate(ref) if v > 0)
    assert ev.get("zero_steps", 0) == zeros
    assert float(ev["per_step_factor"]) == pytest.approx(  # type: ignore[arg-type]
        (ref[zeros] / ref[-1]) ** (1 / (len(ref) - 1 - zeros)), rel=1e-3)
    w_hh = target.build_model().get_submodule("cell").weight_hh.detach().double()
    assert ev["weight_hh.largest_singular_value"] == pytest.approx(
        float(torch.linalg.matrix_norm(w_hh, ord=2)), rel=1e-6)
    assert ev["weight_hh.spectral_radius"] == pytest.approx(
        float(torch.linalg.eigvals(w_hh).abs().max()), rel=1e-6)
    assert ev["recurrent_bound"] == 1.0
    assert "called 200 times in a loop" in findings[0].message
    # Default init: largest singular value above tanh's bound 1, spectral radius below it.
    assert float(ev["weight_hh.largest_singular_value"]) > 1 > float(ev["weight_hh.spectral_radius"])  # type: ignore[arg-type]
    assert "W_hh^n shrinks" in findings[0].message
    recs = {r.id: r for r in report.recommendations}
    assert recs[RecommendationId.GATED_RNN].layers == ("cell",)
    assert "nn.GRUCell" in recs[RecommendationId.GATED_RNN].code  # a cell for a cell loop
    assert RecommendationId.CLIP_GRADIENTS not in recs


def test_step_gradients_far_below_float32_range_do_not_underflow() -> None:
    # A step whose gradient elements are ~1e-40 (float32 subnormals) or ~1e-200 (float64): their
    # squares are 0 in their own dtype; the (log2 scale, mean square) form keeps the RMS.
    for value, dtype in ((1e-40, torch.float32), (1e-200, torch.float64)):
        g = torch.full((16, 32), value, dtype=dtype)
        g[0, 0] = 2 * value
        exact = math.sqrt(((16 * 32 - 1) * value**2 + 4 * value**2) / (16 * 32)) if value > 1e-150 \
            else value * math.sqrt(((16 * 32 - 1) + 4) / (16 * 32))
        rms = _combined_rms([tuple(_scaled_square(g).tolist())])  # type: ignore[list-item]
        assert rms == pytest.approx(exact, rel=1e-3 if dtype == torch.float32 else 1e-6)
        # Combined with a normal-sized step's slot, neither vanishes.
        both = _combined_rms([tuple(_scaled_square(g).tolist()),  # type: ignore[list-item]
                              tuple(_scaled_square(torch.ones(16, 32, dtype=dtype)).tolist())])
        assert both == pytest.approx(math.sqrt(0.5), rel=1e-6)
    # A complex state: the RMS of |g|.
    z = torch.full((4, 8), 3 + 4j, dtype=torch.complex64)
    assert _combined_rms([tuple(_scaled_square(z).tolist())]) == pytest.approx(5.0, rel=1e-6)  # type: ignore[list-item]


# --------------------------------------------------------------------------- exploding

def test_relu_rnncell_with_spectral_radius_2_explodes_through_time() -> None:
    def build() -> nn.Module:
        model = TorchCellLoop("RNNCell", nonlinearity="relu")
        nn.init.orthogonal_(model.cell.weight_hh, gain=2.0)  # every |eigenvalue| is 2
        return model

    target = _target(build, 30)
    report = scan(target)
    ref = _reference_states(target, "cell", 1)
    findings = _through_time(report)
    assert report.verdict == Status.EXPLODING
    assert [(f.kind, f.layer, f.severity) for f in findings] == [
        (FindingKind.EXPLODING_THROUGH_TIME, "cell", Severity.ERROR)]
    ev = findings[0].evidence
    assert ev["first_step_grad_rms"] == pytest.approx(ref[0], rel=1e-4)
    assert ev["last_step_grad_rms"] == pytest.approx(ref[-1], rel=1e-4)
    assert float(ev["far_over_near"]) > 70  # type: ignore[arg-type]
    assert ev["max_spectral_radius"] == pytest.approx(2.0, rel=1e-5)
    assert ev["recurrent_bound"] == 1.0 and "can grow" in findings[0].message
    recs = {r.id: r for r in report.recommendations}
    assert recs[RecommendationId.CLIP_GRADIENTS].layers[0] == "cell"
    assert RecommendationId.GATED_RNN not in recs


# --------------------------------------------------------------------------- gated cells

@pytest.mark.parametrize("cell", ["GRUCell", "LSTMCell"])
def test_gated_cells_over_a_moderate_length_are_healthy(cell: str) -> None:
    target = _target(lambda: TorchCellLoop(cell, read="mean"), 40)
    report = scan(target)
    assert report.verdict == Status.HEALTHY and report.findings == ()
    layer = _probe(target)["cell"]
    assert layer.recurrent_cell == "gated" and len(layer.step_grad_rms) == 39
    ref = _reference_states(target, "cell", 1)  # LSTMCell: h and c together
    assert list(layer.step_grad_rms) == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("cell", ["GRUCell", "LSTMCell"])
def test_gated_cells_that_decay_at_init_are_not_vanishing(cell: str) -> None:
    # Loss on the last state only: at default init a gated cell decays ~0.6x per step
    # (tests/corpus/MANIFEST.md) and learns to keep the gradient; it is the fix, not the problem.
    report = scan(_target(lambda: TorchCellLoop(cell), 60))
    assert not [f for f in report.findings if f.kind == FindingKind.VANISHING_THROUGH_TIME]
    assert RecommendationId.GATED_RNN not in {r.id for r in report.recommendations}


# --------------------------------------------------------------------------- a user's own cell

def test_makemore_style_own_tanh_cell_vanishes_through_time() -> None:
    target = _target(lambda: OwnCellLoop(MakemoreCell()), 100)
    report = scan(target)
    ref = _reference_states(target, "cell.xh_to_h", 0)  # the Linear's input cat([x_t, h])
    findings = _through_time(report)
    assert [(f.kind, f.layer) for f in findings] == [(FindingKind.VANISHING_THROUGH_TIME, "cell.xh_to_h")]
    ev = findings[0].evidence
    assert ev["recurrent_cell"] == "vanilla" and ev["steps"] == 99
    assert ev["first_step_grad_rms"] == pytest.approx(ref[0], rel=1e-4)
    assert ev["last_step_grad_rms"] == pytest.approx(ref[-1], rel=1e-4)
    assert ev["effective_horizon"] == effective_horizon(ref)
    # The recurrent weight is the block of columns that reads h (cat puts it last).
    w = target.build_model().get_submodule("cell.xh_to_h").weight.detach().double()[:, FEATURES:]
    assert ev["weight[state].largest_singular_value"] == pytest.approx(
        float(torch.linalg.matrix_norm(w, ord=2)), rel=1e-6)
    assert ev["recurrent_bound"] == 1.0  # tanh
    recs = {r.id: r for r in report.recommendations}
    assert recs[RecommendationId.GATED_RNN].layers == ("cell.xh_to_h",)


def test_elman_cell_written_with_two_linears_is_a_vanilla_recurrence_of_h2h() -> None:
    target = _target(TwoLinearCellLoop, 100)
    layers = _probe(target)
    assert layers["h2h"].recurrent_cell == "vanilla"
    assert layers["i2h"].recurrent_cell == ""  # called 100 times, but on fresh inputs only
    report = scan(target)
    finding = next(f for f in _through_time(report))
    assert finding.layer == "h2h" and finding.kind == FindingKind.VANISHING_THROUGH_TIME
    w = target.build_model().h2h.weight.detach().double()
    assert finding.evidence["weight.largest_singular_value"] == pytest.approx(
        float(torch.linalg.matrix_norm(w, ord=2)), rel=1e-6)


class OwnMatrixCell(nn.Module):
    """A cell that owns its matrices: h = tanh(x W_xh + h W_hh + b), W_hh scaled to norm 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.W_xh = nn.Parameter(torch.randn(FEATURES, HIDDEN) / FEATURES**0.5)
        w_hh = torch.randn(HIDDEN, HIDDEN)
        self.W_hh = nn.Parameter(0.5 * w_hh / torch.linalg.matrix_norm(w_hh, ord=2))
        self.b = nn.Parameter(torch.zeros(HIDDEN))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.W_xh + h @ self.W_hh + self.b)


def test_cell_owning_its_matrices_vanishes_with_its_square_matrix_as_w_hh() -> None:
    target = _target(lambda: OwnCellLoop(OwnMatrixCell()), 60)
    report = scan(target)
    ref = _reference_states(target, "cell", 1)
    finding = next(f for f in _through_time(report))
    assert (finding.kind, finding.layer) == (FindingKind.VANISHING_THROUGH_TIME, "cell")
    ev = finding.evidence
    assert ev["recurrent_cell"] == "vanilla"
    assert ev["first_step_grad_rms"] == pytest.approx(ref[0], rel=1e-4)
    assert ev["W_hh.largest_singular_value"] == pytest.approx(0.5, rel=1e-5)
    assert "must vanish" in finding.message  # 0.5 < the bound 1 of tanh


def test_makemore_style_own_gru_cell_is_gated_and_not_vanishing() -> None:
    target = _target(lambda: OwnCellLoop(MakemoreGRUCell()), 60)
    layers = _probe(target)
    for name in ("cell.xh_to_z", "cell.xh_to_r", "cell.xh_to_hbar"):
        assert layers[name].recurrent_cell == "gated", name
        assert len(layers[name].step_grad_rms) == 59
    report = scan(target)
    assert not [f for f in report.findings if f.kind == FindingKind.VANISHING_THROUGH_TIME]


# --------------------------------------------------------------------------- not a recurrence

class SharedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(HIDDEN)
        self.fc = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.fc(self.norm(x)))


class SharedDepth(nn.Module):
    def __init__(self, repeats: int) -> None:
        super().__init__()
        self.inp = nn.Linear(FEATURES, HIDDEN)
        self.block = SharedBlock()
        self.repeats = repeats
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x[:, 0])
        for _ in range(self.repeats):
            h = self.block(h)
        return self.head(h)


class Siamese(nn.Module):
    """One encoder applied to two inputs (and to many crops): the calls do not feed each other."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN))
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = [self.encoder(x[:, t]) for t in range(x.size(1))]
        return self.head(torch.stack(codes, 1).mean(1))


def test_shared_block_applied_twice_is_not_a_recurrence() -> None:
    layers = _probe(_target(lambda: SharedDepth(2), 3))
    assert all(layer.recurrent_cell == "" and layer.step_grad_rms == () for layer in layers.values())
    assert MIN_CALLS > 2


def test_weight_shared_encoder_applied_to_many_inputs_is_not_a_recurrence() -> None:
    target = _target(Siamese, 12)
    layers = _probe(target)
    assert all(layer.recurrent_cell == "" and layer.step_grad_rms == () for layer in layers.values())
    assert scan(target).verdict == Status.HEALTHY


def test_residual_block_shared_through_depth_has_a_path_around_it() -> None:
    # Applied 6 times with its output fed back, it is a recurrence (in depth), but the residual add
    # is a path around the block: like a gated cell it is never called vanishing through time.
    target = _target(lambda: SharedDepth(6), 3)
    layers = _probe(target)
    assert layers["block.fc"].recurrent_cell == "gated" and layers["block.norm"].recurrent_cell == "gated"
    report = scan(target)
    assert report.verdict == Status.HEALTHY and _through_time(report) == []


def test_the_shared_block_corpus_model_is_unchanged() -> None:
    report = scan(str(CORPUS / "healthy_shared_block_inplace.py"))
    assert report.verdict == Status.HEALTHY and report.findings == ()


# --------------------------------------------------------------------------- corpus

@pytest.mark.parametrize(("name", "kind"), [
    ("vanishing_rnncell_loop_tanh", FindingKind.VANISHING_THROUGH_TIME),
    ("exploding_relu_cell_loop", FindingKind.EXPLODING_THROUGH_TIME),
])
def test_corpus_cell_loops_get_the_through_time_finding(name: str, kind: FindingKind) -> None:
    report = scan(str(CORPUS / f"{name}.py"))
    assert [(f.kind, f.layer) for f in _through_time(report)] == [(kind, "cell")]
