"""Label: vanishing. Plain 10-conv CNN with sigmoid activations, no normalisation, no skips
(a 1990s-style deep convnet), PyTorch default conv init.

Mechanism (docs/findings/saturated-activation.md, "saturating activations" + "depth without a short
path"): each conv-sigmoid
stage multiplies the backpropagated signal by sigmoid' <= 0.25 times a default-init conv whose
gain is < 1, so the gradient decays geometrically from the classifier to the first conv.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.33, 2.3, 2.2
  weight-grad norm per layer, execution order: features.0 8.71e-11, features.2 5.01e-09,
    features.4 4.37e-08, features.6 3.49e-07, features.9 2.17e-06, features.11 1.64e-05,
    features.13 1.68e-04, features.16 0.00145, features.18 0.0119, features.20 0.116,
    classifier 0.435
  whole-layer grad norm (weights + biases/others): features.0 1.47e-10, features.2 5.09e-09,
    features.4 4.44e-08, features.6 3.54e-07, features.9 2.21e-06, features.11 1.67e-05,
    features.13 1.71e-04, features.16 0.00149, features.18 0.0121, features.20 0.119,
    classifier 0.482
  first/last (features.0 / classifier): grad 3.05e-10, weight-grad 2.00e-10
  grad/weight range: 6.39e-11 .. 0.251 (weight-only 3.79e-11 .. 0.227)
  default-init baseline (same model, reset_parameters()): loss 2.32, max layer grad 0.491
  measured label: vanishing (first/last 2e-10 < 1e-3)
"""

import torch
import torch.nn as nn


class DeepSigmoidCNN(nn.Module):
    def __init__(self, depth=10, channels=16, num_classes=10):
        super().__init__()
        layers = [nn.Conv2d(3, channels, 3, padding=1), nn.Sigmoid()]
        for i in range(depth - 1):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.Sigmoid()]
            if i in (2, 5):
                layers.append(nn.AvgPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.mean(dim=(2, 3)))


def build_model():
    torch.manual_seed(23)
    return DeepSigmoidCNN()


def make_batch(batch_size):
    return torch.randn(batch_size, 3, 16, 16), torch.randint(0, 10, (batch_size,))
