"""The user's model comes back exactly as it was after a scan, also with --steps and on failure."""

from __future__ import annotations

import random

import pytest
import torch
from model_state import assert_unchanged, snapshot
from torch import nn

from gradcheck_cli.config import ScanConfig
from gradcheck_cli.errors import UserError
from gradcheck_cli.measure.probe import run_probe


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.frozen = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frozen(self.drop(torch.relu(self.bn(self.fc(x))))))


def _prepared_model() -> nn.Module:
    torch.manual_seed(0)
    model = Net()
    model.eval()
    model.bn.train()  # a mixed train/eval state must survive
    model(torch.randn(5, 4)).sum().backward()  # the user has .grad from their own step
    model.fc.register_forward_hook(lambda m, a, o: None)  # and a hook of their own
    return model


@pytest.mark.parametrize("steps,optimizer", [(0, "sgd"), (2, "sgd"), (2, "adam")])
def test_model_comes_back_exactly(steps: int, optimizer: str) -> None:
    model = _prepared_model()
    before = snapshot(model)
    torch.manual_seed(123)
    random.seed(7)
    rng_before = (torch.get_rng_state(), random.getstate())
    result = run_probe(model, lambda n: (torch.randn(n, 4), torch.randint(0, 2, (n,))), None,
                       ScanConfig(batches=3, batch_size=6, steps=steps, optimizer=optimizer, lr=0.5))
    assert len(result.losses) == 3
    assert_unchanged(before, model)
    assert torch.equal(torch.get_rng_state(), rng_before[0])
    assert random.getstate() == rng_before[1]


def test_steps_really_changed_the_weights_during_the_probe() -> None:
    model = _prepared_model()
    result = run_probe(model, lambda n: (torch.randn(n, 4), torch.randint(0, 2, (n,))), None,
                       ScanConfig(batches=2, batch_size=6, steps=3, lr=0.5))
    # the first step uses the probe's gradients; the loss is recorded after each step but the last
    assert len(result.step_losses) == 2
    assert len(result.loss_trace) == 2 + 2
    assert result.loss_trace[0] == result.losses[0] and result.loss_trace[-1] == result.losses[1]
    # with lr 0.5 on the same batch the loss must move: the steps did act on the weights
    assert result.step_losses[0] != result.losses[0]
    assert result.step_losses[0] != result.step_losses[1]


def test_model_comes_back_when_the_scan_fails_half_way() -> None:
    model = _prepared_model()
    before = snapshot(model)
    calls = {"n": 0}

    def make_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        calls["n"] += 1
        width = 4 if calls["n"] < 2 else 5  # the second batch does not fit
        return torch.randn(n, width), torch.randint(0, 2, (n,))

    with pytest.raises(UserError, match="fc"):
        run_probe(model, make_batch, None, ScanConfig(batches=3, batch_size=6, steps=1))
    assert_unchanged(before, model)


@pytest.mark.parametrize("fail_on_call,calls_seen", [(2, 2), (3, 3), (4, 5)],
                         ids=["during-the-steps", "same-batch-loss-after-steps", "batch-2-after-steps"])
def test_model_comes_back_when_adam_steps_fail_half_way(fail_on_call: int, calls_seen: int) -> None:
    # steps=2: call 1 is batch 1, call 2 the forward of the second step, call 3 the loss on batch 1
    # after the last step, call 4 batch 2 (a failing probe batch is replayed once, to look for a
    # NaN origin: call 5); by the time it fails Adam has changed the weights (and holds moment
    # buffers) at least once.
    model = _prepared_model()
    before = snapshot(model)
    calls = {"n": 0}
    forward = model.forward

    def failing_forward(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            raise ValueError("boom")
        return forward(x)

    model.forward = failing_forward  # type: ignore[method-assign]
    with pytest.raises(UserError, match="boom"):
        run_probe(model, lambda n: (torch.randn(n, 4), torch.randint(0, 2, (n,))), None,
                  ScanConfig(batches=3, batch_size=6, steps=2, optimizer="adam", lr=0.5))
    del model.forward
    assert calls["n"] == calls_seen
    assert_unchanged(before, model)


class _FailsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def, override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        raise RuntimeError("backward failed")


def test_model_comes_back_when_the_backward_pass_fails() -> None:
    model = _prepared_model()
    before = snapshot(model)
    calls = {"n": 0}
    forward = model.forward

    def forward_then_failing_backward(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = forward(x)
        # call 1: batch 1; call 2: its loss after the step (no backward); call 3: batch 2
        return _FailsInBackward.apply(out) if calls["n"] == 3 else out

    model.forward = forward_then_failing_backward  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="backward failed"):
        run_probe(model, lambda n: (torch.randn(n, 4), torch.randint(0, 2, (n,))), None,
                  ScanConfig(batches=3, batch_size=6, steps=1, optimizer="adam", lr=0.5))
    del model.forward
    assert calls["n"] == 3
    assert_unchanged(before, model)
