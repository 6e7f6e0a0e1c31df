"""Label: exploding. Vanilla tanh nn.RNN over 60 steps with a recurrent matrix of spectral
radius 2.5 (orthogonal init, gain 2.5), regression from the last hidden state.

Mechanism (docs/findings/exploding-through-time.md, "recurrent spectral radius", Pascanu et al.
2013): tanh bounds the hidden
state, so the forward pass and the loss look normal (same order as with default init), but with
spectral radius 2.5 the unsaturated units still give a per-step backward gain > 1: the gradient
w.r.t. early inputs and the recurrent weights explodes through time. A hard case: nothing in the
loss or the activations' scale gives it away. (Gain 1.5 measures only t_first/t_last ~36.)

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [loss_fn]: 299, 132, 229
  weight-grad norm per layer, execution order: rnn 1.44e+07, readout 33.3
  first/last (rnn / readout): grad 4.82e+05, weight-grad 4.31e+05
  grad/weight range: 52.5 .. 1.15e+06 (weight-only 51.5 .. 1.01e+06)
  input grad of the RNN over 60 steps: t_first 1.10e+06, t_last 0.477, t_first/t_last 2.30e+06
  nn.RNN weight_hh_l0 spectral radius: 2.5
  default-init baseline (same model, reset_parameters()): loss 220, max layer grad 13.8
  measured label: exploding (first/last 4.82e+05 > 1e2)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class TanhRNN(nn.Module):
    def __init__(self, input_size=4, hidden_size=32):
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size, nonlinearity="tanh", batch_first=True)
        self.readout = nn.Linear(hidden_size, 1)
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=2.5)  # type: ignore[arg-type]  # stub: Tensor | Module

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.readout(out[:, -1]).squeeze(-1)


def build_model():
    torch.manual_seed(37)
    return TanhRNN()


def make_batch(batch_size):
    x = torch.randn(batch_size, 60, 4)
    y = x.sum(dim=(1, 2))  # e.g. "sum the sequence"
    return x, y


def loss_fn(output, target):
    return F.mse_loss(output, target)
