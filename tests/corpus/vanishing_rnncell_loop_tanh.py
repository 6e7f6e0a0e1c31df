"""Label: vanishing. A tanh nn.RNNCell stepped over a 100-step sequence in a Python loop, loss only
on the final hidden state (sequence classification, PyTorch's default init).

Mechanism (docs/findings/vanishing-through-time.md, "recurrent spectral radius", Pascanu et al.
2013): the cell is one module
called once per step, so the gradient reaching step t is a product of 100 - t factors
W_hh^T diag(tanh'(a)). At PyTorch's default init (U(-1/sqrt(H), 1/sqrt(H)), spectral radius
~0.6 for H = 32) each factor shrinks it by about half: the first steps receive nothing, while the
per-layer weight gradients look fine (the last steps dominate them).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.32, 1.33, 1.38
  weight-grad norm per layer, execution order: cell 0.358, classifier 0.319
  first/last (cell / classifier): grad 1.09, weight-grad 1.12
  grad/weight range: 0.0967 .. 0.316 (weight-only 0.0942 .. 0.299)
  input grad of the cell over its 100 calls: t_first 2.60e-25, t_last 0.0349,
    t_first/t_last 7.44e-24
  nn.RNNCell weight_hh spectral radius: 0.668
  default-init baseline (same model, reset_parameters()): loss 1.38, max layer grad 0.384
  measured label: vanishing (input-grad t_first/t_last 7.44e-24 < 1e-3)
"""

import torch
import torch.nn as nn


class SensorRNN(nn.Module):
    """Reads a multichannel sensor trace step by step and classifies it from the last state."""

    def __init__(self, channels=8, hidden_size=32, num_classes=4):
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = nn.RNNCell(channels, hidden_size, nonlinearity="tanh")
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        h = x.new_zeros(x.size(0), self.hidden_size)
        for t in range(x.size(1)):
            h = self.cell(x[:, t], h)
        return self.classifier(h)


def build_model():
    torch.manual_seed(5)
    return SensorRNN()


def make_batch(batch_size):
    return torch.randn(batch_size, 100, 8), torch.randint(0, 4, (batch_size,))
