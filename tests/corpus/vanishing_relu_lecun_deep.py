"""Label: vanishing. 32-layer bias-free ReLU MLP initialised with xavier_normal_ (variance
2 / (fan_in + fan_out) = 1 / fan_in for its square layers: LeCun, half the He variance).

Mechanism (docs/findings/init-scale.md, "ReLU init at half the He variance"; He et al. 2015): ReLU
zeroes half of
every pre-activation, so a layer at weight variance 1/fan_in halves the signal variance: the
activation scale falls ~2^-1/2 per layer towards the output and the gradient reaching each
layer's output falls ~2^-1/2 per layer towards the input. Over 31 steps both reach ~1e-5. The
weight gradient dW = delta h^T multiplies the two decays, so every layer's weight gradient is
about the same size (first/last ~0.4) and every grad/weight ~1e-6: neither first/last nor the
grad/weight floor sees it, only the pair of decays does (reference.py, signal_collapse).
He et al. 2015 (Fig. 3): a 30-layer ReLU net at this init does not learn.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.3, 2.3, 2.3 (logits ~1e-5: ln 10)
  first/last (hidden.0 / head): grad 1.41, weight-grad 1.41 (looks fine)
  grad/weight range: 2.97e-06 .. 1.30e-05 (uniform, above the 1e-6 floor)
  signal through 32 dense layers (hidden.0 .. head): output-grad first/last 2.42e-05,
    activation last/first 4.51e-05
  default-init baseline (same model, reset_parameters()): loss 2.3, max layer grad 1.65e-12
    (PyTorch's default init collapses this bias-free stack even faster, ~0.41x per layer, so it
    is no healthy equivalent: reference.healthy_baseline)
  measured label: vanishing (signal collapse: output-grad first/last 2.42e-05, activation
    last/first 4.51e-05, both < 1e-3)
"""

import torch
import torch.nn as nn


class DeepMLP(nn.Module):
    def __init__(self, in_features=32, width=64, depth=32, classes=10):
        super().__init__()
        dims = [in_features] + [width] * (depth - 1)
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(width, classes, bias=False)
        for layer in [*self.hidden, self.head]:
            nn.init.xavier_normal_(layer.weight)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


def build_model():
    torch.manual_seed(31)
    return DeepMLP()


def make_batch(batch_size):
    return torch.randn(batch_size, 32), torch.randint(0, 10, (batch_size,))
