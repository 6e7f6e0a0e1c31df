"""Label: nonfinite. Capsule-style classifier: the class score is the length of each class's
pose vector, computed as sqrt(sum(v ** 2)) in a small `CapsuleLength` module; capsules of parts
that are absent from the sample are zeroed by a presence mask that comes with the batch.

Mechanism (docs/findings/nonfinite.md, "numerically unsafe ops": sqrt at 0, in the backward only): a masked
capsule has length sqrt(0) = 0, a finite forward value, but d sqrt(u)/du = 1/(2 sqrt(u)) is
inf at u = 0 and inf * 0 = NaN in the chain rule (through the mask's multiplication), so every
gradient behind `lengths` is NaN while the loss stays an ordinary number. Unlike
nonfinite_sqrt_zero_grad.py the op sits inside a module in the middle of the model, not in the
loss. Fix: "guard-nonfinite" (sqrt(u + eps), or torch.linalg.vector_norm, whose backward is 0 at 0).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.35, 2.24, 2.30
  weight-grad norm per layer, execution order: body.0 nan, poses nan
  first/last (body.0 / poses): grad nan, weight-grad nan
  grad/weight range: nan .. nan (weight-only nan .. nan)
  non-finite: 0 input elements, 40440 gradient elements (3 batches)
  default-init baseline (same model, reset_parameters()): loss 2.35, max layer grad nan
  measured label: nonfinite (non-finite loss in 0/3 batches, 40440 non-finite gradient elements)
"""

import torch
import torch.nn as nn


class CapsuleLength(nn.Module):
    def forward(self, poses):  # (batch, classes, pose_dim)
        return torch.sqrt((poses**2).sum(dim=-1))


class CapsuleClassifier(nn.Module):
    def __init__(self, in_dim=64, hidden=128, n_classes=10, pose_dim=4):
        super().__init__()
        self.n_classes, self.pose_dim = n_classes, pose_dim
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.poses = nn.Linear(hidden, n_classes * pose_dim)
        self.lengths = CapsuleLength()

    def forward(self, x, presence):  # presence: (batch, classes), 0 for an absent part
        poses = self.poses(self.body(x)).view(-1, self.n_classes, self.pose_dim)
        return self.lengths(poses * presence.unsqueeze(-1))


def build_model():
    torch.manual_seed(46)
    return CapsuleClassifier()


def make_batch(batch_size):
    x = torch.randn(batch_size, 64)
    presence = (torch.rand(batch_size, 10) > 0.25).float()
    labels = torch.randint(0, 10, (batch_size,))
    return (x, presence), labels
