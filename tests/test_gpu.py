"""--device cuda for real; skipped cleanly where no CUDA device is present (CI has none)."""

from __future__ import annotations

import pytest
import torch

from gradcheck_cli import scan
from gradcheck_cli.target.zoo import load_target

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("name", ["relu-he", "relu-normal-init", "transformer-preln", "rnn-long"])
def test_cuda_scan_matches_cpu_verdict_and_model_stays_on_cpu(name: str) -> None:
    target = load_target(name)
    model = target.build_model()
    shared = type(target)(target.name, lambda: model, target.make_batch, target.loss_fn)
    cpu = scan(shared, device="cpu")
    gpu = scan(shared, device="cuda")
    assert gpu.verdict == cpu.verdict
    assert gpu.config["device"] == "cuda"
    assert all(p.device.type == "cpu" for p in model.parameters())
    for a, b in zip(cpu.layers, gpu.layers):
        assert a.status == b.status
        if a.grad_norm and b.grad_norm and a.grad_norm > 1e-6:
            assert b.grad_norm == pytest.approx(a.grad_norm, rel=0.05)
