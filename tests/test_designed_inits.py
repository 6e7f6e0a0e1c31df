"""Designs that look like vanishing/exploding at step 0 but are not: a zero-initialised head
(torchvision's ViT) and residual branches scaled by a near-zero layer scale (ConvNeXt, CaiT,
ReZero). Each has its broken twin that must still be caught."""

from __future__ import annotations

import torch
from torch import nn
from typed_modules import narrow

from gradcheck_cli import scan
from gradcheck_cli.report.records import Status
from gradcheck_cli.target.resolve import Target


class ScaledBlock(nn.Module):
    """x + gamma * MLP(LN(x)) with gamma a (C, 1)-shaped vector at `scale` (ConvNeXt's layer scale)."""

    def __init__(self, width: int, scale: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)
        self.gamma = nn.Parameter(torch.full((width, 1), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.fc2(torch.relu(self.fc1(self.norm(x))))
        return x + self.gamma.squeeze(1) * branch


def _layer_scale_net(scale: float) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), *[ScaledBlock(32, scale) for _ in range(4)], nn.Linear(32, 10))


def _batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 16), torch.randint(0, 10, (batch_size,))


def _scan(build: object) -> object:
    return scan(Target("designed", build, _batch, None))  # type: ignore[arg-type]


def test_layer_scale_of_1e_6_is_healthy() -> None:
    """The scale's own grad/weight is ~1e3+ by construction (weights 1e-6), and the branch layers
    get 1e-6 of the trunk's gradient: neither is an explosion nor a vanishing gradient."""
    report = _scan(lambda: _layer_scale_net(1e-6))
    gammas = [layer for layer in report.layers if layer.type == "ScaledBlock"]  # type: ignore[attr-defined]
    assert gammas and all(g.grad_to_weight > 1e3 for g in gammas)  # what used to fire
    assert report.verdict == Status.HEALTHY, report.findings  # type: ignore[attr-defined]


def test_a_real_explosion_behind_a_layer_scale_is_still_caught() -> None:
    """The exemption covers vector gates only: weight matrices scaled up 1e3 still explode."""
    def build() -> nn.Module:
        model = _layer_scale_net(1e-6)
        with torch.no_grad():
            head = narrow(model[-1], nn.Linear)
            head.weight.mul_(1e-5)   # the head is tiny: its grad/weight is huge
            head.bias.mul_(1e-5)
        return model
    report = _scan(build)
    statuses = {layer.name: layer.status for layer in report.layers}  # type: ignore[attr-defined]
    assert statuses["5"] == Status.EXPLODING


class ZeroHeadNet(nn.Module):
    """A small encoder whose classifier is zero-initialised, as torchvision's VisionTransformer."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 16))
        self.encoder = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU())
        self.head = nn.Linear(32, 10)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x + self.token))


def test_zero_initialised_head_is_healthy() -> None:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return ZeroHeadNet()
    report = _scan(lambda: build())
    by_name = {layer.name: layer for layer in report.layers}  # type: ignore[attr-defined]
    assert by_name["encoder.0"].grad_norm == 0.0  # exactly nothing passes the zero head at step 0
    assert report.verdict == Status.HEALTHY, report.findings  # type: ignore[attr-defined]


def test_zero_weights_without_a_zero_head_downstream_still_vanish() -> None:
    """An all-zero MLP: the zero layer is the first one, nothing runs before it, so its own and
    every later layer's zero gradient is judged (vanishing), as before."""
    def build() -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10))
        for layer in (narrow(model[0], nn.Linear), narrow(model[2], nn.Linear)):
            nn.init.zeros_(layer.weight)
        return model
    report = scan(Target("zeros", build, lambda bs: (torch.randn(bs, 8), torch.randint(0, 10, (bs,))), None))
    assert report.verdict == Status.VANISHING


def test_a_tiny_init_classifier_is_no_yardstick_for_the_relative_rule() -> None:
    """SqueezeNet/RegNet initialise the classifier N(0, 0.01): its grad/weight is inflated by its
    tiny weights, and the sanely initialised layers are compared with each other instead."""
    def build() -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                              nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        classifier = narrow(model[6], nn.Linear)
        nn.init.normal_(classifier.weight, std=1e-4)
        nn.init.zeros_(classifier.bias)
        return model
    report = _scan(build)
    ratios = {layer.name: layer.grad_to_weight for layer in report.layers}  # type: ignore[attr-defined]
    assert ratios["6"] > 1e3 * ratios["0"]  # the old reference would call layer 0 vanishing
    assert report.verdict == Status.HEALTHY, report.findings  # type: ignore[attr-defined]
