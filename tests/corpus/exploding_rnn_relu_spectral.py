"""Label: exploding. Vanilla ReLU nn.RNN (IRNN-style, non-saturating) over 60 steps with a
recurrent matrix of spectral radius 1.5 (orthogonal init, gain 1.5), regression from the last
hidden state.

Mechanism (docs/findings/exploding-through-time.md, "recurrent spectral radius", Pascanu et al.
2013): the same W_hh is
applied once per step; with spectral radius 1.5 > 1 and a non-saturating activation, the
gradient w.r.t. the hidden state grows by up to 1.5x per step going back in time: exploding
through time (the first time step's input gradient dwarfs the last one's), and the hidden
state itself grows, so the loss is ~1e5 against ~2e2 at default init. (Gain 2 gives losses of
~1e19; gain 3 overflows to inf, which is the nonfinite regime.)

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [loss_fn]: 9.15e+04, 6.82e+04, 1.11e+05
  weight-grad norm per layer, execution order: rnn 9.71e+06, readout 1.64e+06
  first/last (rnn / readout): grad 6.03, weight-grad 5.92
  grad/weight range: 1.15e+06 .. 2.78e+06 (weight-only 1.13e+06 .. 2.78e+06)
  input grad of the RNN over 60 steps: t_first 7.17e+04, t_last 8.99, t_first/t_last 7.98e+03
  nn.RNN weight_hh_l0 spectral radius: 1.5
  default-init baseline (same model, reset_parameters()): loss 219, max layer grad 11.3
  measured label: exploding (input-grad t_first/t_last 7.98e+03 > 1e2)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class ReLURNN(nn.Module):
    def __init__(self, input_size=4, hidden_size=32):
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size, nonlinearity="relu", batch_first=True)
        self.readout = nn.Linear(hidden_size, 1)
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=1.5)  # type: ignore[arg-type]  # stub: Tensor | Module

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.readout(out[:, -1]).squeeze(-1)


def build_model():
    torch.manual_seed(32)
    return ReLURNN()


def make_batch(batch_size):
    x = torch.randn(batch_size, 60, 4)
    y = x.sum(dim=(1, 2))  # e.g. "sum the sequence"
    return x, y


def loss_fn(output, target):
    return F.mse_loss(output, target)
