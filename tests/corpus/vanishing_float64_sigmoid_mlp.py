"""Label: vanishing. A float64 10-layer sigmoid MLP regressor, as in scientific surrogate models.

Mechanism (docs/findings/saturated-activation.md, "saturating activations (sigmoid, tanh)" + "depth
without a short path"):
sigmoid'(x) <= 0.25 everywhere, so each of the 9 hidden sigmoid layers divides the gradient
by >= 4 on its way to the input; with PyTorch's default init the first layer receives ~1e-6 of
the gradient of the last. float64 throughout (`model.double()`, float64 batches), the usual
choice for scientific regression: the statistics must be taken in float64.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [mse]: 0.586, 0.437, 0.583
  grad norm per layer, execution order: 0 3.13e-08, 2 7.44e-07, 4 4.60e-06, 6 2.71e-05, 8
    2.31e-04, 10 0.0018, 12 0.011, 14 0.0706, 16 0.454, 18 3.26
  first/last (0 / 18): grad 9.60e-09, weight-grad 3.41e-09
  grad/weight range: 7.43e-09 .. 3.83 (weight-only 2.54e-09 .. 3.68)
  signal through the dense layers: output-grad first/last 6.54e-09, activation last/first 1.49
  default-init baseline (same model, reset_parameters()): loss 0.248, max layer grad 1.77
  measured label: vanishing (first/last 3.41e-09 < 1e-3)
"""

import torch
from torch import nn


def build_model():
    torch.manual_seed(0)
    layers = []
    width_in = 6
    for _ in range(9):
        layers += [nn.Linear(width_in, 48), nn.Sigmoid()]
        width_in = 48
    layers.append(nn.Linear(48, 2))
    return nn.Sequential(*layers).double()


def make_batch(batch_size):
    x = torch.rand(batch_size, 6, dtype=torch.float64) * 2 - 1  # normalised physical inputs
    y = torch.stack([torch.sin(3 * x[:, 0]) * x[:, 1], x[:, 2] * x[:, 3] - x[:, 4] ** 2], dim=1)
    return x, y
