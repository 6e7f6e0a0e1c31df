"""Label: vanishing. Vanilla tanh nn.RNN over 150 steps, small recurrent weights, loss only on the
last step (sequence classification from the final hidden state).

Mechanism (docs/findings/vanishing-through-time.md, "recurrent spectral radius", Pascanu et al.
2013): weight_hh_l0 is
N(0, (0.6/sqrt(H))^2) (spectral radius ~0.7 < 1) and tanh' <= 1, so the gradient w.r.t. the
hidden state shrinks by a roughly constant factor < 1 per step: vanishing through time. The
per-layer weight gradients look fine (the last steps dominate them); the evidence is the input
gradient at the first vs the last time step.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.36, 1.41, 1.44
  weight-grad norm per layer, execution order: rnn 0.417, fc 0.421
  first/last (rnn / fc): grad 0.986, weight-grad 0.991
  grad/weight range: 0.115 .. 0.403 (weight-only 0.108 .. 0.373)
  input grad of the RNN over 150 steps: t_first 3.22e-31, t_last 0.0265, t_first/t_last 1.22e-29
  nn.RNN weight_hh_l0 spectral radius: 0.732
  default-init baseline (same model, reset_parameters()): loss 1.41, max layer grad 0.451
  measured label: vanishing (input-grad t_first/t_last 1.22e-29 < 1e-3)
"""

import torch
import torch.nn as nn


class RNNClassifier(nn.Module):
    def __init__(self, input_size=8, hidden_size=32, num_classes=4):
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size, nonlinearity="tanh", batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)
        with torch.no_grad():
            self.rnn.weight_hh_l0.normal_(0.0, 0.6 / hidden_size**0.5)  # type: ignore[operator]  # stub: Tensor | Module

    def forward(self, x):
        output, h_n = self.rnn(x)
        return self.fc(output[:, -1])


def build_model():
    torch.manual_seed(22)
    return RNNClassifier()


def make_batch(batch_size):
    return torch.randn(batch_size, 150, 8), torch.randint(0, 4, (batch_size,))
