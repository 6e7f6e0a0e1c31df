"""Label: exploding. A ReLU nn.RNNCell stepped over 40 steps in a Python loop, its recurrent
weight initialised orthogonal with gain 2 (spectral radius 2), loss on the final hidden state.

Mechanism (docs/findings/exploding-through-time.md, "recurrent spectral radius", Pascanu et al.
2013): gain=2.0 was meant as
"the ReLU gain" (nn.init.calculate_gain("relu") is sqrt(2)). Every eigenvalue of W_hh has modulus
2 > 1/gamma = 1 (ReLU), so the gradient sent back through the 40 calls of the same cell grows by
a roughly constant factor per step: exploding through time.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [mse]: 5.44e9, 5.73e9, 6.27e9
  weight-grad norm per layer, execution order: cell 9.73e11, head 1.02e11
  first/last (cell / head): grad 9.58, weight-grad 9.53
  grad/weight range: 8.55e10 .. 1.57e11
  input grad of the cell over its 40 calls: t_first 8.15e9, t_last 4.7e3, t_first/t_last 1.73e6
  nn.RNNCell weight_hh spectral radius: 2.0
  default-init baseline (same model, reset_parameters()): loss 0.0417, max layer grad 0.299
  measured label: exploding (input-grad t_first/t_last 1.73e6 > 1e2)
"""

import torch
import torch.nn as nn


class ReluCellRegressor(nn.Module):
    def __init__(self, features=6, hidden_size=32):
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = nn.RNNCell(features, hidden_size, nonlinearity="relu")
        self.head = nn.Linear(hidden_size, 1)
        nn.init.orthogonal_(self.cell.weight_hh, gain=2.0)
        nn.init.zeros_(self.cell.bias_hh)

    def forward(self, x):
        h = torch.zeros(x.size(0), self.hidden_size)
        for t in range(x.size(1)):
            h = self.cell(x[:, t], h)
        return self.head(h).squeeze(-1)


def build_model():
    torch.manual_seed(17)
    return ReluCellRegressor()


def make_batch(batch_size):
    x = torch.randn(batch_size, 40, 6)
    return x, x[:, :, 0].mean(dim=1)
