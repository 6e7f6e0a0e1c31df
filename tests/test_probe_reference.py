"""Each probe statistic checked against a plain-autograd reference on tiny seeded models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from typed_modules import grad_of, narrow

from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.probe import run_probe


def _mlp(inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 8),
                         nn.Tanh(), nn.Linear(8, 3))


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.randn(4, 6), torch.randint(0, 3, (4,))


def _make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 6), torch.randint(0, 3, (batch_size,))


def _reference(model: nn.Sequential, batches: int) -> dict[str, dict[str, float]]:
    """Plain autograd: grad norms per layer per batch, output rms and output-gradient rms."""
    names = {m: n for n, m in model.named_modules() if list(m.parameters(recurse=False))}
    grad_norms: dict[str, list[float]] = {n: [] for n in names.values()}
    out_sq = {n: 0.0 for n in names.values()}
    out_n = {n: 0 for n in names.values()}
    gout_sq = {n: 0.0 for n in names.values()}
    for b in range(batches):
        torch.manual_seed(b)
        x, y = _make_batch(4)
        outs = {}
        h = x
        for module in model:
            h = module(h)
            if module in names:
                h.retain_grad()
                outs[names[module]] = h
                out_sq[names[module]] += float(h.detach().pow(2).sum())
                out_n[names[module]] += h.numel()
        loss = nn.functional.cross_entropy(h, y)
        model.zero_grad()
        loss.backward()
        for module, name in names.items():
            grad_norms[name].append(math.sqrt(sum(float(p.grad.pow(2).sum())
                                                  for p in module.parameters(recurse=False))))
            gout_sq[name] += float(outs[name].grad.pow(2).sum())
    return {n: {"grad_norm": sum(v) / len(v), "output_rms": math.sqrt(out_sq[n] / out_n[n]),
                "output_grad_rms": math.sqrt(gout_sq[n] / out_n[n])}
            for n, v in grad_norms.items()}


def test_layer_statistics_match_plain_autograd() -> None:
    model = _mlp()
    result = run_probe(model, _make_batch, None, ScanConfig(batches=3, batch_size=4))
    # make_batch returns (x, y) with integer y: default loss is cross-entropy.
    assert result.loss_kind == "cross_entropy"
    reference = _reference(_mlp(), 3)
    for layer in result.layers:
        ref = reference[layer.name]
        assert sum(layer.grad_norms) / len(layer.grad_norms) == pytest.approx(ref["grad_norm"], rel=1e-4)
        assert layer.output_rms == pytest.approx(ref["output_rms"], rel=1e-4)
        assert layer.output_grad_rms == pytest.approx(ref["output_grad_rms"], rel=1e-4)
        weight_norm = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in
                                    dict(model.named_modules())[layer.name].parameters(recurse=False)))
        assert layer.weight_norm == pytest.approx(weight_norm, rel=1e-5)
    assert [layer.order for layer in result.layers] == [0, 1, 2]


def test_inplace_relu_gives_the_same_numbers() -> None:
    plain = run_probe(_mlp(), _make_batch, None, ScanConfig(batches=2, batch_size=4))
    inplace = run_probe(_mlp(inplace=True), _make_batch, None, ScanConfig(batches=2, batch_size=4))
    for a, b in zip(plain.layers, inplace.layers):
        assert a.grad_norms == pytest.approx(b.grad_norms, rel=1e-6)


def test_activation_statistics_dead_and_saturated() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.Sigmoid(), nn.Linear(6, 2))
    with torch.no_grad():
        narrow(model[0], nn.Linear).bias[:3] = -100.0  # three units can never fire
        narrow(model[2], nn.Linear).weight.mul_(100.0)  # drive the sigmoid into its flat region
    result = run_probe(model, lambda n: torch.randn(n, 4), None, ScanConfig(batches=2, batch_size=8))
    first, second, _ = result.layers
    fired = torch.zeros(6, dtype=torch.bool)
    saturated = []
    with torch.no_grad():
        for b in range(2):  # the probe seeds batch b with seed + b
            torch.manual_seed(b)
            relu = torch.relu(model[0](torch.randn(8, 4)))
            fired |= (relu > 0).any(dim=0)
            sig = torch.sigmoid(model[2](relu))
            saturated.append(float(((sig < 0.02) | (sig > 0.98)).float().mean()))
    assert first.activation["function"] == "ReLU"
    assert first.activation["dead_fraction"] == pytest.approx(1 - float(fired.float().mean()))
    assert first.activation["dead_fraction"] >= 0.5  # the three units with bias -100
    assert second.activation["function"] == "Sigmoid"
    assert second.activation["saturated_fraction"] == pytest.approx(sum(saturated) / 2)


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = self.block(torch.relu(self.block(h)))  # the same module twice
        return self.head(h)


def test_tied_weights_once_and_reused_module_one_row() -> None:
    torch.manual_seed(0)
    model = _Tied()
    result = run_probe(model, lambda n: (torch.randint(0, 10, (n, 5)), torch.randint(0, 10, (n, 5))),
                       None, ScanConfig(batches=1, batch_size=3))
    names = [layer.name for layer in result.layers]
    assert names == ["embed", "block"]  # head owns only the tied weight: counted with embed
    assert sum(layer.params for layer in result.layers) == 10 * 4 + 4 * 4 + 4
    torch.manual_seed(0)
    tokens, target = torch.randint(0, 10, (3, 5)), torch.randint(0, 10, (3, 5))
    loss = nn.functional.cross_entropy(model(tokens).reshape(-1, 10), target.reshape(-1))
    loss.backward()
    assert result.layers[0].grad_norms[0] == pytest.approx(float(grad_of(model.embed.weight).norm()), rel=1e-5)
    block_ref = math.sqrt(float(grad_of(model.block.weight).pow(2).sum() + grad_of(model.block.bias).pow(2).sum()))
    assert result.layers[1].grad_norms[0] == pytest.approx(block_ref, rel=1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
def test_recurrent_step_gradient_matches_input_gradient(batch_first: bool) -> None:
    torch.manual_seed(0)
    rnn = nn.RNN(3, 5, batch_first=batch_first)
    head = nn.Linear(5, 2)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.head = rnn, head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[:, -1] if batch_first else out[-1])

    shape = (4, 7, 3) if batch_first else (7, 4, 3)
    result = run_probe(Net(), lambda n: torch.randn(*shape), None, ScanConfig(batches=1, batch_size=4))
    steps = result.layers[0].step_grad_rms
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    out = Net()(x)
    out.pow(2).mean().backward()
    per_step = grad_of(x).pow(2).mean(dim=(0, 2) if batch_first else (1, 2)).sqrt()
    assert len(steps) == 7
    assert steps == pytest.approx(per_step.tolist(), rel=1e-5)
    assert steps[0] < steps[-1]  # the last step is closest to the loss


def test_nonfinite_gradients_are_counted_and_the_origin_named() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.log = Log()
            self.out = nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.log(self.fc(x)))

    class Log(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(x)

    torch.manual_seed(0)
    result = run_probe(Bad(), lambda n: torch.randn(n, 3), None, ScanConfig(batches=2, batch_size=4))
    origin = result.nonfinite_origin  # the first non-finite module: a forward origin's module
    assert origin is not None and origin.direction == "forward" and origin.module == "log"
    assert not math.isfinite(result.losses[0])
    fc = result.layers[0]
    assert fc.nonfinite_grads > 0
    assert fc.nonfinite_grads <= 2 * (9 + 3)
