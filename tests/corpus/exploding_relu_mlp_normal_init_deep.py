"""Label: exploding. 32-layer ReLU MLP whose weights were initialised with nn.init.normal_(w)
(std 1), width 128: the 8-layer exploding_relu_mlp_normal_init, four times deeper.

Mechanism (docs/findings/init-scale.md, "weight init too large (e.g. N(0, 1))"): each ReLU layer
multiplies the
activation scale by ~sqrt(fan_in / 2) = 8, so after 32 layers the logits reach ~1e28 and every
weight gradient is ~1e28 (dW = delta h^T: the forward growth and the backward growth multiply).
Everything stays finite in float32 (max 3.4e38), but the squares do not: 1e28^2 = 1e56 overflows
float32, so a tool that sums squares in float32 reads Infinity and calls finite gradients NaN.
The label needs the real magnitude: exploding, not nonfinite.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.40e+29, 1.59e+29, 1.54e+29
  grad norm per layer, execution order (first 3 and last 3 of 32): hidden.0 2.97e+28, hidden.1
    3.22e+28, hidden.2 3.42e+28, hidden.29 8.39e+28, hidden.30 9.92e+28, head 1.03e+29
  first/last (hidden.0 / head): grad 0.289, weight-grad 0.286
  grad/weight range: 2.52e+26 .. 2.88e+27 (weight-only 2.52e+26 .. 2.88e+27)
  signal through the dense layers: output-grad first/last 2.90e+27, activation last/first 1.18e+28
  default-init baseline (same model, reset_parameters()): loss 2.29, max layer grad 0.292
  measured label: exploding (signal growth: output-grad first/last 2.9e+27, activation
    last/first 1.18e+28 (both > 1e3))
"""

import torch
import torch.nn as nn


class MLP(nn.Module):
    def __init__(self, in_dim=64, width=128, depth=32, num_classes=10):
        super().__init__()
        dims = [in_dim] + [width] * (depth - 1)
        self.hidden = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.head = nn.Linear(width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight)  # mean 0, std 1
                nn.init.zeros_(m.bias)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


def build_model():
    torch.manual_seed(32)
    return MLP()


def make_batch(batch_size):
    return torch.randn(batch_size, 64), torch.randint(0, 10, (batch_size,))
