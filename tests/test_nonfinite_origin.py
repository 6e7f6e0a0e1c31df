"""Where a NaN/Inf is born: the replay names the op, its module, the direction and the cause.

Ground truth per model comes from how each model was written (the op and where it sits), recorded
in the model's docstring; the corpus labels come from plain autograd (tests/corpus/reference.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typed_modules import narrow

from gradcheck_cli import scan
from gradcheck_cli.analyse.checks.nonfinite import classify_cause
from gradcheck_cli.measure import probe
from gradcheck_cli.measure.records import NonfiniteOrigin
from gradcheck_cli.report.records import FindingKind, RecommendationId
from gradcheck_cli.target.resolve import Target
from gradcheck_cli.target.zoo.models import NanLog

CORPUS = Path(__file__).parent / "corpus"

# target -> (origin module, op, direction, cause, the module the op came right after)
EXPECTED = {
    "nonfinite_div_zero.py": ("(root)", "div", "forward", "unsafe-op", "proj"),
    "nonfinite_exp_overflow.py": ("(root)", "exp", "forward", "unsafe-op", "fc2"),
    "nonfinite_log_features.py": ("(root)", "log", "forward", "unsafe-op", "frontend"),
    "nonfinite_log_negative.py": ("(loss)", "log", "forward", "unsafe-op", "(root)"),
    "nonfinite_sqrt_zero_grad.py": ("(loss)", "sqrt", "backward", "backward", "(root)"),
    "nonfinite_capsule_length_grad.py": ("lengths", "sqrt", "backward", "backward", "poses"),
    "builtin:nan-log": ("log", "log", "forward", "unsafe-op", "encoder"),
}


def _target(name: str) -> str:
    return name if name.startswith("builtin:") else str(CORPUS / name)


def _nonfinite(report_findings: tuple) -> list:
    return [f for f in report_findings if f.kind == FindingKind.NONFINITE]


@pytest.mark.parametrize("name", sorted(EXPECTED), ids=lambda n: n.removesuffix(".py"))
def test_origin_names_the_op_its_module_and_the_cause(name: str) -> None:
    origin, op, direction, cause, after = EXPECTED[name]
    report = scan(_target(name))
    findings = _nonfinite(report.findings)
    assert findings
    for finding in findings:
        ev = finding.evidence
        assert (ev["origin"], ev["op"], ev["direction"], ev["cause"], ev["after"]) == \
            (origin, op, direction, cause, after)
        assert isinstance(ev["input_max_abs"], float) and ev["input_max_abs"] < 1e6
        assert f"`{op}`" in finding.message
    guard = [r for r in report.recommendations if r.id == RecommendationId.GUARD_NONFINITE]
    assert len(guard) == 1 and guard[0].layers == (origin,)
    assert op in guard[0].why
    assert {"div": "a / b.clamp_min"}.get(op, f"torch.{op}(") in guard[0].code  # fits the op


def test_forward_origin_requires_finite_inputs() -> None:
    """In nonfinite_log_features the first module with a NaN *output* is classifier.0, but its input
    was already NaN: the log in the root's forward, right after 'frontend', made it."""
    report = scan(_target("nonfinite_log_features.py"))
    ev = _nonfinite(report.findings)[0].evidence
    assert ev["origin"] != "classifier.0" and ev["origin"] == "(root)"
    report = scan("builtin:nan-log")
    assert _nonfinite(report.findings)[0].evidence["origin"] == "log"  # not 'head', fed NaN


def test_the_json_report_carries_the_origin() -> None:
    document = scan("builtin:nan-log").to_dict()
    evidence = next(f["evidence"] for f in document["findings"] if f["kind"] == "nonfinite")
    assert {k: evidence[k] for k in ("origin", "op", "direction", "cause")} == \
        {"origin": "log", "op": "log", "direction": "forward", "cause": "unsafe-op"}


def test_nonfinite_input_is_blamed_on_the_data_not_an_op() -> None:
    report = scan(_target("nonfinite_nan_input.py"))
    kinds = [f.kind for f in report.findings]
    assert FindingKind.NONFINITE_INPUT in kinds
    assert all(f.evidence["origin"] is None and f.evidence["cause"] == "unknown"
               for f in _nonfinite(report.findings))
    ids = [r.id for r in report.recommendations]
    assert RecommendationId.CHECK_INPUTS in ids and RecommendationId.GUARD_NONFINITE not in ids


