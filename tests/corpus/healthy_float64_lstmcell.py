"""Label: healthy. A float64 LSTMCell forecaster, as scientific time-series code writes it.

Mechanism: an nn.LSTMCell unrolled in a Python loop over 16 steps of a 3-channel series, in
float64 (`model.double()`, float64 batches), predicting the next value of channel 0 at every step
(teacher forcing), MSE. Default init. The loss reads every step, so each step's state gets a
direct gradient and nothing has to survive many gated steps (docs/fixes/gated-rnn.md: gated cells are the fix
for vanishing through time, not a cause). The dtype is the point: float64 statistics must be
measured as such, not cast to float32 (gradcheck once crashed on them).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [mse]: 0.509, 0.497, 0.504
  grad norm per layer, execution order: cell 0.18, readout 0.182
  first/last (cell / readout): grad 0.984, weight-grad 0.972
  grad/weight range: 0.0257 .. 0.346 (weight-only 0.025 .. 0.341)
  input grad over the steps: t_first/t_last 1.49
  default-init baseline (same model, reset_parameters()): loss 0.494, max layer grad 0.192
  measured label: healthy (no rule fired)
"""

import torch
from torch import nn


class CellForecaster(nn.Module):
    def __init__(self, channels=3, hidden=32):
        super().__init__()
        self.hidden = hidden
        self.cell = nn.LSTMCell(channels, hidden)
        self.readout = nn.Linear(hidden, 1)

    def forward(self, series):
        batch, steps, _ = series.shape
        h = series.new_zeros(batch, self.hidden)
        c = series.new_zeros(batch, self.hidden)
        predictions = []
        for t in range(steps):
            h, c = self.cell(series[:, t], (h, c))
            predictions.append(self.readout(h))
        return torch.cat(predictions, dim=1)  # (batch, steps): the next value after each step


def build_model():
    torch.manual_seed(0)
    return CellForecaster().double()


def make_batch(batch_size):
    t = torch.linspace(0, 4 * torch.pi, 17, dtype=torch.float64)
    phase = torch.rand(batch_size, 1, dtype=torch.float64) * 2 * torch.pi
    wave = torch.sin(t + phase)  # (batch, 17)
    noise = 0.1 * torch.randn(batch_size, 17, 3, dtype=torch.float64)
    series = torch.stack([wave, torch.cos(t + phase), wave ** 2], dim=-1) + noise
    return series[:, :-1], series[:, 1:, 0]
