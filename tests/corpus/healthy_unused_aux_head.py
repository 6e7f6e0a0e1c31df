"""Label: healthy. Classifier with an auxiliary head that forward() never calls.

The auxiliary head (`aux_classifier`, e.g. left over from deep supervision in an
Inception/GoogLeNet-style training script, switched off) is registered in __init__ but is not
used in forward(), so its parameters require grad and receive none.

Mechanism: an unused module gets no gradient at all: that is "unused", not vanishing; the path
that is used is a shallow default-init ReLU MLP (none of the causes in docs/findings/ applies).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.79, 1.82, 1.79
  weight-grad norm per layer, execution order: fc1 0.209, fc2 0.414, fc3 0.413,
    aux_classifier.0 (unused), aux_classifier.2 (unused)
  first/last (fc1 / fc3): grad 0.468, weight-grad 0.506
  grad/weight range: 0.0318 .. 0.319 (weight-only 0.0314 .. 0.291)
  default-init baseline (same model, reset_parameters()): loss 1.8, max layer grad 0.438
  measured label: healthy (no rule fired)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class NetWithAux(nn.Module):
    def __init__(self, in_dim=32, hidden=128, num_classes=6, aux_logits=False):
        super().__init__()
        self.aux_logits = aux_logits
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.aux_classifier = nn.Sequential(
            nn.Linear(hidden, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = F.relu(self.fc2(h))
        return self.fc3(h)  # the aux head is not called


def build_model():
    torch.manual_seed(10)
    return NetWithAux()


def make_batch(batch_size):
    return torch.randn(batch_size, 32), torch.randint(0, 6, (batch_size,))
