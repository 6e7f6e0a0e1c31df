"""Label: exploding. Very deep plain MLP with BatchNorm: 32 x (Linear -> BatchNorm1d -> ReLU), no
residual connections, PyTorch default init.

Mechanism (docs/findings/exploding.md, "depth without a short path"; Yang et al. 2019, "A mean field theory of
batch normalization"): BatchNorm keeps the forward activation scale fixed, but its backward pass
(the batch-statistics Jacobian) amplifies the gradient by a roughly constant factor > 1 per
layer in a plain deep stack, so the gradient grows geometrically from the output back to the
input while the loss looks perfectly normal. At 16 blocks the same network measures
first/last ~20 (not flagged); at 32 blocks ~9e2. A hard case: normalisation alone does not make
a deep plain stack healthy; skips ("add-skip") do.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.34, 2.38, 2.57
  weight-grad norm per layer, execution order: 0 1.74e+03, 1 94.9, 3 1.92e+03, 4 76.7,
    6 1.51e+03, 7 56.2, 9 1.13e+03, 10 44.9, 12 901, 13 35.9, 15 716, 16 28.6, 18 594, 19 24.2,
    21 476, 22 18.4, 24 375, 25 14.5, 27 295, 28 12, 30 232, 31 9.69, 33 182, 34 7.47, 36 143,
    37 5.41, 39 116, 40 4.71, 42 94.4, 43 4.03, 45 75.4, 46 3.04, 48 60, 49 2.39, 51 49.2,
    52 2.01, 54 39.1, 55 1.6, 57 31.6, 58 1.32, 60 26.3, 61 1.08, 63 20.7, 64 0.823, 66 16,
    67 0.649, 69 13.1, 70 0.502, 72 10.5, 73 0.408, 75 8.16, 76 0.343, 78 6.76, 79 0.256,
    81 5.09, 82 0.209, 84 4.09, 85 0.155, 87 3.08, 88 0.115, 90 2.41, 91 0.101, 93 1.94,
    94 0.101, 96 2.02
  whole-layer grad norm (weights + biases/others): 0 1.74e+03, 1 128, 3 1.92e+03, 4 101,
    6 1.51e+03, 7 76.1, 9 1.13e+03, 10 59.2, 12 901, 13 46.9, 15 716, 16 38, 18 594, 19 31.7,
    21 476, 22 24.2, 24 375, 25 19, 27 295, 28 16, 30 232, 31 12.7, 33 182, 34 9.69, 36 143,
    37 7.1, 39 116, 40 6.28, 42 94.4, 43 5.34, 45 75.4, 46 3.97, 48 60, 49 3.19, 51 49.2,
    52 2.66, 54 39.1, 55 2.15, 57 31.6, 58 1.72, 60 26.3, 61 1.41, 63 20.7, 64 1.09, 66 16,
    67 0.868, 69 13.1, 70 0.672, 72 10.5, 73 0.544, 75 8.16, 76 0.458, 78 6.76, 79 0.342,
    81 5.09, 82 0.274, 84 4.09, 85 0.201, 87 3.08, 88 0.153, 90 2.41, 91 0.132, 93 1.94,
    94 0.144, 96 2.04
  first/last (0 / 96): grad 849, weight-grad 857
  grad/weight range: 0.0117 .. 294 (weight-only 0.00889 .. 294)
  default-init baseline (same model, reset_parameters()): loss 2.38, max layer grad 2.2e+03
  measured label: exploding (first/last 857 > 1e2)
"""

import torch
import torch.nn as nn


def build_model(depth=32, width=128, in_dim=64, num_classes=10):
    torch.manual_seed(34)
    layers = []
    d = in_dim
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def make_batch(batch_size):
    return torch.randn(batch_size, 64), torch.randint(0, 10, (batch_size,))
