"""Label: healthy. The 32-layer bias-free ReLU MLP of vanishing_relu_lecun_deep.py, initialised
with kaiming_normal_(nonlinearity="relu") (He: variance 2 / fan_in).

Mechanism (docs/fixes/he-init.md; He et al. 2015): variance 2/fan_in exactly compensates the half
of every pre-activation that ReLU zeroes, so the activation scale and the gradient reaching each
layer's output stay level through all 32 layers (per-layer factors scatter around 1). The
healthy twin of the LeCun-initialised stack: same depth, same width, same data.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 3.87, 4.06, 3.24
  first/last (hidden.0 / head): grad 0.574, weight-grad 0.574
  grad/weight range: 0.331 .. 1.65
  signal through 32 dense layers (hidden.0 .. head): output-grad first/last 1.07,
    activation last/first 1.48
  default-init baseline: loss 2.3, max layer grad 1.65e-12 (collapsed, not a healthy
    equivalent: reference.healthy_baseline)
  measured label: healthy (no rule fired)
"""

import torch
import torch.nn as nn


class DeepMLP(nn.Module):
    def __init__(self, in_features=32, width=64, depth=32, classes=10):
        super().__init__()
        dims = [in_features] + [width] * (depth - 1)
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(width, classes, bias=False)
        for layer in self.hidden:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")  # type: ignore[arg-type]  # stub: Tensor | Module
        nn.init.xavier_normal_(self.head.weight)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


def build_model():
    torch.manual_seed(31)
    return DeepMLP()


def make_batch(batch_size):
    return torch.randn(batch_size, 32), torch.randint(0, 10, (batch_size,))
