"""Label: healthy. Small VGG-style CNN: 6 conv3x3-BN-ReLU layers, 3 max-pools, Linear classifier.

Mechanism: a plain (no skip) stack, but BatchNorm after every conv holds the activation scale
constant (docs/fixes/add-normalization.md), so depth 7 shows no geometric decay or growth.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.73, 2.5, 2.52
  weight-grad norm per layer, execution order: features.0 2.28, features.1 0.174,
    features.3 4.07, features.4 0.119, features.7 3.12, features.8 0.117, features.10 3.73,
    features.11 0.107, features.14 3.1, features.15 0.0857, features.17 3.66, features.18 0.22,
    classifier.1 3.09
  whole-layer grad norm (weights + biases/others): features.0 2.28, features.1 0.234,
    features.3 4.07, features.4 0.132, features.7 3.12, features.8 0.158, features.10 3.73,
    features.11 0.125, features.14 3.1, features.15 0.118, features.17 3.66, features.18 0.29,
    classifier.1 3.1
  first/last (features.0 / classifier.1): grad 0.735, weight-grad 0.738
  grad/weight range: 0.0147 .. 1.77 (weight-only 0.0107 .. 1.77)
  default-init baseline (same model, reset_parameters()): loss 2.55, max layer grad 4.55
  measured label: healthy (no rule fired)
"""

import torch
from torch import nn

CFG = [16, 16, "M", 32, 32, "M", 64, 64, "M"]


def make_layers(cfg, in_channels=3):
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [
                nn.Conv2d(in_channels, v, kernel_size=3, padding=1),
                nn.BatchNorm2d(v),
                nn.ReLU(inplace=True),
            ]
            in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = make_layers(CFG)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


def build_model():
    torch.manual_seed(4)
    return VGG()


def make_batch(batch_size):
    return torch.randn(batch_size, 3, 16, 16), torch.randint(0, 10, (batch_size,))
