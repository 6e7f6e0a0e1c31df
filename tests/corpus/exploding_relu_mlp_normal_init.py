"""Label: exploding. 8-layer ReLU MLP whose weights were initialised with nn.init.normal_(w)
(std 1, the classic "forgot to scale the init" mistake), width 128.

Mechanism (docs/findings/init-scale.md, "weight init too large (e.g. N(0, 1))"): each ReLU layer
multiplies the
activation scale by ~sqrt(fan_in / 2) = 8, so logits reach ~1e7, the loss is huge and every
weight gradient is ~1e7x that of the same network with PyTorch's default init. (With a
cross-entropy loss the output gradient is bounded, so the growth shows as uniformly huge
gradients and loss rather than as a first/last ratio.)

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 3.95e+07, 3.64e+07, 3.29e+07
  weight-grad norm per layer, execution order: hidden.0 5.71e+06, hidden.1 6.64e+06,
    hidden.2 8.26e+06, hidden.3 8.43e+06, hidden.4 8.95e+06, hidden.5 9.44e+06,
    hidden.6 1.17e+07, head 1.35e+07
  first/last (hidden.0 / head): grad 0.43, weight-grad 0.424
  grad/weight range: 5.19e+04 .. 3.72e+05 (weight-only 5.19e+04 .. 3.72e+05)
  default-init baseline (same model, reset_parameters()): loss 2.31, max layer grad 0.296
  measured label: exploding (vs default-init baseline: grad x4.55e+07, loss x1.57e+07 (> 1e3))
"""

import torch
import torch.nn as nn


class MLP(nn.Module):
    def __init__(self, in_dim=64, width=128, depth=8, num_classes=10):
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
    torch.manual_seed(30)
    return MLP()


def make_batch(batch_size):
    return torch.randn(batch_size, 64), torch.randint(0, 10, (batch_size,))
