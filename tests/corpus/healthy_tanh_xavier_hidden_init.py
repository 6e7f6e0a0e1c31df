"""Label: healthy. The 9-layer tanh MLP of vanishing_tanh_small_hidden_init.py with its hidden
layers initialised xavier_normal_(gain=calculate_gain("tanh")) instead of N(0, 0.02), the output
layer again at PyTorch's default init.

Mechanism (docs/fixes/xavier-init.md; Glorot & Bengio 2010): with the tanh gain 5/3 each hidden
layer keeps the backpropagated signal's scale (tanh' < 1 is compensated by the gain), so the
gradient reaching the first layers is of the same order as the output layer's. The healthy twin
of the small-init stack: same depth, width and data.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.36, 2.34, 2.33
  whole-layer grad norm, execution order: 0 0.92, 2 0.924, 4 0.836, 6 0.676, 8 0.606,
    10 0.529, 12 0.483, 14 0.475, 16 1.29
  first/last (0 / 16): grad 0.713, weight-grad 0.712
  grad/weight range: 0.035 .. 0.689
  signal through 9 dense layers: output-grad first/last 0.266, activation last/first 0.267
  default-init baseline: loss 2.31, max layer grad 0.265
  measured label: healthy (no rule fired)
"""

import torch
import torch.nn as nn


def build_model():
    torch.manual_seed(5)
    layers = []
    width_in = 32
    for _ in range(8):
        linear = nn.Linear(width_in, 64)
        nn.init.xavier_normal_(linear.weight, gain=nn.init.calculate_gain("tanh"))
        layers += [linear, nn.Tanh()]
        width_in = 64
    layers.append(nn.Linear(64, 10))
    return nn.Sequential(*layers)


def make_batch(batch_size):
    return torch.randn(batch_size, 32), torch.randint(0, 10, (batch_size,))
