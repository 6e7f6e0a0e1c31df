"""The scan pipeline: target -> probe -> stats -> classify -> checks -> fixes -> Report."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import __version__
from .checks import CheckContext, run_checks
from .classify import Thresholds, classify_layers, verdict
from .config import ScanConfig
from .errors import UserError
from .fixes import recommend
from .report import LayerReport, LossInfo, Report, Status
from .targets import Target, resolve_target

if TYPE_CHECKING:
    from .probe import StageCallback


def scan(target: str | Target, config: ScanConfig | None = None,
         thresholds: Thresholds | None = None, on_stage: StageCallback | None = None,
         **options: Any) -> Report:
    """Scan a model and return its Report; the model comes back exactly as it was.

    `target` is a TARGET string (model.py, model.py:NAME, pkg.module:attr, builtin:NAME) or a
    Target; `options` override fields of ScanConfig (batches=5, device="cuda", ...). `on_stage`
    is told each stage as it starts (see probe.StageCallback).
    """
    from .batches import synthetic_batch_maker
    from .probe import run_probe
    from .stats import compute_stats

    config = replace(config or ScanConfig(), **options)
    _validate(config)
    thresholds = thresholds or Thresholds()
    stage = on_stage or (lambda name, batch, batches: None)
    stage("loading the target", 0, config.batches)
    resolved = resolve_target(target) if isinstance(target, str) else target
    stage("building the model", 0, config.batches)
    model = resolved.build_model()
    make_batch = resolved.make_batch or synthetic_batch_maker(model, config.input_shape, source=resolved.name)
    probe = run_probe(model, make_batch, resolved.loss_fn, config, on_stage)
    stage("analysing the measurements", 0, config.batches)

    layers = compute_stats(probe.layers)
    verdicts = classify_layers(layers, thresholds)
    statuses = [v.status for v in verdicts]
    context = CheckContext(layers, verdicts, thresholds, probe.losses, probe.nonfinite_input,
                           probe.first_nonfinite_module)
    findings = run_checks(context)
    model_verdict = verdict(statuses)
    if model_verdict != Status.NONFINITE and any(f.kind.value.startswith("nonfinite") for f in findings):
        model_verdict = Status.NONFINITE  # a NaN loss or NaN input with finite gradients
    return Report(
        target=resolved.name,
        tool_version=__version__,
        config=config.as_dict(),
        loss=LossInfo(probe.loss_kind, probe.loss_trace),
        verdict=model_verdict,
        layers=tuple(
            LayerReport(
                name=s.name, type=s.type_name, index=s.index, params=s.params, status=v.status,
                grad_norm=s.grad_norm, weight_norm=s.weight_norm, grad_to_weight=s.grad_to_weight,
                nonfinite_grads=s.nonfinite_grads, activation=s.activation)
            for s, v in zip(layers, verdicts)),
        findings=tuple(findings),
        recommendations=tuple(recommend(findings, layers, probe.has_normalization)),
    )


def _validate(config: ScanConfig) -> None:
    from .config import OPTIMIZERS

    if config.batches < 1:
        raise UserError(f"--batches must be at least 1 (got {config.batches})")
    if config.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {config.batch_size})")
    if config.steps < 0:
        raise UserError(f"--steps must be 0 or more (got {config.steps})")
    if config.optimizer not in OPTIMIZERS:
        raise UserError(f"unknown --optimizer '{config.optimizer}'; use one of {', '.join(OPTIMIZERS)}")
    if not config.lr > 0:
        raise UserError(f"--lr must be positive (got {config.lr})")
    _validate_device(config.device)


def _validate_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"invalid --device '{device}': use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but no CUDA device is available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices are visible")
