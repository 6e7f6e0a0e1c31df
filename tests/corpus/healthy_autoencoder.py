"""Label: healthy. Fully connected autoencoder on flattened 28x28 images, MSE reconstruction.

Encoder 784-256-64-16 (ReLU), decoder 16-64-256-784 (ReLU, Sigmoid output); make_batch returns
(x, x) so the default loss (float target of the output's shape) is MSE.

Mechanism: depth 6 with default init and one sigmoid at the output only (no stack of saturating
units); none of the causes in docs/findings/ applies.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [mse]: 0.217, 0.217, 0.217
  weight-grad norm per layer, execution order: encoder.0 4.05e-04, encoder.2 3.80e-04,
    encoder.4 2.90e-04, decoder.0 3.58e-04, decoder.2 0.00257, decoder.4 0.00848
  whole-layer grad norm (weights + biases/others): encoder.0 4.18e-04, encoder.2 5.02e-04,
    encoder.4 8.14e-04, decoder.0 0.00139, decoder.2 0.00411, decoder.4 0.0111
  first/last (encoder.0 / decoder.4): grad 0.0375, weight-grad 0.0477
  grad/weight range: 4.52e-05 .. 6.89e-04 (weight-only 4.37e-05 .. 5.24e-04)
  default-init baseline (same model, reset_parameters()): loss 0.217, max layer grad 0.0108
  measured label: healthy (no rule fired)
"""

import torch
from torch import nn


class AutoEncoder(nn.Module):
    def __init__(self, dims=(784, 256, 64, 16)):
        super().__init__()
        enc, dec = [], []
        for a, b in zip(dims[:-1], dims[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        rdims = dims[::-1]
        for a, b in zip(rdims[:-1], rdims[1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        dec[-1] = nn.Sigmoid()
        self.encoder = nn.Sequential(*enc[:-1])  # linear bottleneck
        self.decoder = nn.Sequential(*dec)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def build_model():
    torch.manual_seed(13)
    return AutoEncoder()


def make_batch(batch_size):
    # sparse-ish "digit" images in [0, 1]
    x = (torch.rand(batch_size, 784) > 0.8).float() * torch.rand(batch_size, 784)
    return x, x