class _Overflowing(nn.Module):
    """Eight Linear(64, 64) layers with weights x 1e6: the activation scale grows ~6e5x per layer
    until a matmul leaves the float32 range. No unsafe op anywhere: an overflow after explosion."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(*(nn.Linear(64, 64) for _ in range(8)))
        with torch.no_grad():
            for layer in self.layers:
                narrow(layer, nn.Linear).weight.mul_(1e6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _overflow_target() -> Target:
    return Target("overflowing", _Overflowing,
                  lambda n: (torch.randn(n, 64), torch.randn(n, 64)), None)


def test_overflow_after_explosion_is_not_called_an_unsafe_op() -> None:
    report = scan(_overflow_target(), batches=1, batch_size=4)
    finding = _nonfinite(report.findings)[0]
    ev = finding.evidence
    assert ev["cause"] == "overflow" and ev["op"] == "linear" and ev["direction"] == "forward"
    assert str(ev["origin"]).startswith("layers.")
    assert isinstance(ev["input_max_abs"], float) and ev["input_max_abs"] >= math.sqrt(3.4e38)
    ids = [r.id for r in report.recommendations]
    assert RecommendationId.GUARD_NONFINITE not in ids
    assert RecommendationId.CLIP_GRADIENTS in ids and RecommendationId.LOWER_LR in ids


def _origin(op: str, magnitude: float, direction: str = "forward", dtype_max: float = 3.4e38
            ) -> NonfiniteOrigin:
    return NonfiniteOrigin(direction, "m", "Linear", op, None, magnitude, "float32", dtype_max, "nan")


def test_cause_rules() -> None:
    assert classify_cause(_origin("log", 4.0)) == "unsafe-op"
    assert classify_cause(_origin("exp", 148.0)) == "unsafe-op"  # exp overflow of moderate inputs
    assert classify_cause(_origin("exp", 1e20)) == "overflow"  # inputs already near the range
    assert classify_cause(_origin("linear", 10.0)) == "overflow"  # plain arithmetic only overflows
    assert classify_cause(_origin("sqrt", 0.01, "backward")) == "backward"
    assert classify_cause(_origin("div", 300.0, dtype_max=65504.0)) == "overflow"  # fp16: sqrt(max) 256
    assert classify_cause(_origin("weights", math.inf, "weights")) == "weights"


def test_healthy_models_are_never_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The diagnostic replay runs only after a NaN/Inf was seen: zero overhead on healthy models."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("replayed a healthy model")

    monkeypatch.setattr(probe, "replay_origin", refuse)
    report = scan("builtin:relu-he")
    assert report.verdict.value == "healthy"


def test_the_replay_sees_the_same_dropout_masks() -> None:
    """Dropout before an unsafe op: the replay restores the batch's RNG state, so it reproduces
    the failing forward instead of drawing new masks."""

    class DropLog(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(self.drop(self.fc(x)).abs()).sum(dim=1)  # log(0) where dropped

    report = scan(Target("droplog", DropLog, lambda n: torch.randn(n, 8), None), batches=1)
    ev = _nonfinite(report.findings)[0].evidence
    assert (ev["origin"], ev["op"], ev["after"], ev["produced"]) == ("(root)", "log", "drop", "inf")


def test_the_model_comes_back_unchanged_after_a_replay() -> None:
    net = NanLog()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scan(Target("nanlog", lambda: net, NanLog.make_batch, NanLog.loss_fn))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


class _ZeroRangeGrad(torch.autograd.Function):
    """A hand-written straight-through rounding whose backward divides by the input's range,
    which is 0 here: forward finite, backward Inf. apply() is not a torch function."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.round()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad / torch.zeros_like(grad)


class _Quantize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ZeroRangeGrad.apply(x)


class _QuantizedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.quant, self.fc2 = nn.Linear(8, 8), _Quantize(), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.quant(self.fc1(x)))


def test_a_custom_backward_is_named_by_its_node_and_module() -> None:
    target = Target("quantized", _QuantizedMLP,
                    lambda n: (torch.randn(n, 8), torch.randint(0, 2, (n,))), None)
    report = scan(target, batches=1)
    ev = _nonfinite(report.findings)[0].evidence
    assert (ev["origin"], ev["op"], ev["direction"], ev["cause"]) == \
        ("quant", "_ZeroRangeGradBackward", "backward", "backward")
    guard = next(r for r in report.recommendations if r.id == RecommendationId.GUARD_NONFINITE)
    assert guard.layers == ("quant",) and "custom backward" in guard.why
