"""Label: nonfinite. A healthy tabular MLP fed a batch with missing values encoded as NaN
(a CSV loaded with pandas, never imputed).

Mechanism (docs/findings/nonfinite-input.md, docs/fixes/check-inputs.md): the model is fine (default
init, shallow); NaN in the input propagates through the first Linear to every output, the loss
is NaN and so is every weight gradient. The cause is the data, not the network.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: nan, nan, nan
  weight-grad norm per layer, execution order: net.0 nan, net.2 nan, net.4 nan
  first/last (net.0 / net.4): grad nan, weight-grad nan
  grad/weight range: nan .. nan (weight-only nan .. nan)
  non-finite: 21 input elements, 15366 gradient elements (3 batches)
  default-init baseline (same model, reset_parameters()): loss nan, max layer grad nan
  measured label: nonfinite (non-finite loss in 3/3 batches, 15366 non-finite gradient elements)
"""

import torch
import torch.nn as nn


class TabularMLP(nn.Module):
    def __init__(self, n_features=12, hidden=64, n_classes=2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x):
        return self.net(x)


def build_model():
    torch.manual_seed(42)
    return TabularMLP()


def make_batch(batch_size):
    x = torch.randn(batch_size, 12)
    missing = torch.rand(batch_size, 12) < 0.05
    missing[0, 3] = True  # at least one missing value per batch
    x[missing] = float("nan")
    y = torch.randint(0, 2, (batch_size,))
    return x, y
