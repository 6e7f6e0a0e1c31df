"""The training watch under fp16 AMP with a torch.amp.GradScaler (measure/watch_scaler.py).

Real CPU fp16 autocast and a real GradScaler("cpu"): the norms are the unscaled ones, the
scaler's own overflow steps are counted and not reported, a real NaN still is. Expected values
come from plain autograd."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gradcheck_cli import watch
from gradcheck_cli.measure.series import StepBlock
from gradcheck_cli.report.records import FindingKind, Report


class _NaNAt(nn.Module):
    """Identity, except that on its `at`-th call it returns NaN (a real NaN in the forward)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * math.nan if self.calls == self.at + 1 else x


def _model(nan_at: int = -1) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), _NaNAt(nan_at), nn.Linear(16, 1))


def _batches(steps: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(4, 8, generator=gen) for _ in range(steps)]


def _train(model: nn.Sequential, scaler: torch.amp.GradScaler, steps: int, on_step: Callable[[torch.Tensor], None],
           grad_sq: list[list[float]] | None = None) -> None:
    """A plain fp16 AMP loop; `grad_sq` collects each stepped step's true squared norms per layer
    (plain autograd, after scaler.unscale_)."""
    optimizer = _optimizer_of(model)
    for x in _batches(steps):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if grad_sq is not None:
            grad_sq.append([sum(float(p.grad.double().square().sum()) for p in m.parameters() if p.grad is not None)
                            for m in model if isinstance(m, nn.Linear)])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        on_step(loss)


def _optimizer_of(model: nn.Sequential) -> torch.optim.Optimizer:
    """One SGD per model, kept on it (the watch and the loop must hook and step the same one)."""
    if not hasattr(model, "test_optimizer"):
        model.test_optimizer = torch.optim.SGD(model.parameters(), lr=0.05)  # type: ignore[assignment]
    optimizer: torch.optim.Optimizer = model.test_optimizer  # type: ignore[assignment]
    return optimizer


def _watched(model: nn.Sequential, scaler: torch.amp.GradScaler, steps: int) -> tuple[Report, list[StepBlock]]:
    blocks: list[StepBlock] = []
    w = watch(model, _optimizer_of(model), every=4, output=None, quiet=True, scaler=scaler)
    original = w._engine.on_block

    def keep(block: StepBlock) -> None:
        blocks.append(block)
        original(block)

    w._engine.on_block = keep
    with w:
        _train(model, scaler, steps, w.step)
    assert w.report is not None
    return w.report, blocks


def test_norms_are_the_unscaled_ones() -> None:
    expected: list[list[float]] = []
    _train(_model(), torch.amp.GradScaler("cpu", init_scale=2.0**10), 6, lambda loss: None, grad_sq=expected)
    _, blocks = _watched(_model(), torch.amp.GradScaler("cpu", init_scale=2.0**10), 6)
    rows = [row for block in blocks for row in block.grad_sq]
    assert len(rows) == 6
    for got, want in zip(rows, expected):
        assert list(got) == pytest.approx(want, rel=1e-6)  # the two Linear layers


def test_overflow_steps_are_skipped_not_nonfinite() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)  # fp16 overflows until S is about 2^16
    report, blocks = _watched(_model(), scaler, 14)
    skipped = report.config["skipped_steps"]
    assert skipped >= 3
    assert scaler.get_scale() < 2.0**24
    assert not [f for f in report.findings if f.kind is FindingKind.NONFINITE]
    assert sum(sum(block.nonfinite_grads) for block in blocks) == 0
    assert report.verdict.value != "nonfinite"


def test_a_real_nan_is_still_found_at_its_step() -> None:
    report, _ = _watched(_model(nan_at=5), torch.amp.GradScaler("cpu", init_scale=2.0**10), 9)
    found = [f for f in report.findings if f.kind is FindingKind.NONFINITE]
    assert len(found) == 1
    assert found[0].step == 5


def test_a_collapsing_scale_is_a_finding() -> None:
    """Gradients that overflow at any scale (the loss stays finite): the skips stop counting
    once S is <= 1."""
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    model = _model()
    with torch.no_grad():
        model[3].weight.mul_(1e3)  # type: ignore[operator]  # the fp16 input gradient W^T dL/dout ~1e5 > 65504 at any scale
    report, _ = _watched(model, scaler, 8)
    assert report.config["skipped_steps"] == 2
    found = [f for f in report.findings if f.kind is FindingKind.NONFINITE and f.step is not None]
    assert [f.step for f in found] == [2]  # S = 4 and 2 skipped (counted), S = 1 is a finding
    assert found[0].layer is not None  # the gradients, not the loss


def test_weights_are_bit_identical_with_and_without_the_watch() -> None:
    bare, watched = _model(), _model()
    _train(bare, torch.amp.GradScaler("cpu", init_scale=2.0**20), 10, lambda loss: None)
    _watched(watched, torch.amp.GradScaler("cpu", init_scale=2.0**20), 10)
    for a, b in zip(bare.parameters(), watched.parameters()):
        assert torch.equal(a, b)


def test_lightning_16_mixed_gives_the_watch_its_scaler(tmp_path: object) -> None:
    """Lightning's MixedPrecision plugin with a GradScaler (what precision="16-mixed" builds on a
    GPU; on a CPU it is given explicitly): its overflow steps are skipped, not nonfinite."""
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.plugins.precision import MixedPrecision

    from gradcheck_cli.integrations.lightning import GradcheckCallback

    class Regressor(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x).float(), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    x = torch.randn(48, 6, generator=torch.Generator().manual_seed(1))
    callback = GradcheckCallback(every=4, output=None, quiet=True)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**20))
    trainer = pl.Trainer(max_steps=12, accelerator="cpu", plugins=[plugin], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(Regressor(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :1].sin()),
                                                         batch_size=4))
    report = callback.report
    assert report is not None
    assert 1 <= report.config["skipped_steps"] < 12
    assert not [f for f in report.findings if f.kind is FindingKind.NONFINITE]


def test_hf_trainer_callback_takes_the_accelerated_optimizers_scaler(tmp_path: object) -> None:
    """fp16=True: Accelerate keeps the GradScaler on the AcceleratedOptimizer the Trainer hands to
    on_train_begin, as `.scaler` next to the torch optimizer `.optimizer` (an fp16 Trainer needs a
    GPU, and building the real wrapper needs a global Accelerator: a stand-in with its two
    attributes, accelerate/optimizer.py)."""
    pytest.importorskip("transformers")
    from gradcheck_cli.integrations.huggingface import GradcheckTrainerCallback

    model = _model()
    scaler = torch.amp.GradScaler("cpu")
    wrapped = SimpleNamespace(optimizer=_optimizer_of(model), scaler=scaler)
    callback = GradcheckTrainerCallback(output=None, quiet=True)
    callback.on_train_begin(None, None, None, model=model, optimizer=wrapped)
    try:
        assert callback.watch is not None
        engine_scaler = callback.watch._engine.scaler
        assert engine_scaler is not None and engine_scaler.scaler is scaler
    finally:
        callback.close()
