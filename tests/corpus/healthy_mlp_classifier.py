"""Label: healthy. PyTorch-default-init ReLU MLP classifier (MNIST-sized input).

Mechanism: 4 Linear layers with nn.Linear's default (Kaiming-uniform, a=sqrt(5)) init and ReLU;
the per-layer Jacobian gain stays within a small factor of 1, so no geometric decay or growth
(docs/findings/vanishing.md, "depth without a short path" does not bite at depth 4).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.29, 2.28, 2.3
  weight-grad norm per layer, execution order: net.0 0.287, net.2 0.198, net.4 0.134,
    net.6 0.114
  whole-layer grad norm (weights + biases/others): net.0 0.287, net.2 0.203, net.4 0.167,
    net.6 0.265
  first/last (net.0 / net.6): grad 1.08, weight-grad 2.52
  grad/weight range: 0.0309 .. 0.141 (weight-only 0.0288 .. 0.0606)
  default-init baseline (same model, reset_parameters()): loss 2.31, max layer grad 0.279
  measured label: healthy (no rule fired)
"""

import torch
from torch import nn


class MLPClassifier(nn.Module):
    def __init__(self, in_features=784, hidden=(256, 128, 64), num_classes=10):
        super().__init__()
        layers = []
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


def build_model():
    torch.manual_seed(0)
    return MLPClassifier()


def make_batch(batch_size):
    x = torch.rand(batch_size, 1, 28, 28)  # pixel intensities in [0, 1]
    y = torch.randint(0, 10, (batch_size,))
    return x, y
