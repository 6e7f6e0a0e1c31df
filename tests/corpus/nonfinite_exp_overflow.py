"""Label: nonfinite. Poisson regression on raw (unnormalised) count features: log_rate = MLP(x),
rate = exp(log_rate), loss = mean(rate - y * log_rate).

Mechanism (docs/findings/nonfinite.md, "numerically unsafe ops": exp overflow): the features are raw counts in
the hundreds, so the network's log-rate reaches > 88.7 for some samples and float32 exp
overflows to inf; rate - y * log(rate) is then inf - inf = NaN, and backward produces NaN
gradients. Fix:
"guard-nonfinite" (F.poisson_nll_loss(log_input=True) still needs bounded inputs: clamp the
log-rate) and "check-inputs" (normalise the features).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [loss_fn]: nan, nan, nan
  weight-grad norm per layer, execution order: fc1 inf, fc2 nan
  first/last (fc1 / fc2): grad nan, weight-grad nan
  grad/weight range: inf .. inf (weight-only inf .. inf)
  non-finite: 0 input elements, 671 gradient elements (3 batches)
  default-init baseline (same model, reset_parameters()): loss inf, max layer grad nan
  measured label: nonfinite (non-finite loss in 3/3 batches, 671 non-finite gradient elements)
"""

import torch
import torch.nn as nn


class PoissonRegressor(nn.Module):
    def __init__(self, n_features=10, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(n_features, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x):
        log_rate = self.fc2(torch.relu(self.fc1(x))).squeeze(-1)
        return torch.exp(log_rate)


def build_model():
    torch.manual_seed(43)
    return PoissonRegressor()


def make_batch(batch_size):
    counts = torch.poisson(torch.full((batch_size, 10), 1000.0))  # raw visit counts
    y = torch.poisson(torch.full((batch_size,), 4.0))
    return counts, y


def loss_fn(output, target):
    rate = output
    return (rate - target * torch.log(rate)).mean()
