"""Label: vanishing. 9-layer tanh MLP whose hidden layers are initialised N(0, 0.02) (the
"std=0.02 like BERT" init applied to a plain tanh stack) under an output layer left at PyTorch's
default init.

Mechanism (docs/findings/init-scale.md, "weight init too small" + "depth without a short path"):
tanh is ~linear
near 0, so each hidden layer scales the backpropagated signal by about 0.02 * sqrt(64) = 0.16:
the gradient decays ~0.15x per layer from the output towards the input. The forward activations
do not shrink with it (the default biases keep them at ~0.07), so the weight gradients of the
first layers are far smaller than the output layer's. None of the hidden layers is sanely
initialised, only the output layer is: the relative rule must still compare them with it.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.27, 2.29, 2.28
  whole-layer grad norm, execution order: 0 2.03e-06, 2 3.71e-06, 4 1.63e-05, 6 9.65e-05,
    8 5.09e-04, 10 0.00344, 12 0.0208, 14 0.134, 16 0.231 (~0.15-0.2x per layer)
  grad/weight per layer: 1.74e-06, 2.64e-06, 1.16e-05, 6.88e-05, 3.61e-04, 0.0024, 0.0148,
    0.0942, 0.124 (output layer)
  first/last (0 / 16): grad 8.78e-06, weight-grad 1.72e-05
  signal through 9 dense layers: output-grad first/last 5.75e-07, activation last/first 0.65
  default-init baseline: loss 2.31, max layer grad 0.265
  measured label: vanishing (first/last 8.78e-06 < 1e-3)
"""

import torch
import torch.nn as nn


def build_model():
    torch.manual_seed(5)
    layers = []
    width_in = 32
    for _ in range(8):
        linear = nn.Linear(width_in, 64)
        nn.init.normal_(linear.weight, mean=0.0, std=0.02)
        layers += [linear, nn.Tanh()]
        width_in = 64
    layers.append(nn.Linear(64, 10))
    return nn.Sequential(*layers)


def make_batch(batch_size):
    return torch.randn(batch_size, 32), torch.randint(0, 10, (batch_size,))
