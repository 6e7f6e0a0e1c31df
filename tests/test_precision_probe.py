"""--precision and --loss-scale: the probe under autocast, the loss scaler, and each layer's headroom.

Every number is checked against a direct computation with plain autograd: the same seeded batches
through the same model, the layer outputs and the gradients arriving at them caught with
retain_grad, then counted by hand (floor(log2|g|) with torch.log2, fp16 flushes with a cast).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gradcheck_cli import scan
from gradcheck_cli.cli.app import app
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.errors import UserError
from gradcheck_cli.measure import precision
from gradcheck_cli.measure.headroom import first_steps
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.measure.records import LOG2_HIGH, LOG2_LOW, UPDATE_RESOLUTION, Headroom, Measurements
from gradcheck_cli.measure.session import MeasurementSession
from gradcheck_cli.measure.steps import make_optimizer
from gradcheck_cli.target.isolation import seed_all
from gradcheck_cli.target.resolve import Target

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
runner = CliRunner()
BATCHES, BATCH_SIZE = 2, 8


# ---------------------------------------------------------------------------------- test models


def tiny_gradients() -> nn.Sequential:
    """Gradients around 1e-6 at every layer output (plain autograd: the loss is 1e-4 * mean)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 1))


def tiny_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1e-4 * (output.float() - target).square().mean()


def large_activations() -> nn.Sequential:
    """A first layer whose outputs reach ~1e5, past fp16's 65504 (plain autograd)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    first = model[0]
    assert isinstance(first, nn.Linear)
    with torch.no_grad():
        first.weight.mul_(1e5)
    return model


def healthy() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output.float() - target).square().mean()


def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 8), torch.randn(batch_size, 1)


def make_batch4(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 8), torch.randn(batch_size, 4)


def probe(model: nn.Module, loss: Callable[..., torch.Tensor], batch: Callable[[int], Any],
          **options: Any) -> Measurements:
    config = ScanConfig(batches=BATCHES, batch_size=BATCH_SIZE, **options)
    return run_probe(model, batch, loss, config, headroom=True)  # fp32 too: the prediction


# ---------------------------------------------------------------------------- direct computation


def direct(model: nn.Module, loss_fn: Callable[..., torch.Tensor], batch: Callable[[int], Any],
           precision_name: str = "fp32", scale: float | list[float] = 1.0) -> dict[str, dict[str, list[torch.Tensor]]]:
    """Per Linear layer, its outputs and the (unscaled) gradients arriving at them, batch by batch,
    from plain autograd under the same seeds and autocast as the probe (`scale`: the loss scale,
    or one per batch)."""
    scales = scale if isinstance(scale, list) else [scale] * BATCHES
    caught: dict[str, dict[str, list[torch.Tensor]]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            caught[name] = {"out": [], "grad": [], "tensors": []}

            def keep(module: nn.Module, args: Any, out: torch.Tensor, name: str = name) -> None:
                out.retain_grad()
                caught[name]["tensors"].append(out)
            handles.append(module.register_forward_hook(keep))
    context = (torch.autocast("cpu", dtype=DTYPES[precision_name]) if precision_name in DTYPES
               else nullcontext())
    try:
        for b in range(BATCHES):
            seed_all(b)
            x, y = batch(BATCH_SIZE)
            with context:
                loss = loss_fn(model(x), y)
            (loss * scales[b]).backward()
            for entry in caught.values():
                out = entry["tensors"].pop()
                entry["out"].append(out.detach())
                assert out.grad is not None
                entry["grad"].append(out.grad.double() / scales[b])
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    return caught


def log2_histogram(grads: list[torch.Tensor]) -> tuple[int, ...]:
    g = torch.cat([t.flatten() for t in grads]).double()
    g = g[(g != 0) & torch.isfinite(g)]
    exponents = torch.floor(torch.log2(g.abs())).long().clamp(LOG2_LOW, LOG2_HIGH) - LOG2_LOW
    return tuple(torch.bincount(exponents, minlength=LOG2_HIGH - LOG2_LOW + 1).tolist())


def below(headroom: Headroom, exponent: int) -> int:
    """Elements with floor(log2|g|) < exponent, read off the histogram."""
    return sum(headroom.grad_log2_counts[:exponent - LOG2_LOW])


def headroom_of(measured: Measurements, name: str) -> Headroom:
    layer = next(layer for layer in measured.layers if layer.name == name)
    assert layer.headroom is not None
    return layer.headroom


def assert_matches_direct(measured: Measurements, caught: dict[str, dict[str, list[torch.Tensor]]]) -> None:
    """The headroom is the first probe batch's (headroom.py)."""
    for name, entry in caught.items():
        h = headroom_of(measured, name)
        first = entry["grad"][0]
        assert h.activation_max_abs == float(entry["out"][0].abs().max())
        assert h.grad_max_abs == float(first.abs().max())
        assert h.grad_log2_counts == log2_histogram([first])
        assert h.grad_zero == int((first == 0).sum())
        assert h.grad_count == first.numel()


