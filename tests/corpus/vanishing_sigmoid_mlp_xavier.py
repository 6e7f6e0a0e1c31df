"""Label: vanishing. 10-layer sigmoid MLP with Xavier-uniform init (Glorot & Bengio 2010 setup).

Mechanism (docs/findings/saturated-activation.md, "saturating activations" + "depth without a short
path"): sigmoid'(x) <=
0.25, so each of the 9 hidden sigmoid layers divides the backpropagated signal by >= 4 while
Xavier keeps ||W|| ~ 1; the gradient decays geometrically from the output layer to the input
layer.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.48, 2.31, 2.35
  weight-grad norm per layer, execution order: layers.0 6.30e-06, layers.2 2.32e-05,
    layers.4 9.19e-05, layers.6 3.75e-04, layers.8 0.00155, layers.10 0.0064, layers.12 0.0259,
    layers.14 0.12, layers.16 0.512, layers.18 1.63
  first/last (layers.0 / layers.18): grad 3.84e-06, weight-grad 3.86e-06
  grad/weight range: 6.90e-07 .. 0.382 (weight-only 6.84e-07 .. 0.376)
  default-init baseline (same model, reset_parameters()): loss 2.42, max layer grad 1.78
  measured label: vanishing (first/last 3.84e-06 < 1e-3)
"""

import torch
import torch.nn as nn


class DeepSigmoidMLP(nn.Module):
    def __init__(self, in_dim=64, width=128, depth=10, num_classes=10):
        super().__init__()
        layers = []
        d = in_dim
        for _ in range(depth - 1):
            layers += [nn.Linear(d, width), nn.Sigmoid()]
            d = width
        layers.append(nn.Linear(d, num_classes))
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.layers(x)


def build_model():
    torch.manual_seed(20)
    return DeepSigmoidMLP()


def make_batch(batch_size):
    return torch.randn(batch_size, 64), torch.randint(0, 10, (batch_size,))
