"""Label: vanishing. 12-layer ReLU MLP whose parameters were multiplied by 0.1 after PyTorch's
default init (the "times 0.1" shrink someone adds to "stabilise" training).

Mechanism (docs/findings/init-scale.md, "weight init too small" + "depth without a short path"):
default Linear
init already has gain ~sqrt(1/6) ~ 0.41 per ReLU layer; times 0.1 makes it ~0.04, so the
backpropagated signal shrinks ~25x per layer and the first layers get essentially no gradient.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.3, 2.3, 2.3
  weight-grad norm per layer, execution order: 0 1.15e-15, 2 1.98e-15, 4 4.19e-15, 6 8.58e-14,
    8 2.04e-12, 10 4.91e-11, 12 1.24e-09, 14 3.20e-08, 16 7.41e-07, 18 1.83e-05, 20 4.10e-04,
    22 0.0105
  whole-layer grad norm (weights + biases/others): 0 1.15e-15, 2 3.73e-15, 4 8.22e-14,
    6 2.02e-12, 8 4.93e-11, 10 1.15e-09, 12 3.20e-08, 14 7.30e-07, 16 1.80e-05, 18 4.29e-04,
    20 0.0106, 22 0.261
  first/last (0 / 22): grad 4.42e-15, weight-grad 1.09e-13
  grad/weight range: 1.25e-15 .. 1.43 (weight-only 1.24e-15 .. 0.0578)
  default-init baseline (same model, reset_parameters()): loss 2.31, max layer grad 0.287
  measured label: vanishing (first/last 4.42e-15 < 1e-3)
"""

import torch
import torch.nn as nn


def build_model():
    torch.manual_seed(24)
    layers = [nn.Linear(100, 256), nn.ReLU()]
    for _ in range(10):
        layers += [nn.Linear(256, 256), nn.ReLU()]
    layers.append(nn.Linear(256, 10))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.1)
    return model


def make_batch(batch_size):
    return torch.randn(batch_size, 100), torch.randint(0, 10, (batch_size,))
