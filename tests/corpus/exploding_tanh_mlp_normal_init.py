"""Label: exploding. 10-layer tanh MLP with N(0, 1) weights (nn.init.normal_ with the default
std), width 128.

Mechanism (docs/findings/init-scale.md, "weight init too large"; Poole et al. 2016 / Schoenholz et al. 2017,
the "chaotic" phase): pre-activations have std ~sqrt(128) ~ 11, so most tanh units are
saturated, yet the few unsaturated units times the huge weights give a per-layer backward
gain sigma_w^2 * E[tanh'(h)^2] ~ 6 > 1 (~2.5x in norm): the gradient GROWS from the output to
the input layer even though the activations are saturated. A hard case: saturation does not
imply vanishing; the measured per-layer gradient growth decides.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 15.9, 20.1, 19.2
  weight-grad norm per layer, execution order: net.0 3.07e+04, net.2 1.46e+04, net.4 5.52e+03,
    net.6 2.19e+03, net.8 953, net.10 378, net.12 163, net.14 63.7, net.16 26.5, net.18 9.13,
    net.20 3.63
  first/last (net.0 / net.20): grad 8.46e+03, weight-grad 8.45e+03
  grad/weight range: 0.0708 .. 337 (weight-only 0.0705 .. 335)
  default-init baseline (same model, reset_parameters()): loss 2.31, max layer grad 0.319
  measured label: exploding (first/last 8.46e+03 > 1e2)
"""

import torch
from torch import nn


class TanhNet(nn.Module):
    def __init__(self, in_dim=64, width=128, depth=10, num_classes=10):
        super().__init__()
        layers = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.Tanh()]
            d = width
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


def build_model():
    torch.manual_seed(35)
    return TanhNet()


def make_batch(batch_size):
    return torch.randn(batch_size, 64), torch.randint(0, 10, (batch_size,))
