"""Label: healthy. A character-level language model that steps an nn.GRUCell over 40 tokens in a
Python loop (teacher forcing), with a loss at every step.

Mechanism: the same cell is called once per step, as in a vanilla RNN loop, but the GRU's update
gate gives the state a path h_t = (1 - z) h_(t-1) + z h~ around W_hh (Cho et al. 2014), and each
step receives its own share of the loss, so every step is within reach of the gradient
(docs/fixes/gated-rnn.md).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [loss_fn]: 3.41, 3.41, 3.40
  weight-grad norm per layer, execution order: embed 0.00431, cell 0.0487, decoder 0.0554
  first/last (embed / decoder): grad 0.0633, weight-grad 0.0779
  grad/weight range: 2.06e-4 .. 0.0212 (weight-only 2.06e-4 .. 0.0173)
  input grad of the cell over its 40 calls: t_first 7.04e-4, t_last 5.43e-4, t_first/t_last 1.3
  default-init baseline (same model, reset_parameters()): loss 3.41, max layer grad 0.0697
  measured label: healthy (no rule fired)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class CharGRU(nn.Module):
    def __init__(self, vocab_size=30, embed_dim=16, hidden_size=48):
        super().__init__()
        self.hidden_size = hidden_size
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.cell = nn.GRUCell(embed_dim, hidden_size)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens):
        emb = self.embed(tokens)
        h = emb.new_zeros(tokens.size(0), self.hidden_size)
        states = []
        for t in range(tokens.size(1)):
            h = self.cell(emb[:, t], h)
            states.append(h)
        return self.decoder(torch.stack(states, dim=1))


def build_model():
    torch.manual_seed(8)
    return CharGRU()


def make_batch(batch_size):
    text = torch.randint(0, 30, (batch_size, 41))
    return text[:, :-1], text[:, 1:]


def loss_fn(logits, target):
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1))
