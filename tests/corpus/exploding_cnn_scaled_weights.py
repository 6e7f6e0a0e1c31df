"""Label: exploding. Plain 6-conv ReLU CNN (no normalisation) whose conv weights were multiplied
by 8 after PyTorch's default init (a "scale up to speed up training" hack).

Mechanism (docs/findings/init-scale.md, "weight init too large"): default conv init has gain ~0.41 per ReLU
layer; times 8 it is ~3.3, so activations and backpropagated signals grow geometrically
through the 6 convs; the loss and every gradient are orders of magnitude above the same
network with default init.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.07e+03, 854, 870
  weight-grad norm per layer, execution order: features.0 181, features.2 798,
    features.5 1.57e+03, features.7 2.37e+03, features.10 2.82e+03, features.12 3.49e+03,
    fc 1.30e+04
  first/last (features.0 / fc): grad 0.0154, weight-grad 0.0139
  grad/weight range: 10.8 .. 7e+03 (weight-only 9.74 .. 7e+03)
  default-init baseline (same model, reset_parameters()): loss 2.3, max layer grad 0.222
  measured label: exploding (vs default-init baseline: grad x5.83e+04, loss x404 (> 1e3))
"""

import torch
import torch.nn as nn


class PlainCNN(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        chans = [3, 16, 16, 32, 32, 64, 64]
        layers = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(inplace=True)]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        with torch.no_grad():
            for m in self.features:
                if isinstance(m, nn.Conv2d):
                    m.weight.mul_(8.0)

    def forward(self, x):
        x = self.features(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build_model():
    torch.manual_seed(31)
    return PlainCNN()


def make_batch(batch_size):
    return torch.randn(batch_size, 3, 16, 16), torch.randint(0, 10, (batch_size,))
