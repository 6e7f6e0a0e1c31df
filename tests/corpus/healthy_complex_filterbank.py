"""Label: healthy. Complex-valued learnable filterbank on a spectrum, magnitude readout.

Mechanism: an rfft of a real signal, a complex nn.Linear (complex64 weights: a learnable
filterbank mixing frequency bins), the magnitude |z| (log1p-compressed), then a real ReLU MLP
classifier. Default init in each layer; three layers, no geometric decay or growth. The dtype is
the point: a complex parameter's gradient norm is the norm of |dL/dz| over its elements.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.68, 1.62, 1.63
  grad norm per layer, execution order: filterbank 0.605, hidden 0.738, out 0.793
  first/last (filterbank / out): grad 0.763, weight-grad 0.787
  grad/weight range: 0.147 .. 0.604 (weight-only 0.147 .. 0.586)
  default-init baseline (same model, reset_parameters()): loss 1.65, max layer grad 0.862
  measured label: healthy (no rule fired)
"""

import torch
from torch import nn


class SpectralClassifier(nn.Module):
    def __init__(self, samples=64, filters=24, classes=5):
        super().__init__()
        bins = samples // 2 + 1
        self.filterbank = nn.Linear(bins, filters, dtype=torch.complex64)
        self.hidden = nn.Linear(filters, 32)
        self.out = nn.Linear(32, classes)

    def forward(self, signal):
        spectrum = torch.fft.rfft(signal, dim=-1)
        energy = torch.log1p(self.filterbank(spectrum).abs())
        return self.out(torch.relu(self.hidden(energy)))


def build_model():
    torch.manual_seed(0)
    return SpectralClassifier()


def make_batch(batch_size):
    labels = torch.randint(0, 5, (batch_size,))
    t = torch.arange(64) / 64
    freq = (labels + 2).float().unsqueeze(1) * 3
    signal = torch.sin(2 * torch.pi * freq * t) + 0.3 * torch.randn(batch_size, 64)
    return signal, labels
