"""MeasurementSession driven by hand around a plain training loop (measure/session.py).

Every number is checked against plain autograd on a hook-free twin of the model that takes the
same optimizer steps on the same batches: parameter gradients from .grad, layer outputs from the
test's own layer-by-layer forward, output gradients from torch.autograd.grad.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from gradcheck_cli.analyse.pipeline import analyse
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.records import Measurements
from gradcheck_cli.measure.session import MeasurementSession
from gradcheck_cli.report.records import Report

BATCHES = 3


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def _conv() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


def _batch(model: nn.Sequential, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + index)
    shape = (5, 6) if isinstance(model[0], nn.Linear) else (5, 1, 8, 8)
    return torch.randn(shape, generator=generator), torch.randint(0, 3, (5,), generator=generator)


def _train(model: nn.Sequential, session: MeasurementSession | None, batches: range) -> None:
    """The user's plain loop; the session only sees it through on_batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for index in batches:
        x, y = _batch(model, index)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if session is not None:
            session.on_batch(loss)
        optimizer.step()
        optimizer.zero_grad()


def _reference(model: nn.Sequential) -> dict[str, dict[str, Any]]:
    """The same loop on a hook-free model, measured with plain autograd."""
    layers = {str(k): m for k, m in enumerate(model) if list(m.parameters(recurse=False))}
    ref: dict[str, dict[str, Any]] = {n: {"grad_norms": [], "out_sq": 0.0, "out_n": 0, "gout_sq": 0.0}
                                      for n in layers}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for index in range(BATCHES):
        x, y = _batch(model, index)
        outputs = {}
        h = x
        for k, module in enumerate(model):
            h = module(h)
            if str(k) in layers:
                outputs[str(k)] = h
        loss = nn.functional.cross_entropy(h, y)
        output_grads = torch.autograd.grad(loss, list(outputs.values()), retain_graph=True)
        loss.backward()
        for (name, out), gout in zip(outputs.items(), output_grads):
            entry = ref[name]
            entry["grad_norms"].append(math.sqrt(sum(_grad_sq(p) for p in layers[name].parameters(recurse=False))))
            entry["out_sq"] += float(out.detach().double().pow(2).sum())
            entry["out_n"] += out.numel()
            entry["gout_sq"] += float(gout.double().pow(2).sum())
        optimizer.step()
        optimizer.zero_grad()
    for name, entry in ref.items():
        entry["weight_norm"] = math.sqrt(sum(float(p.detach().double().pow(2).sum())
                                             for p in layers[name].parameters(recurse=False)))
    return ref


def _grad_sq(p: nn.Parameter) -> float:
    assert p.grad is not None
    return float(p.grad.double().pow(2).sum())


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               and not m._backward_pre_hooks for m in model.modules()) and \
        all(not p._backward_hooks for p in model.parameters())


@pytest.mark.parametrize("build", [_mlp, _conv])
def test_a_hand_driven_session_matches_plain_autograd(build: Any) -> None:
    model, twin = build(), build()
    session = MeasurementSession(model)
    with session:
        _train(model, session, range(BATCHES))
    measured = session.measurements()
    reference = _reference(twin)

    assert [layer.name for layer in measured.layers] == list(reference)
    assert measured.batches == BATCHES and len(measured.losses) == BATCHES
    for layer in measured.layers:
        ref = reference[layer.name]
        assert layer.grad_norms == pytest.approx(ref["grad_norms"], rel=1e-6)
        assert layer.output_rms == pytest.approx(math.sqrt(ref["out_sq"] / ref["out_n"]), rel=1e-6)
        assert layer.output_grad_rms == pytest.approx(math.sqrt(ref["gout_sq"] / ref["out_n"]), rel=1e-6)
        assert layer.weight_norm == pytest.approx(ref["weight_norm"], rel=1e-6)
    # The model comes back as the user's loop left it: no hook, the same weights and .grad as the twin's.
    assert _no_hooks(model)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
        assert p.grad is None and q.grad is None