# ---------------------------------------------------------------------------------- the headroom


def test_fp32_headroom_predicts_fp16_underflow_exactly_as_a_cast_counts_it() -> None:
    model = tiny_gradients()
    measured = probe(model, tiny_loss, make_batch)
    caught = direct(model, tiny_loss, make_batch)
    assert_matches_direct(measured, caught)
    for name, entry in caught.items():
        h = headroom_of(measured, name)
        g = entry["grad"][0].flatten().float()
        flushed = int(((g.half() == 0) & (g != 0)).sum())  # fp16 rounds |g| < 2^-25 to zero
        subnormal = int(((g.abs() < 2.0 ** -14) & (g != 0)).sum())
        assert below(h, -25) == flushed
        assert below(h, -14) == subnormal
    # the model is what the test says: gradients around 1e-6, many of them below fp16's normals
    middle = headroom_of(measured, "2")
    assert 1e-8 < middle.grad_max_abs < 1e-4
    assert below(middle, -14) / middle.grad_count > 0.5
    assert measured.precision == "fp32" and measured.loss_scale is None and measured.final_loss_scale is None


@pytest.mark.parametrize("precision_name", ["bf16", "fp16"])
def test_autocast_headroom_is_what_the_low_precision_backward_produced(precision_name: str) -> None:
    model = tiny_gradients()
    measured = probe(model, tiny_loss, make_batch, precision=precision_name)
    caught = direct(model, tiny_loss, make_batch, precision_name)
    assert all(o.dtype == DTYPES[precision_name] for entry in caught.values() for o in entry["out"])
    assert_matches_direct(measured, caught)
    assert measured.precision == precision_name


def test_fp16_flushes_the_tiny_gradients_and_a_static_scale_keeps_them() -> None:
    model = tiny_gradients()
    plain = probe(model, tiny_loss, make_batch, precision="fp16")
    scaled = probe(model, tiny_loss, make_batch, precision="fp16", loss_scale=2.0 ** 16)
    assert_matches_direct(scaled, direct(model, tiny_loss, make_batch, "fp16", scale=2.0 ** 16))
    first = headroom_of(plain, "0")
    assert first.grad_zero > 0  # flushed to zero in the fp16 backward: the reported zeros
    assert headroom_of(scaled, "0").grad_zero < first.grad_zero
    assert scaled.loss_scale == scaled.final_loss_scale == 2.0 ** 16 and scaled.scale_overflows == 0
    # the parameter gradients handed to the session are unscaled: close to fp32's
    reference = probe(model, tiny_loss, make_batch)
    for a, b in zip(reference.layers, scaled.layers):
        assert b.grad_norms == pytest.approx(a.grad_norms, rel=0.05)
        assert b.output_grad_rms == pytest.approx(a.output_grad_rms, rel=0.05)


