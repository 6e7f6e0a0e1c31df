"""Fixed, hand-built scan results shared by the format, gating and GitHub Actions tests.

Deterministic (no scan runs), with the awkward cases the formats must survive: a whole-model
finding (layer None), NaN/Inf evidence, messages holding ``|``, ``%``, ``:``, ``,`` and a line
break, a file target, a builtin target and a scan that errored.
"""

from __future__ import annotations

from gradcheck_cli.report.records import (
    Finding,
    FindingKind,
    LayerReport,
    LossInfo,
    Recommendation,
    RecommendationId,
    Report,
    ScanResult,
    Severity,
    Status,
)

CONFIG = {"batches": 3, "batch_size": 16, "seed": 0, "device": "cpu", "steps": 2,
          "optimizer": "sgd", "lr": 0.1, "input_shape": [32],
          "fail_on": ["exploding", "nonfinite", "divergence"]}


def _layer(index: int, name: str, status: Status, grad_norm: float | None, weight_norm: float = 4.0,
           type_: str = "Linear") -> LayerReport:
    ratio = grad_norm / weight_norm if grad_norm is not None else None
    return LayerReport(name=name, type=type_, index=index, params=1056, status=status,
                       grad_norm=grad_norm, weight_norm=weight_norm, grad_to_weight=ratio,
                       nonfinite_grads=0, activation={"function": "ReLU", "rms": 0.7})


def exploding_report(scale: float = 1.0) -> Report:
    """An MLP whose first layers explode; ``scale`` changes every number, never the identity of a
    finding (what the fingerprints must be blind to)."""
    inf = float("inf")
    return Report(
        target="models/mlp.py:build_model",
        tool_version="0.1.0",
        config=CONFIG,
        loss=LossInfo(kind="cross_entropy", values=(2.31 * scale, 9.7e3 * scale, inf)),
        verdict=Status.EXPLODING,
        layers=(
            _layer(0, "net.0", Status.EXPLODING, 1.2e4 * scale),
            _layer(1, "net.2", Status.EXPLODING, 3.1e3 * scale),
            _layer(2, "head", Status.HEALTHY, 0.41 * scale, type_="Linear|Head"),
        ),
        findings=(
            Finding(FindingKind.EXPLODING, "net.0", Severity.ERROR,
                    f"grad/weight {3.0e3 * scale:.3g} > 1000: one SGD step would wreck the weights",
                    {"grad_to_weight": 3.0e3 * scale, "threshold": 1000.0}),
            Finding(FindingKind.EXPLODING, "net.2", Severity.ERROR,
                    f"grad/weight {775 * scale:.3g} > 1000 | grows 4x per layer, 100% of the stack",
                    {"grad_to_weight": 775.0 * scale, "growth_per_layer": 4.0}),
            Finding(FindingKind.SATURATED_ACTIVATION, "head", Severity.WARNING,
                    "95% of outputs saturated,\nderivative near 0: check the init",
                    {"saturated_fraction": 0.95, "function": "Tanh"}),
            Finding(FindingKind.DIVERGENCE, None, Severity.ERROR,
                    "the loss went from 2.31 to Inf after 2 steps of sgd (lr 0.1)",
                    {"loss_before": 2.31 * scale, "loss_after": inf}),
        ),
        recommendations=(
            Recommendation(RecommendationId.CLIP_GRADIENTS, "Clip the gradient norm", ("net.0", "net.2"),
                           "grad_norm 1.2e+04 at net.0, 300x the healthy head",
                           "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)"),
            Recommendation(RecommendationId.LOWER_LR, "Lower the learning rate", (),
                           "the loss diverged at lr 0.1",
                           "optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)\n"
                           "# ``` fences inside a snippet stay inside the block"),
        ),
    )


def healthy_report() -> Report:
    return Report(
        target="builtin:relu-he",
        tool_version="0.1.0",
        config={**CONFIG, "steps": 0},
        loss=LossInfo(kind="cross_entropy", values=(2.30, 2.29, 2.31)),
        verdict=Status.HEALTHY,
        layers=(_layer(0, "net.0", Status.HEALTHY, 0.12), _layer(1, "net.2", Status.HEALTHY, 0.3)),
        findings=(),
        recommendations=(),
    )


def exploding_result(scale: float = 1.0) -> ScanResult:
    return ScanResult("mlp", "models/mlp.py:build_model", exploding_report(scale))


def healthy_result() -> ScanResult:
    return ScanResult("he", "builtin:relu-he", healthy_report())


def errored_result() -> ScanResult:
    return ScanResult("broken", "models/broken.py", None,
                      "models/broken.py:3: NameError: name 'nn' is not defined; import torch.nn as nn")


def run_results() -> list[ScanResult]:
    """A recipe run of three scans: one fails its gate, one passes, one errored."""
    return [exploding_result(), healthy_result(), errored_result()]
