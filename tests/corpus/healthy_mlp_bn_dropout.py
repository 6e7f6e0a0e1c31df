"""Label: healthy. Tabular classifier: Linear -> BatchNorm1d -> ReLU -> Dropout blocks.

Mechanism: BatchNorm re-standardises every hidden pre-activation, so the activation scale cannot
drift with depth (docs/fixes/add-normalization.md); Dropout(0.3) only rescales surviving units.
No cause from docs/findings/ applies.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.18, 1.17, 0.97
  weight-grad norm per layer, execution order: features.0.0 1.55, features.0.1 0.112,
    features.1.0 2.41, features.1.1 0.0995, features.2.0 2.01, features.2.1 0.0889,
    classifier 1.36
  whole-layer grad norm (weights + biases/others): features.0.0 1.55, features.0.1 0.155,
    features.1.0 2.41, features.1.1 0.133, features.2.0 2.01, features.2.1 0.131,
    classifier 1.39
  first/last (features.0.0 / classifier): grad 1.12, weight-grad 1.14
  grad/weight range: 0.0118 .. 1.34 (weight-only 0.0088 .. 1.32)
  default-init baseline (same model, reset_parameters()): loss 1.17, max layer grad 2.6
  measured label: healthy (no rule fired)
"""

import torch
import torch.nn as nn


def block(n_in, n_out, p_drop):
    return nn.Sequential(
        nn.Linear(n_in, n_out),
        nn.BatchNorm1d(n_out),
        nn.ReLU(),
        nn.Dropout(p_drop),
    )


class TabularNet(nn.Module):
    def __init__(self, n_features=40, n_classes=3, width=128, p_drop=0.3):
        super().__init__()
        self.features = nn.Sequential(
            block(n_features, width, p_drop),
            block(width, width, p_drop),
            block(width, width // 2, p_drop),
        )
        self.classifier = nn.Linear(width // 2, n_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def build_model():
    torch.manual_seed(1)
    return TabularNet()


def make_batch(batch_size):
    # standardised numeric features, integer class labels
    x = torch.randn(batch_size, 40)
    y = torch.randint(0, 3, (batch_size,))
    return x, y
