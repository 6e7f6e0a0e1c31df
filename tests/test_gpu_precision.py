"""--device cuda --precision fp16|bf16 for real; skipped cleanly where no CUDA device is present (CI has none).

CUDA autocast differs from CPU autocast in which ops it keeps in fp32, so the numbers are not the
CPU's: each is checked against plain autograd under CUDA autocast, the same way
tests/test_precision_probe.py checks the CPU probe.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_precision_probe import (
    BATCH_SIZE,
    BATCHES,
    assert_matches_direct,
    below,
    headroom_of,
    healthy,
    large_activations,
    make_batch,
    make_batch4,
    mse,
    tiny_gradients,
    tiny_loss,
)
from torch import nn

from gradcheck_cli import scan
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.target.isolation import seed_all
from gradcheck_cli.target.resolve import Target

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _cuda_direct(model: nn.Module, loss_fn: object, batch: object, precision: str,
                 scale: float = 1.0) -> dict[str, dict[str, list[torch.Tensor]]]:
    """Per Linear layer: outputs and unscaled output gradients of plain autograd on CUDA."""
    caught: dict[str, dict[str, list[torch.Tensor]]] = {}
    handles = []
    model.cuda()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            caught[name] = {"out": [], "grad": [], "tensors": []}

            def keep(module: nn.Module, args: object, out: torch.Tensor, name: str = name) -> None:
                out.retain_grad()
                caught[name]["tensors"].append(out)
            handles.append(module.register_forward_hook(keep))
    try:
        for b in range(BATCHES):
            seed_all(b)
            x, y = batch(BATCH_SIZE)  # type: ignore[operator]
            with torch.autocast("cuda", dtype=DTYPES[precision]):
                loss = loss_fn(model(x.cuda()), y.cuda())  # type: ignore[operator]
            (loss * scale).backward()
            for entry in caught.values():
                out = entry["tensors"].pop()
                entry["out"].append(out.detach().cpu())
                entry["grad"].append(out.grad.double().cpu() / scale)  # type: ignore[union-attr]
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.cpu()
    return caught


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_headroom_matches_plain_autograd_under_cuda_autocast(precision: str) -> None:
    model = tiny_gradients()
    config = ScanConfig(batches=BATCHES, batch_size=BATCH_SIZE, device="cuda", precision=precision)
    measured = run_probe(model, make_batch, tiny_loss, config)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert_matches_direct(measured, _cuda_direct(model, tiny_loss, make_batch, precision))
    if precision == "fp16":
        assert headroom_of(measured, "0").grad_zero > 0  # 1e-6 gradients flush in an unscaled fp16 backward


def test_cuda_fp16_overflows_on_1e5_activations_and_bf16_holds_them() -> None:
    model = large_activations()
    for precision, expect_inf in (("fp16", True), ("bf16", False)):
        config = ScanConfig(batches=BATCHES, batch_size=BATCH_SIZE, device="cuda", precision=precision)
        value = headroom_of(run_probe(model, make_batch, mse, config), "0").activation_max_abs
        assert (value == math.inf) == expect_inf and value > 65504


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_healthy_model_has_room_and_dynamic_scale(precision: str) -> None:
    report = scan(Target("healthy", healthy, make_batch4, mse), device="cuda", precision=precision,
                  loss_scale="dynamic")
    assert report.config["precision"] == precision
    config = ScanConfig(batches=BATCHES, batch_size=BATCH_SIZE, device="cuda", precision=precision,
                        loss_scale="dynamic")
    measured = run_probe(healthy(), make_batch4, mse, config)
    assert all(math.isfinite(loss) for loss in measured.losses)
    for layer in measured.layers:
        assert layer.headroom is not None and below(layer.headroom, -24) == 0
