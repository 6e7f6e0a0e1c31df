"""Label: healthy. The 32-layer ReLU MLP of exploding_relu_mlp_normal_init_deep, He-initialised.

Mechanism (He et al. 2015, docs/fixes/he-init.md): weights N(0, 2 / fan_in) keep the variance of a
ReLU stack's activations and gradients from layer to layer, so 32 plain layers neither grow nor
shrink the signal geometrically: the fix the exploding twin is told to apply, measured.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.57, 2.65, 2.57
  grad norm per layer, execution order (first 3 and last 3 of 32): hidden.0 0.717, hidden.1
    1.03, hidden.2 1.08, hidden.29 2.29, hidden.30 2.24, head 5.69
  first/last (hidden.0 / head): grad 0.126, weight-grad 0.125
  grad/weight range: 0.0448 .. 3.09 (weight-only 0.0444 .. 3.08)
  signal through the dense layers: output-grad first/last 0.0972, activation last/first 0.374
  default-init baseline (same model, reset_parameters()): loss 2.3, max layer grad 0.292
  measured label: healthy (no rule fired)
"""

import torch
import torch.nn as nn


class MLP(nn.Module):
    def __init__(self, in_dim=64, width=128, depth=32, num_classes=10):
        super().__init__()
        dims = [in_dim] + [width] * (depth - 1)
        self.hidden = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.head = nn.Linear(width, num_classes)
        for layer in self.hidden:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")  # type: ignore[arg-type]  # stub: Tensor | Module
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]  # stub: Tensor | Module

    def forward(self, x):
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


def build_model():
    torch.manual_seed(32)
    return MLP()


def make_batch(batch_size):
    return torch.randn(batch_size, 64), torch.randint(0, 10, (batch_size,))
