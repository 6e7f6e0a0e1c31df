"""Label: exploding. Deep linear network (10 nn.Linear layers, no activation, no bias), each
weight orthogonal with gain 3, regression with MSE.

Mechanism (docs/findings/exploding.md, "depth without a short path", Saxe et al. 2014): in a deep
linear net the
input-output Jacobian is the product of the layer matrices; with every singular value equal to
3, it is 3^10 ~ 5.9e4 in every direction, so outputs, loss and all weight gradients are
astronomically larger than with a gain-1 (isometric) init (gradient ~3^19 times).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [mse]: 3.68e+09, 3.77e+09, 3.37e+09
  weight-grad norm per layer, execution order: layers.0 6.74e+08, layers.1 6.74e+08,
    layers.2 6.74e+08, layers.3 6.74e+08, layers.4 6.74e+08, layers.5 6.74e+08,
    layers.6 6.74e+08, layers.7 6.74e+08, layers.8 6.74e+08, layers.9 6.74e+08
  first/last (layers.0 / layers.9): grad 1, weight-grad 1
  grad/weight range: 2.81e+07 .. 2.81e+07 (weight-only 2.81e+07 .. 2.81e+07)
  default-init baseline (same model, reset_parameters()): loss 0.259, max layer grad 0.00252
  measured label: exploding (vs default-init baseline: grad x2.68e+11, loss x1.39e+10 (> 1e3))
"""

import torch
import torch.nn as nn


class DeepLinear(nn.Module):
    def __init__(self, dim=64, depth=10, gain=3.0):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(dim, dim, bias=False) for _ in range(depth)])
        for layer in self.layers:
            nn.init.orthogonal_(layer.weight, gain=gain)  # type: ignore[arg-type]  # stub: Tensor | Module

    def forward(self, x):
        return self.layers(x)


def build_model():
    torch.manual_seed(33)
    return DeepLinear()


def make_batch(batch_size):
    x = torch.randn(batch_size, 64)
    return x, 0.5 * x  # float target of the output's shape -> MSE
