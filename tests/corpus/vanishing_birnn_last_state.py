"""Label: vanishing. Bidirectional 2-layer vanilla tanh nn.RNN in the default (seq, batch)
layout over 80 steps, classifying from output[-1] (the last time step of both directions), with
small recurrent weights (orthogonal, gain 0.6).

Mechanism (docs/findings/vanishing-through-time.md, "recurrent spectral radius", Pascanu et al.
2013): every W_hh has all its
singular values at 0.6 < 1/gamma = 1 (tanh), so the gradient shrinks by at least 0.6 per step.
output[-1] is the forward direction's final state, which has to carry the gradient back to the
first step, and the reverse direction's first output, which has seen only the last step: nothing
reaches the start of the sequence. A common bug (the reverse half of output[-1] is not a summary
of the sequence); the per-layer gradients look normal.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.13, 1.07, 1.14
  whole-layer grad norm per layer, execution order: rnn 0.403, out 0.349
  first/last (rnn / out): grad 1.16, weight-grad 1.14
  grad/weight range: 0.0474 .. 0.359 (weight-only 0.0446 .. 0.342)
  input grad of the RNN over 80 steps: t_first 2.09e-22, t_last 0.0258, t_first/t_last 8.11e-21
  nn.RNN weight_hh_l0 spectral radius: 0.6
  default-init baseline (same model, reset_parameters()): loss 1.12, max layer grad 0.503
  measured label: vanishing (input-grad t_first/t_last 8.11e-21 < 1e-3); seeds 10, 11, 12: 1.13e-20
"""

import torch
import torch.nn as nn


class BiRNNClassifier(nn.Module):
    def __init__(self, input_size=6, hidden_size=24, num_classes=3):
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size, num_layers=2, bidirectional=True)
        self.out = nn.Linear(2 * hidden_size, num_classes)
        for name, w in self.rnn.named_parameters():
            if name.startswith("weight_hh"):
                nn.init.orthogonal_(w, gain=0.6)

    def forward(self, x):  # (time, batch, features)
        output, _ = self.rnn(x)
        return self.out(output[-1])


def build_model():
    torch.manual_seed(43)
    return BiRNNClassifier()


def make_batch(batch_size):
    return torch.randn(80, batch_size, 6), torch.randint(0, 3, (batch_size,))