def test_activations_past_fp16_max_overflow_in_fp16_and_not_in_bf16() -> None:
    model = large_activations()
    predicted = probe(model, mse, make_batch)
    assert_matches_direct(predicted, direct(model, mse, make_batch))
    assert 65504 < headroom_of(predicted, "0").activation_max_abs < 1e6
    fp16 = probe(model, mse, make_batch, precision="fp16")
    assert headroom_of(fp16, "0").activation_max_abs == math.inf
    bf16 = probe(model, mse, make_batch, precision="bf16")
    assert_matches_direct(bf16, direct(model, mse, make_batch, "bf16"))
    assert 65504 < headroom_of(bf16, "0").activation_max_abs < 1e6


@pytest.mark.parametrize("precision_name", ["bf16", "fp16"])
def test_a_healthy_model_has_room_in_every_precision(precision_name: str) -> None:
    model = healthy()
    reference = probe(model, mse, make_batch4)
    measured = probe(model, mse, make_batch4, precision=precision_name)
    assert all(math.isfinite(loss) for loss in measured.losses)
    for before, layer in zip(reference.layers, measured.layers):
        h, h32 = layer.headroom, before.headroom
        assert h is not None and h32 is not None and layer.nonfinite_grads == 0
        assert h.activation_max_abs < 100 and 0 < h.grad_max_abs < 100
        assert below(h, -14) == below(h32, -14) == 0  # nothing near fp16's smallest normal
        assert h.grad_zero == h32.grad_zero  # the ReLU's own zeros, none flushed on top
        assert h.update_count and h.update_small is not None


def test_predicted_updates_count_what_an_sgd_step_would_lose_in_bf16() -> None:
    model = healthy()
    measured = probe(model, mse, make_batch4, lr=0.1)
    for name in ("0", "2"):
        layer = dict(model.named_modules())[name]
        small = moved = 0
        for b in range(1):  # the first step, from the first batch's gradients
            seed_all(b)
            x, y = make_batch4(BATCH_SIZE)
            grads = torch.autograd.grad(mse(model(x), y), list(layer.parameters()))
            for p, g in zip(layer.parameters(), grads):
                step = 0.1 * g.abs()
                moved += int((step > 0).sum())
                small += int(((step > 0) & (step < UPDATE_RESOLUTION * p.detach().abs())).sum())
        h = headroom_of(measured, name)
        assert (h.update_small, h.update_count) == (small, moved)
        assert 0 < small < moved


# ------------------------------------------------------------------------------ the loss scaler