def test_a_recurrent_layer_gets_its_per_step_gradients_through_a_plain_backward() -> None:
    torch.manual_seed(0)
    rnn = nn.GRU(4, 6, batch_first=True)
    xs = [torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    session = MeasurementSession(rnn)
    with session:
        for x in xs:
            out, _ = rnn(x)
            out.pow(2).mean().backward()
            session.on_batch(out.pow(2).mean())
            rnn.zero_grad()
    squares = []
    for x in xs:
        leaf = x.clone().requires_grad_(True)
        out, _ = rnn(leaf)
        (g,) = torch.autograd.grad(out.pow(2).mean(), leaf)
        squares.append(g.double().pow(2).mean(dim=(0, 2)))
    expected = torch.stack(squares).mean(0).sqrt().tolist()
    (layer,) = session.measurements().layers
    assert layer.step_grad_rms == pytest.approx(expected, rel=1e-6)
    assert _no_hooks(rnn)


def test_detach_on_error_leaves_no_hook() -> None:
    model = _mlp()
    with pytest.raises(RuntimeError, match="user error"):
        with MeasurementSession(model):
            model(torch.randn(2, 6))
            raise RuntimeError("user error")
    assert _no_hooks(model)


def test_a_forward_that_raises_leaves_no_function_mode() -> None:
    """The activation watch is entered for each forward and left even when the forward raises."""
    model = _mlp()
    with MeasurementSession(model):
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 7))  # wrong width
        assert not torch.overrides._get_current_function_mode_stack()
        model(torch.randn(2, 6))
        assert not torch.overrides._get_current_function_mode_stack()


def _session_numbers(measured: Measurements) -> list[tuple[Any, ...]]:
    return [(layer.name, layer.grad_norms, layer.output_rms, layer.output_grad_rms, layer.weight_norm,
             layer.activation, layer.nonfinite_grads, layer.order) for layer in measured.layers]


def test_merging_two_sessions_equals_one_session_over_all_batches() -> None:
    model, twin = _mlp(), _mlp()
    first, second, whole = MeasurementSession(model), MeasurementSession(model), MeasurementSession(twin)
    with first:
        _train(model, first, range(2))
    with second:
        _train(model, second, range(2, BATCHES))
    with whole:
        _train(twin, whole, range(BATCHES))
    merged = first.measurements().merge(second.measurements())
    expected = whole.measurements()
    assert merged.batches == expected.batches == BATCHES
    assert merged.losses == pytest.approx(expected.losses, rel=1e-12)
    assert merged.first_grad_norm == pytest.approx(expected.first_grad_norm, rel=1e-12)
    for got, want in zip(_session_numbers(merged), _session_numbers(expected), strict=True):
        name, grad_norms, output_rms, output_grad_rms, weight_norm, *facts = got
        assert name == want[0]
        assert grad_norms == pytest.approx(want[1], rel=1e-12)
        assert [output_rms, output_grad_rms, weight_norm] == pytest.approx(list(want[2:5]), rel=1e-12)
        assert facts == list(want[5:])  # activation counts, non-finite counts, order: exact
    assert merged.layers[0].activation["units"] == 8  # the ReLU's counts add, they do not average


def test_merge_semantics_of_the_statistics() -> None:
    from gradcheck_cli.measure.statistics import ActivationCounts, SquareSum, StepSquares

    assert SquareSum(8.0, 2).merge(SquareSum(10.0, 3)) == SquareSum(18.0, 5)
    assert SquareSum(18.0, 2).rms == 3.0
    steps = StepSquares((1.0, 2.0), 1).merge(StepSquares((2.0, 1.0), 3))  # RMS per step, calls
    assert steps.mean_squares == pytest.approx((3.25, 1.75)) and steps.calls == 4
    assert StepSquares((1.0,), 1).merge(StepSquares((1.0, 2.0), 1)).rms == ()  # ragged: no profile
    assert StepSquares().merge(steps) == steps
    relu = ActivationCounts("ReLU", "1", 4, fired=(True, False, False))
    both = relu.merge(ActivationCounts("ReLU", "1", 6, fired=(False, False, True)))
    assert both.summary()["dead_units"] == 1 and both.per_unit == 10
    tanh = ActivationCounts("Tanh", "3", 4, saturated=(4.0, 0.0))
    tanh = tanh.merge(ActivationCounts("Tanh", "3", 4, saturated=(0.0, 0.0)))
    assert tanh.summary()["saturated_fraction"] == pytest.approx(0.25)


def test_the_analysis_reads_a_hand_driven_session() -> None:
    model = _mlp()
    session = MeasurementSession(model)
    with session:
        _train(model, session, range(BATCHES))
    report = analyse(session.measurements(), ScanConfig(), Thresholds())
    assert isinstance(report, Report)
    assert [layer.name for layer in report.layers] == ["0", "2", "4"]
    assert report.layers[0].grad_norm == pytest.approx(sum(session.measurements().layers[0].grad_norms) / BATCHES)
