"""Label: nonfinite. Heteroscedastic regression: the model predicts a mean and a variance and is
trained with the Gaussian negative log-likelihood written by hand; the variance head is a plain
Linear (no softplus / exp), so about half of the predicted "variances" are negative.

Mechanism (docs/findings/nonfinite.md, "numerically unsafe ops": log of non-positive values):
torch.log(var) is
NaN wherever var < 0, so the loss is NaN. A subtle case: the NaN sits only in the loss value;
d log(v)/dv = 1/v is finite for v < 0 and the mean's backward does not read the NaN, so the
parameter gradients stay finite (but huge where var ~ 0). Fix:
"guard-nonfinite" (var = softplus(raw) + eps, or predict log-variance).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [loss_fn]: nan, nan, nan
  weight-grad norm per layer, execution order: body.0 4.13e+04, body.2 1.80e+05, mean_head 164,
    var_head 2.06e+05
  whole-layer grad norm (weights + biases/others): body.0 4.55e+04, body.2 1.89e+05,
    mean_head 194, var_head 2.63e+05
  first/last (body.0 / var_head): grad 0.173, weight-grad 0.2
  grad/weight range: 314 .. 5.24e+05 (weight-only 266 .. 4.10e+05)
  non-finite: 0 input elements, 0 gradient elements (3 batches)
  default-init baseline (same model, reset_parameters()): loss nan, max layer grad 1.02e+04
  measured label: nonfinite (non-finite loss in 3/3 batches, 0 non-finite gradient elements)
"""

import torch
import torch.nn as nn


class MeanVarianceNet(nn.Module):
    def __init__(self, in_dim=8, hidden=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.body(x)
        return self.mean_head(h).squeeze(-1), self.var_head(h).squeeze(-1)


def build_model():
    torch.manual_seed(40)
    return MeanVarianceNet()


def make_batch(batch_size):
    x = torch.randn(batch_size, 8)
    y = x[:, 0] * 2.0 + 0.5 * torch.randn(batch_size)
    return x, y


def loss_fn(output, target):
    mean, var = output
    return (0.5 * (torch.log(var) + (target - mean) ** 2 / var)).mean()
