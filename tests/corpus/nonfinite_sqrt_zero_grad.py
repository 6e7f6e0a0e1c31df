"""Label: nonfinite. Metric-learning embedding net trained with a contrastive loss on pairwise
Euclidean distances computed as sqrt(sum((a_i - a_j)^2)) over ALL pairs, including i == j.

Mechanism (docs/findings/nonfinite.md, "numerically unsafe ops": sqrt of a non-positive value): the
forward pass
is finite (sqrt(0) = 0, the loss is an ordinary number), but d sqrt(u)/du = 1/(2 sqrt(u)) is
inf at the zero self-distances on the diagonal, and inf * 0 = NaN in the chain rule, so every
gradient is NaN. Only the backward pass is non-finite. Fix: "guard-nonfinite"
(sqrt(u + eps), torch.cdist, or mask the diagonal before the sqrt).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [loss_fn]: 0.197, 0.224, 0.314
  weight-grad norm per layer, execution order: net.0 nan, net.2 nan
  first/last (net.0 / net.2): grad nan, weight-grad nan
  grad/weight range: nan .. nan (weight-only nan .. nan)
  non-finite: 0 input elements, 9456 gradient elements (3 batches)
  default-init baseline (same model, reset_parameters()): loss 0.295, max layer grad nan
  measured label: nonfinite (non-finite loss in 0/3 batches, 9456 non-finite gradient elements)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class EmbeddingNet(nn.Module):
    def __init__(self, in_dim=32, dim=16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 64), nn.ReLU(), nn.Linear(64, dim))

    def forward(self, x):
        return self.net(x)


def build_model():
    torch.manual_seed(44)
    return EmbeddingNet()


def make_batch(batch_size):
    x = torch.randn(batch_size, 32)
    y = torch.randint(0, 4, (batch_size,))  # class ids define positive pairs
    return x, y


def loss_fn(output, target, margin=1.0):
    diff = output.unsqueeze(1) - output.unsqueeze(0)
    dist = torch.sqrt((diff**2).sum(-1))  # zero on the diagonal
    same = (target.unsqueeze(1) == target.unsqueeze(0)).float()
    pos = same * dist.pow(2)
    neg = (1 - same) * F.relu(margin - dist).pow(2)
    return (pos + neg).mean()
