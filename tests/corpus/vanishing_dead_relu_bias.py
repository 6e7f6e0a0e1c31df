"""Label: vanishing. 5-layer ReLU MLP whose third layer died: every unit's bias is far below zero.

Mechanism (docs/findings/dead-relu.md, "dead ReLUs (large negative bias, large LR step)"): the
model mimics the
state after one oversized update pushed the biases of `net.4` to about -8 while its pre-activations
w.x have a standard deviation near 1, so no unit of the ReLU after it fires on any sample. A dead
ReLU passes exactly zero gradient, so `net.0`, `net.2` and `net.4` receive none at all; `net.6`
sees a zero input (and has a zero bias), so the ReLU after it is silent too, and only the head's
bias gradient is non-zero.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.61, 1.61, 1.61
  grad norm per layer, execution order: net.0 0, net.2 0, net.4 0, net.6 0, net.8 0.206
    (net.8: bias only; its weight gradient is 0)
  first/last (net.0 / net.8): grad 0
  grad/weight range: 0 .. 0.0672
  default-init baseline (same model, reset_parameters()): loss 1.6, max layer grad 0.229
  measured label: vanishing (first/last 0 < 1e-3)
"""

import torch
import torch.nn as nn


class DiedMLP(nn.Module):
    def __init__(self, in_dim=32, width=64, num_classes=5):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, num_classes),
        )
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
            # what a too-large step on the biases leaves behind
            self.net[4].bias.normal_(-8.0, 0.5)  # type: ignore[operator]  # stub: Tensor | Module

    def forward(self, x):
        return self.net(x)


def build_model():
    torch.manual_seed(31)
    return DiedMLP()


def make_batch(batch_size):
    return torch.randn(batch_size, 32), torch.randint(0, 5, (batch_size,))
