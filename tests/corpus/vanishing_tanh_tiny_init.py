"""Label: vanishing. 6-layer tanh MLP initialised with N(0, 0.001^2) weights ("times 0.001").

Mechanism (docs/findings/init-scale.md, "weight init too small"): with std 1e-3 and width 128 each
layer scales
activations and backpropagated signals by ~1e-3 * sqrt(128) ~ 0.011, so activations shrink layer
by layer and every weight gradient is a product of five such factors: gradients are uniformly
tiny (grad/weight << 1e-6 on every weight matrix); only the output bias sees an O(1) gradient.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.3, 2.3, 2.3
  weight-grad norm per layer, execution order: hidden.0 2.50e-10, hidden.1 2.50e-10,
    hidden.2 2.51e-10, hidden.3 2.61e-10, hidden.4 2.53e-10, out 2.51e-10
  whole-layer grad norm (weights + biases/others): hidden.0 2.52e-10, hidden.1 3.07e-09,
    hidden.2 2.90e-07, hidden.3 2.67e-05, hidden.4 0.00246, out 0.21
  first/last (hidden.0 / out): grad 1.20e-09, weight-grad 0.996
  grad/weight range: 3.90e-09 .. 5.73 (weight-only 1.95e-09 .. 6.83e-09)
  default-init baseline (same model, reset_parameters()): loss 2.3, max layer grad 0.289
  measured label: vanishing (first/last 1.2e-09 < 1e-3)
"""

import torch
from torch import nn


class TanhMLP(nn.Module):
    def __init__(self, in_dim=32, width=128, depth=6, out_dim=10):
        super().__init__()
        dims = [in_dim] + [width] * (depth - 1)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(width, out_dim)
        for layer in [*self.hidden, self.out]:
            layer.weight.data.normal_(0.0, 0.001)
            layer.bias.data.zero_()

    def forward(self, x):
        for layer in self.hidden:
            x = torch.tanh(layer(x))
        return self.out(x)


def build_model():
    torch.manual_seed(21)
    return TanhMLP()


def make_batch(batch_size):
    return torch.randn(batch_size, 32), torch.randint(0, 10, (batch_size,))