def overflowing() -> nn.Sequential:
    """Output gradients near 1.5 (plain autograd: a sum loss): past 65504 at a scale of 2^16."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def sum_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1.5 * (output.float() - target).sum()


def test_dynamic_scale_backs_off_like_gradscaler_and_measures_at_the_scale_that_held() -> None:
    model = overflowing()
    measured = probe(model, sum_loss, make_batch, precision="fp16", loss_scale="dynamic")
    # direct: GradScaler halves from 2^16 while the parameter gradients of the scaled fp16
    # backward hold Inf/NaN (the step it skips), batch after batch
    scale, skipped, scales = precision.INITIAL_SCALE, 0, []
    for b in range(BATCHES):
        while not parameter_gradients_finite(model, sum_loss, b, scale):
            scale, skipped = scale / 2, skipped + 1
        scales.append(scale)
    assert skipped >= 1
    assert measured.loss_scale == precision.INITIAL_SCALE
    assert (measured.scale_overflows, measured.final_loss_scale) == (skipped, scale)
    assert_matches_direct(measured, direct(model, sum_loss, make_batch, "fp16", scales))
    assert all(layer.nonfinite_grads == 0 for layer in measured.layers)  # a skipped step is no NaN finding


def parameter_gradients_finite(model: nn.Module, loss_fn: Callable[..., torch.Tensor], b: int, scale: float) -> bool:
    seed_all(b)
    x, y = make_batch(BATCH_SIZE)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss * scale, list(model.parameters()))
    return all(bool(torch.isfinite(g).all()) for g in grads)


def test_loss_scaler_grows_after_the_growth_interval_and_resets_on_overflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "GROWTH_INTERVAL", 3)
    scaler = precision.LossScaler("dynamic")
    for _ in range(3):
        scaler.finished_batch()
    assert scaler.scale == 2.0 ** 17
    scaler.finished_batch()
    assert scaler.retry_after_overflow(0) and scaler.scale == 2.0 ** 16 and scaler.overflows == 1
    for _ in range(2):
        scaler.finished_batch()
    assert scaler.scale == 2.0 ** 16  # the count started again after the overflow
    static = precision.LossScaler(128.0)
    assert not static.retry_after_overflow(0) and static.scale == 128.0 and static.initial == 128.0
    assert precision.LossScaler(None).initial is None


def test_merging_headroom_takes_maxima_and_adds_counts() -> None:
    a = Headroom(1.0, 2.0, (1, 2) + (0,) * 199, 3, 10, 4, 5)
    b = Headroom(5.0, 0.5, (0, 1) + (0,) * 199, 1, 7, None, None)
    merged = a.merge(b)
    assert merged == Headroom(5.0, 2.0, (1, 3) + (0,) * 199, 4, 17, 4, 5)
    nan = Headroom(math.nan, math.nan, (0,) * 201, 0, 0)
    assert a.merge(nan).activation_max_abs == nan.merge(a).activation_max_abs == 1.0
    first = Measurements((), (), precision="fp16", loss_scale=65536.0, scale_overflows=1, final_loss_scale=32768.0)
    second = Measurements((), (), precision="fp16", loss_scale=32768.0, scale_overflows=2, final_loss_scale=8192.0)
    both = first.merge(second)
    assert (both.precision, both.loss_scale, both.scale_overflows, both.final_loss_scale) == \
        ("fp16", 65536.0, 3, 8192.0)


# ------------------------------------------------------------------- the options and the report


def _target(build: Callable[[], nn.Module] = healthy) -> Target:
    return Target("precision-test", build, make_batch4, mse)


def test_the_report_says_which_precision_was_probed_and_fp32_reports_keep_their_config() -> None:
    report = scan(_target(), precision="bf16", loss_scale="dynamic", batches=2)
    assert report.config["precision"] == "bf16" and report.config["loss_scale"] == "dynamic"
    plain = scan(_target(), batches=2)
    assert "precision" not in plain.config and "loss_scale" not in plain.config


@pytest.mark.parametrize(("options", "message"), [
    ({"precision": "fp8"}, "unknown --precision 'fp8'"),
    ({"loss_scale": 0.0}, "--loss-scale must be a positive number or 'dynamic'"),
    ({"loss_scale": "static"}, "--loss-scale must be a positive number or 'dynamic'"),
    ({"precision": "fp16", "device": "meta"}, "has no autocast for device type 'meta'"),
])
def test_bad_precision_options_are_user_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        scan(_target(), **options)


MODEL_FILE = '''
import torch
from torch import nn

def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

def make_batch(batch_size):
    return torch.randn(batch_size, 8), torch.randn(batch_size, 4)
'''


def test_cli_precision_and_loss_scale_reach_the_report_from_every_layer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model.py").write_text(MODEL_FILE)
    (tmp_path / "pyproject.toml").write_text('[tool.gradcheck]\nprecision = "fp16"\nloss_scale = 1024\n')
    (tmp_path / "recipe.yaml").write_text(
        "version: 1\ndefaults:\n  precision: bf16\nscans:\n  - name: a\n    target: model.py\n"
        "    loss_scale: dynamic\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["scan", "model.py", "--batches", "2", "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert (config["precision"], config["loss_scale"]) == ("fp16", 1024.0)
    result = runner.invoke(app, ["scan", "model.py", "--batches", "2", "--format", "json", "-q",
                                 "--precision", "bf16", "--loss-scale", "dynamic"])
    config = json.loads(result.stdout)["config"]
    assert (config["precision"], config["loss_scale"]) == ("bf16", "dynamic")
    result = runner.invoke(app, ["run", "recipe.yaml", "--show-config"])
    rows = {line.split()[0]: line.split(maxsplit=2)[1:] for line in result.stdout.splitlines()[1:] if line.strip()}
    assert rows["precision"][0] == "bf16" and rows["precision"][1].startswith("recipe")
    assert rows["loss_scale"][0] == "dynamic" and rows["loss_scale"][1].startswith("recipe")


@pytest.mark.parametrize(("args", "message"), [
    (["--precision", "fp8"], "--precision: expected one of fp32, bf16, fp16, got 'fp8'"),
    (["--loss-scale", "0"], "--loss-scale: expected a positive number or 'dynamic', got '0'"),
])
def test_cli_bad_precision_options_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["scan", "builtin:relu-he", *args])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_the_predicted_first_step_is_the_optimizers_own(optimizer: str) -> None:
    torch.manual_seed(0)  # float64, so that the measured w_after - w_before is exact enough
    weights = [torch.randn(6, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    grads = [torch.randn(6, 5, dtype=torch.float64) * 10.0 ** torch.randint(-9, 0, (6, 5)),
             torch.zeros(5, dtype=torch.float64)]
    params = [nn.Parameter(w.clone()) for w in weights]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    make_optimizer(ScanConfig(optimizer=optimizer, lr=0.01), params).step()
    predicted = first_steps(grads, weights, optimizer, 0.01)
    for p, w, step in zip(params, weights, predicted):
        assert torch.allclose(step, (p.detach() - w).abs(), rtol=1e-6, atol=1e-14)


def test_a_layer_whose_outputs_are_all_nan_reads_nan_not_zero() -> None:
    measured = probe(large_activations(), mse, make_batch, precision="fp16")
    first, second = headroom_of(measured, "0"), headroom_of(measured, "2")
    assert first.activation_max_abs == math.inf  # the fp16 overflow itself
    assert math.isnan(second.activation_max_abs)  # inf - inf downstream: no finite maximum
    assert math.isnan(second.grad_max_abs)


def test_a_session_driven_by_other_code_keeps_no_headroom() -> None:
    """The training watch or a user's loop: nothing accumulates per step (bounded memory)."""
    model = healthy()
    session = MeasurementSession(model)
    with session:
        for b in range(3):
            seed_all(b)
            x, y = make_batch4(BATCH_SIZE)
            mse(model(x), y).backward()
            session.on_batch(torch.tensor(0.0))
    meter = session.state.headroom
    assert meter is not None and meter.read() == {}
    assert all(not layer.output_extrema and not layer.grad_extrema for layer in meter.layers.values())


class NeedsFloat32(nn.Module):
    """Fails on a half-precision activation, as an op without a kernel for it does (plain autograd)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if y.dtype != torch.float32:
            raise RuntimeError(f"no kernel for {y.dtype}")
        return y


def test_a_forward_that_fails_only_under_autocast_names_the_precision() -> None:
    target = Target("needs-fp32", NeedsFloat32, make_batch4, mse)
    assert scan(target, batches=1).verdict == "healthy"
    with pytest.raises(UserError, match=r"under --precision fp16 \(torch.autocast on cpu\) an op may have no fp16"):
        scan(target, batches=1, precision="fp16")


def test_a_default_fp32_probe_measures_no_headroom_and_bf16_does() -> None:
    """No fp32 check reads the headroom, so a default scan does not pay for it; a bf16/fp16
    probe (whose checks read it) measures it without being asked."""
    model = healthy()
    config = ScanConfig(batches=BATCHES, batch_size=BATCH_SIZE)
    fp32 = run_probe(model, make_batch4, mse, config)
    assert all(layer.headroom is None for layer in fp32.layers)
    bf16 = run_probe(model, make_batch4, mse, replace(config, precision="bf16"))
    assert all(layer.headroom is not None for layer in bf16.layers if layer.order >= 0)
